//! File formats other tools read: numpy `.npy` / `.npz`, Python pickles, PyTorch `.pth` and
//! `.safetensors` weights.

pub mod npy;
pub mod pickle;
pub mod pth;
pub mod safetensors;
pub mod tensor;

#[cfg(test)]
pub(crate) mod pickle_fixtures;

//! File formats other tools read: numpy `.npy` / `.npz`.

pub mod npy;

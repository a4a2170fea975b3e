//! Getting images into tensors: decoding, the evaluators' geometry and normalisation.

pub mod gldv2;
pub mod image;

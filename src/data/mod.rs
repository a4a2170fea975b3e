//! Getting images into tensors: decoding, the evaluators' geometry and normalisation.

pub mod image;

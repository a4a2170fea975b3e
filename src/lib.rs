//! insclr-cu: InsCLR image-retrieval training with hand-written CUDA kernels.
//!
//! Layers, from the bottom: [`backend`] (every op, on CPU or CUDA) -> [`knn`] (streaming exact
//! top-k) -> `nn` (layers and backbones) -> `mining` / `loss` (the method) -> `train` / `eval` /
//! `plan` (a step's launches, modelled) -> `report` -> [`jobs`] (what the command line runs,
//! as functions: extract, pool, train, evaluate, search, pipeline, import weights).
//! A module depends only on those below.

pub mod backend;
pub mod data;
pub mod eval;
pub mod io;
pub mod jobs;
pub mod knn;
pub mod loss;
pub mod memory;
pub mod mining;
pub mod nn;
pub mod plan;
pub mod report;
pub mod rng;
pub mod train;

//! insclr-cu: InsCLR image-retrieval training with hand-written CUDA kernels.
//!
//! Layers, from the bottom: `rng` -> [`backend`] (every op, on CPU or CUDA) -> `io` (files) /
//! `data` (images) / [`knn`] (streaming exact top-k) / [`dist`] (ranks and collectives) -> `nn` (layers and backbones) -> `mining`
//! / `memory` / `loss` (the method) -> `train` / `eval` / `plan` (a step's launches, modelled)
//! -> `report` -> [`jobs`] (what the command line runs, as functions: extract, pool, train,
//! evaluate, search, pipeline, import weights); the binary's `cli` above them all.
//! A module depends only on its own layer and those below, and no files depend on each other
//! in a circle (`tests/module_graph.rs` checks both, and says what counts as depending).

pub mod backend;
pub mod data;
pub mod dist;
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

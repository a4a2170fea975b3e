//! One InsCLR training stage on any backend: the config ([`config`]), the augmentations
//! ([`augment`]), the optimiser and schedule ([`optim`]), resumable checkpoints
//! ([`checkpoint`]) and the loop itself ([`stage`]).

pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod optim;
pub mod stage;

pub use config::Config;
pub use stage::{run, RunOptions, Stage, StepLog, Summary};

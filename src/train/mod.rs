//! One InsCLR training stage on any backend: the config ([`config`]), the augmentations
//! ([`augment`]), the optimiser and schedule ([`optim`]), resumable checkpoints
//! ([`checkpoint`]), the run directory's ownership ([`run_dir`]) and the loop itself
//! ([`stage`]).

pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod loader;
pub mod memory;
pub mod optim;
pub mod run_dir;
pub mod stage;

pub use config::Config;
pub use stage::{run, Decision, RunOptions, Stage, StepLog, Summary};

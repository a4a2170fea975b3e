//! One InsCLR training stage on any backend: the config ([`config`]), the augmentations
//! ([`augment`]), the random streams ([`streams`]), the loader ([`loader`]), the optimiser and
//! schedule ([`optim`]), the stage's state ([`stage`]), the step in the paper's order
//! ([`step`]), the run loop around it ([`run`](mod@run)) and its logs ([`log`]), resumable checkpoints
//! ([`checkpoint`]) and the run directory's ownership ([`run_dir`]).

pub mod augment;
pub mod checkpoint;
pub mod config;
pub mod loader;
pub mod log;
pub mod memory;
pub mod optim;
pub mod run;
pub mod run_dir;
pub mod stage;
pub mod step;
pub mod streams;

pub use config::Config;
pub use run::{run, run_rank, RunOptions, Summary};
pub use stage::Stage;
pub use step::{Decision, StepLog};

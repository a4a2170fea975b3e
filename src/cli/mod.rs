//! One module per subcommand: its clap arguments and its `run`.

pub mod eval;
pub mod extract;
pub mod import_weights;
pub mod info;
pub mod pipeline;
pub mod plan;
pub mod pool;
pub mod report;
pub mod search;
pub mod train;

//! The jobs: what the command line runs, as functions a Rust program calls. Each takes a plain
//! options struct (its fields are the command's flags, its `Default`, or `EvalOptions::new`,
//! the command's defaults) and where the ops run, does its work with the same checks, progress
//! bars and atomic writes as the command, and returns what it made; `insclr-cu` only parses
//! flags into these structs and prints the reports. Errors name the command's flags, as the
//! options mirror them.
//!
//! | job | function | command |
//! | --- | --- | --- |
//! | describe images | [`extract()`] | `insclr-cu extract` |
//! | build a candidate pool | [`pool()`] | `insclr-cu pool` |
//! | train a stage | [`train()`] | `insclr-cu train` |
//! | evaluate retrieval | [`evaluate()`] | `insclr-cu eval` |
//! | search an index | [`search()`] | `insclr-cu search` |
//! | run a whole recipe | [`pipeline()`] | `insclr-cu pipeline` |
//! | re-rank a pool by spatial verification | [`verify_pool()`] | `insclr-cu verify` |
//! | verify two photos, draw their matches | [`match_images()`] | `insclr-cu match` |
//! | convert PyTorch weights | [`import_weights()`] | `insclr-cu import-weights` |
//!
//! The run report is [`crate::report::write`], the step's plan [`crate::plan`].

pub mod evaluate;
pub mod extract;
pub mod import_weights;
pub mod pipeline;
pub mod pool;
pub mod search;
pub mod train;
pub mod verify;

pub use evaluate::{evaluate, Benchmark, EvalOptions, EvalReport};
pub use extract::{
    extract, local_path, DescribeOptions, ExtractOptions, ExtractReport, LocalReport,
};
pub use import_weights::{import_weights, ImportReport};
pub use pipeline::{pipeline, PipelineOptions, PipelineReport};
pub use pool::{pool, PoolOptions, PoolReport};
pub use search::{search, SearchOptions, SearchReport};
pub use train::{train, TrainOptions};
pub use verify::{
    match_images, verify_pool, MatchOptions, MatchReport, VerifyPoolOptions, VerifyPoolReport,
};

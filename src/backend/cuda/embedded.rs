//! The kernels compiled by nvcc in build.rs: `(family, fatbin)` pairs, the SM list and ptxas's
//! report.

include!(concat!(env!("OUT_DIR"), "/kernels.rs"));
/// Where build.rs left the fatbins on the machine that built this binary, for
/// `scripts/sass-check.py --dir`.
pub const FATBIN_DIR: &str = env!("OUT_DIR");

//! What the GPU benchmarks share: how they run (criterion, or the device runner's fast and
//! launch-only modes) and which benchmarks a filter selects. Each bench uses a part of it.
#![allow(dead_code)]

use regex::Regex;
use std::sync::OnceLock;
use std::time::Instant;

/// How a benchmark runs: under criterion (`cargo bench`); `INSCLR_BENCH_FAST=1`: timed here,
/// median of five batches of at least 5 ms after one untimed call, no statistics (the device
/// runner's budget is minutes); `INSCLR_BENCH_LAUNCHES=N`: each selected benchmark's work is
/// only run N times, untimed, for Nsight Compute.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Criterion,
    Fast,
    Launches(usize),
}

pub fn mode() -> Mode {
    static MODE: OnceLock<Mode> = OnceLock::new();
    *MODE.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(n) = env("INSCLR_BENCH_LAUNCHES") {
            let n = n
                .parse()
                .unwrap_or_else(|_| panic!("INSCLR_BENCH_LAUNCHES={n}: a number of launches"));
            Mode::Launches(n)
        } else if env("INSCLR_BENCH_FAST").is_some_and(|v| v == "1") {
            Mode::Fast
        } else {
            Mode::Criterion
        }
    })
}

/// The benchmark filter: the last argument that is not an option (the device runner passes
/// `--bench [--quick] FILTER`), a regular expression over criterion's ids
/// (`group/function/parameter`). Criterion applies the same one to what it times; the benches
/// read it too, to skip making the inputs of what it would not run and to select in the
/// modes that bypass criterion.
pub fn filter() -> Option<&'static Regex> {
    static FILTER: OnceLock<Option<Regex>> = OnceLock::new();
    FILTER
        .get_or_init(|| {
            let arg = std::env::args().skip(1).rfind(|a| !a.starts_with('-'))?;
            Some(Regex::new(&arg).unwrap_or_else(|e| panic!("filter {arg:?}: {e}")))
        })
        .as_ref()
}

/// True when the filter selects the benchmark `id` (or there is none).
pub fn selected(id: &str) -> bool {
    filter().is_none_or(|r| r.is_match(id))
}

/// True when the comma-separated list in the environment variable `var` is unset, empty or
/// names `item`.
pub fn listed(var: &str, item: &str) -> bool {
    std::env::var(var).map_or(true, |v| {
        v.trim().is_empty() || v.split(',').any(|x| x.trim() == item)
    })
}

pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Per-call times of `f` in the fast mode: one untimed call, then the number of calls that
/// takes at least 5 ms (doubling from one, at most 2^16), then five such batches, each
/// between two `sync`s.
pub fn time_fast(sync: &dyn Fn(), f: &mut dyn FnMut()) -> Vec<f64> {
    let mut batch = |n: usize| {
        sync();
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        sync();
        t.elapsed().as_secs_f64()
    };
    batch(1);
    let mut n = 1;
    while batch(n) < 5e-3 && n < 1 << 16 {
        n *= 2;
    }
    (0..5).map(|_| batch(n) / n as f64).collect()
}

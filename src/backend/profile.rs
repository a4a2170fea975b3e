//! Profiling without a profiler. NVTX ranges around the phases of a training step, for Nsight
//! Systems (`scripts/profile.sh`): the NVTX library (`libnvToolsExt`) is looked for once, at run
//! time; without it, or with `INSCLR_NVTX=0`, a range is an empty guard and costs nothing. And a
//! per-kernel breakdown of a stretch of work from CUDA events around every launch, copy and
//! memset ([`KernelProfile`], `INSCLR_PROFILE=1` in the benchmarks): the GPU machine lent so far
//! had no Nsight Systems that could write a report, and events need nothing but the driver.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// An NVTX range, popped when dropped.
pub struct Range {
    _guard: Option<cudarc::nvtx::safe::Range>,
}

/// True when ranges are emitted: the library is present and `INSCLR_NVTX` is not `0`.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        // SAFETY: only tries to dlopen the library; no NVTX call is made.
        std::env::var("INSCLR_NVTX").map_or(true, |v| v != "0")
            && unsafe { cudarc::nvtx::sys::is_culib_present() }
    })
}

/// Opens a range named `name` (on the calling thread) until the guard is dropped.
pub fn range(name: &str) -> Range {
    Range {
        _guard: enabled().then(|| cudarc::nvtx::safe::scoped_range(name)),
    }
}

/// True when `INSCLR_PROFILE=1` asks for a per-kernel breakdown (the training-step benchmark
/// prints one per network).
pub fn kernel_profile_requested() -> bool {
    std::env::var("INSCLR_PROFILE").is_ok_and(|v| v == "1")
}

/// One recorded piece of work: a kernel launch (by kernel name, with its grid and block), a
/// copy or a memset (by a bracketed name), and its time on the GPU (none on the emulator,
/// whose times mean nothing).
#[derive(Clone, Debug)]
pub struct Span {
    pub name: String,
    pub shape: String,
    pub ms: Option<f64>,
}

/// The recorded work of a stretch of a program, in launch order.
#[derive(Clone, Debug, Default)]
pub struct KernelProfile {
    pub spans: Vec<Span>,
}

/// One kernel's totals over a [`KernelProfile`].
#[derive(Clone, Debug, PartialEq)]
pub struct KernelRow {
    pub name: String,
    pub launches: usize,
    /// Summed and longest time; `None` when untimed (emulator).
    pub ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl KernelProfile {
    /// True when the spans carry GPU times.
    pub fn timed(&self) -> bool {
        !self.spans.is_empty() && self.spans.iter().all(|s| s.ms.is_some())
    }

    /// Summed time of every span (ms), when timed.
    pub fn total_ms(&self) -> Option<f64> {
        self.timed()
            .then(|| self.spans.iter().filter_map(|s| s.ms).sum())
    }

    /// Totals per `key` of a span, most time first (most launches first when untimed; ties
    /// by name, so the order is stable).
    fn rows_by(&self, key: impl Fn(&Span) -> String) -> Vec<KernelRow> {
        let mut rows: Vec<KernelRow> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for s in &self.spans {
            let k = key(s);
            let i = *at.entry(k.clone()).or_insert_with(|| {
                rows.push(KernelRow {
                    name: k,
                    launches: 0,
                    ms: s.ms.map(|_| 0.0),
                    max_ms: s.ms.map(|_| 0.0),
                });
                rows.len() - 1
            });
            let r = &mut rows[i];
            r.launches += 1;
            r.ms = r.ms.zip(s.ms).map(|(a, b)| a + b);
            r.max_ms = r.max_ms.zip(s.ms).map(|(a, b)| a.max(b));
        }
        rows.sort_by(|a, b| {
            let t = b.ms.unwrap_or(0.0).total_cmp(&a.ms.unwrap_or(0.0));
            t.then(b.launches.cmp(&a.launches))
                .then(a.name.cmp(&b.name))
        });
        rows
    }

    /// Totals per kernel (or copy, or memset).
    pub fn by_kernel(&self) -> Vec<KernelRow> {
        self.rows_by(|s| s.name.clone())
    }

    /// Totals per kernel and launch shape (a layer's convolution is one shape).
    pub fn by_launch_shape(&self) -> Vec<KernelRow> {
        self.rows_by(|s| format!("{} {}", s.name, s.shape))
    }

    /// Markdown tables: per kernel, then the `top` heaviest launch shapes; `wall_ms` is the
    /// same work's time between two synchronisations, to show what the events do not cover
    /// (launch gaps, host work).
    pub fn table(&self, title: &str, wall_ms: Option<f64>, top: usize) -> String {
        let mut out = String::new();
        let Some(total) = self.total_ms() else {
            let _ = writeln!(
                out,
                "\n| {title}: kernel (emulated, launches only) | launches |\n|---|---|"
            );
            for r in self.by_kernel() {
                let _ = writeln!(out, "| {} | {} |", r.name, r.launches);
            }
            return out;
        };
        let _ = writeln!(
            out,
            "\n| {title}: kernel | launches | total (ms) | share | mean (us) | max (us) |\n|---|---|---|---|---|---|"
        );
        for r in self.by_kernel() {
            let ms = r.ms.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {:.1}% | {:.1} | {:.1} |",
                r.name,
                r.launches,
                ms,
                100.0 * ms / total.max(1e-12),
                1e3 * ms / r.launches as f64,
                1e3 * r.max_ms.unwrap_or(0.0)
            );
        }
        let _ = write!(
            out,
            "\n{} launches, copies and memsets: {total:.2} ms on the GPU",
            self.spans.len()
        );
        match wall_ms {
            Some(w) => {
                let _ = writeln!(
                    out,
                    "; the same work took {w:.2} ms between synchronisations ({:.1}% covered).",
                    100.0 * total / w.max(1e-12)
                );
            }
            None => out.push_str(".\n"),
        }
        let _ = writeln!(
            out,
            "\n| {title}: launch shape (top {top}) | launches | total (ms) | mean (us) |\n|---|---|---|---|"
        );
        for r in self.by_launch_shape().into_iter().take(top) {
            let ms = r.ms.unwrap_or(0.0);
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {:.1} |",
                r.name,
                r.launches,
                ms,
                1e3 * ms / r.launches as f64
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &str, shape: &str, ms: Option<f64>) -> Span {
        Span {
            name: name.into(),
            shape: shape.into(),
            ms,
        }
    }

    #[test]
    fn kernel_totals_sum_per_name_and_per_shape() {
        let p = KernelProfile {
            spans: vec![
                span("conv", "g1", Some(2.0)),
                span("add", "g2", Some(0.5)),
                span("conv", "g3", Some(1.0)),
                span("conv", "g1", Some(3.0)),
            ],
        };
        let rows = p.by_kernel();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            KernelRow {
                name: "conv".into(),
                launches: 3,
                ms: Some(6.0),
                max_ms: Some(3.0)
            }
        );
        assert_eq!((rows[1].name.as_str(), rows[1].launches), ("add", 1));
        let shapes = p.by_launch_shape();
        assert_eq!(shapes[0].name, "conv g1");
        assert_eq!((shapes[0].launches, shapes[0].ms), (2, Some(5.0)));
        assert_eq!(p.total_ms(), Some(6.5));
        let t = p.table("step", Some(10.0), 2);
        assert!(
            t.contains("| conv | 3 | 6.000 | 92.3% | 2000.0 | 3000.0 |"),
            "{t}"
        );
        assert!(t.contains("(65.0% covered)"), "{t}");
        // Only the two heaviest launch shapes are listed.
        assert!(
            t.contains("| conv g3 |") && !t.contains("| add g2 |"),
            "{t}"
        );
    }

    #[test]
    fn an_untimed_profile_counts_launches_only() {
        let p = KernelProfile {
            spans: vec![
                span("a", "", None),
                span("b", "", None),
                span("b", "", None),
            ],
        };
        assert!(!p.timed());
        assert_eq!(p.total_ms(), None);
        let t = p.table("emu", None, 5);
        assert!(t.contains("| b | 2 |\n| a | 1 |"), "{t}");
        assert!(!t.contains("ms"), "{t}");
    }

    #[test]
    fn ranges_nest_and_need_no_library() {
        // On a machine without libnvToolsExt (CI) this checks that nothing is loaded or
        // called; with it, that nested ranges push and pop without error.
        let outer = range("outer");
        {
            let _inner = range("inner");
        }
        assert_eq!(outer._guard.is_some(), enabled());
    }
}

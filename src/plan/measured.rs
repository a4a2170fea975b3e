//! The last times measured on a GPU, read from the results file the device runner wrote
//! (`bench_results/2026-11-30-h200.md`, compiled in): per training step (ours and PyTorch's) and
//! per kernel and shape of `benches/kernels.rs`. The file keeps every call; the first table of
//! each kind in it is the latest call's, and its first `- commit:` / `- GPU:` lines name it.

use crate::backend::DType;
use std::collections::HashMap;
use std::sync::OnceLock;

/// Where the numbers come from, as the plan prints it.
pub const FILE: &str = "bench_results/2026-11-30-h200.md";
const TEXT: &str = include_str!("../../bench_results/2026-11-30-h200.md");

/// The measured tables of [`FILE`].
#[derive(Debug, Default)]
pub struct Measured {
    /// "NVIDIA H200, commit 2bb35740" (from the file's first GPU and commit lines).
    pub source: String,
    /// Our step in ms by (model, precision, batch, px), as `benches/train_step.rs` timed it.
    ours: HashMap<(String, DType, usize, usize), f64>,
    /// PyTorch's step in ms by the same key (fp32 eager / AMP channels-last).
    torch: HashMap<(String, DType, usize, usize), f64>,
    /// Microseconds by (name, shape) from the kernel table; the shape without the net's name.
    kernels: HashMap<(String, String), f64>,
}

/// The file's tables, parsed once.
pub fn get() -> &'static Measured {
    static M: OnceLock<Measured> = OnceLock::new();
    M.get_or_init(|| parse(TEXT))
}

impl Measured {
    /// Our measured step, ms.
    pub fn step_ms(&self, model: &str, precision: DType, batch: usize, px: usize) -> Option<f64> {
        self.ours
            .get(&(model.to_string(), precision, batch, px))
            .copied()
    }

    /// PyTorch's measured step on the same GPU, ms.
    pub fn torch_step_ms(
        &self,
        model: &str,
        precision: DType,
        batch: usize,
        px: usize,
    ) -> Option<f64> {
        self.torch
            .get(&(model.to_string(), precision, batch, px))
            .copied()
    }

    /// A kernel's measured time at `shape` in microseconds. `benches/kernels.rs` names the
    /// depthwise kernels without their `conv2d_` prefix.
    pub fn kernel_us(&self, kernel: &str, shape: &str) -> Option<f64> {
        let find = |k: &str| {
            self.kernels
                .get(&(k.to_string(), shape.to_string()))
                .copied()
        };
        find(kernel).or_else(|| kernel.strip_prefix("conv2d_").and_then(find))
    }
}

fn cells(line: &str) -> Option<Vec<&str>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    Some(inner.split('|').map(str::trim).collect())
}

/// A step row's model and precision: "resnet101 BF16" (ours), "resnet101 AMP channels-last" or
/// "resnet101 fp32 eager" (PyTorch).
fn step_key(name: &str) -> Option<(String, DType)> {
    let (model, rest) = name.split_once(' ')?;
    let rest = rest.to_ascii_lowercase();
    let dtype = if rest.starts_with("bf16") || rest.starts_with("amp") {
        DType::BF16
    } else if rest.starts_with("f32") || rest.starts_with("fp32") {
        DType::F32
    } else {
        return None;
    };
    Some((model.to_string(), dtype))
}

pub(crate) fn parse(text: &str) -> Measured {
    let mut m = Measured::default();
    let (mut gpu, mut commit) = (None, None);
    // The current table's first two header cells say what its rows are.
    let mut table = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("- GPU: ") {
            gpu.get_or_insert_with(|| rest.split(',').next().unwrap_or(rest).to_string());
            continue;
        }
        if let Some(rest) = line.strip_prefix("- commit: ") {
            commit.get_or_insert_with(|| rest.chars().take(8).collect::<String>());
            continue;
        }
        let Some(c) = cells(line) else {
            table.clear();
            continue;
        };
        if table.is_empty() {
            table = c.iter().take(2).copied().collect::<Vec<_>>().join("|");
            continue;
        }
        if c[0].starts_with("---") {
            continue;
        }
        let number = |i: usize| c.get(i).and_then(|s| s.parse::<f64>().ok());
        match table.as_str() {
            "training step (ours)|batch" | "training step (PyTorch)|batch" => {
                let (Some((model, dtype)), Some(batch), Some(px), Some(ms)) =
                    (step_key(c[0]), number(1), number(2), number(3))
                else {
                    continue;
                };
                let map = if table.contains("(ours)") {
                    &mut m.ours
                } else {
                    &mut m.torch
                };
                map.entry((model, dtype, batch as usize, px as usize))
                    .or_insert(ms);
            }
            "kernel|shape" => {
                let (Some(shape), Some(us)) = (c.get(1), number(2)) else {
                    continue;
                };
                let shape = shape.split_once(' ').map_or(*shape, |(_, s)| s);
                m.kernels
                    .entry((c[0].to_string(), shape.to_string()))
                    .or_insert(us);
            }
            _ => {}
        }
    }
    m.source = format!(
        "{}, commit {}",
        gpu.unwrap_or_else(|| "unknown GPU".into()),
        commit.unwrap_or_else(|| "unknown".into())
    );
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_table_of_each_kind_wins_and_names_its_call() {
        let text = "\
- commit: 2bb35740fae5+dirty (built ...)
- GPU: NVIDIA H200, 580.159.04, 143771 MiB

| kernel | shape | time (us) | achieved |
|---|---|---|---|
| conv2d_fwd_bf16 | resnet50 64x64x56x56 -> 64 k1 s1 | 171.7 | 9.6 TFLOP/s |
| depthwise_fwd_f32 | lite0 dw 64x32x112x112 k3 s1 | 333.7 | 1.4 TFLOP/s |

| training step (ours) | batch | px | ms / step | images / s |
|---|---|---|---|---|
| resnet101 BF16 | 64 | 448 | 759.9 | 84.2 |

- commit: f1610ed4366e+dirty
| kernel | shape | time (us) | achieved |
|---|---|---|---|
| conv2d_fwd_bf16 | resnet50 64x64x56x56 -> 64 k1 s1 | 999.0 | |

| training step (ours) | batch | px | ms / step | images / s |
|---|---|---|---|---|
| resnet101 BF16 | 64 | 448 | 1088.6 | 58.8 |

| training step (PyTorch) | batch | px | ms / step | images / s |
|---|---|---|---|---|
| resnet101 AMP channels-last | 64 | 448 | 86.5 | 739.9 |
| resnet101 fp32 eager | 64 | 448 | 169.9 | 376.8 |
";
        let m = parse(text);
        assert_eq!(m.source, "NVIDIA H200, commit 2bb35740");
        assert_eq!(m.step_ms("resnet101", DType::BF16, 64, 448), Some(759.9));
        assert_eq!(m.step_ms("resnet101", DType::F32, 64, 448), None);
        assert_eq!(
            m.torch_step_ms("resnet101", DType::BF16, 64, 448),
            Some(86.5)
        );
        assert_eq!(
            m.torch_step_ms("resnet101", DType::F32, 64, 448),
            Some(169.9)
        );
        assert_eq!(
            m.kernel_us("conv2d_fwd_bf16", "64x64x56x56 -> 64 k1 s1"),
            Some(171.7)
        );
        assert_eq!(
            m.kernel_us("conv2d_depthwise_fwd_f32", "dw 64x32x112x112 k3 s1"),
            Some(333.7)
        );
    }

    #[test]
    fn the_compiled_in_file_has_the_stage_4_steps() {
        let m = get();
        assert!(m.source.contains("H200"), "{}", m.source);
        assert_eq!(m.step_ms("resnet101", DType::BF16, 64, 448), Some(759.9));
        assert_eq!(m.step_ms("resnet101", DType::F32, 64, 448), Some(969.3));
        assert_eq!(
            m.torch_step_ms("resnet101", DType::BF16, 64, 448),
            Some(86.5)
        );
    }
}

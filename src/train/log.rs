//! The run's logs: the JSON-lines step log (`OUTPUT_DIR/log.jsonl`, one [`super::StepLog`]
//! per step), the decision log ([`DECISIONS_FILE`], one [`super::Decision`] per traced tuple),
//! and the curves drawn from the step log (`OUTPUT_DIR/plot.svg`).

use anyhow::{Context, Result};
use std::path::Path;

/// The decision log's file name in OUTPUT_DIR (see [`super::Decision`]).
pub const DECISIONS_FILE: &str = "decisions.jsonl";

/// The lines of `dir/log.jsonl` (an unreadable line is an error naming it).
pub fn read_log(dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = dir.join("log.jsonl");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1))
        })
        .collect()
}

/// The curves of log lines, their steps shifted by `offset` (a pipeline's earlier stages):
/// loss, learning rate, pseudo-positives mined per step (when any were) and images/s.
pub fn log_panels(runs: &[(f64, Vec<serde_json::Value>)]) -> Vec<crate::io::plot::Panel> {
    let series = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| -> Vec<(f64, f64)> {
        runs.iter()
            .flat_map(|(offset, rows)| {
                rows.iter()
                    .filter_map(move |r| Some((offset + r["step"].as_f64()?, f(r)?)))
            })
            .collect()
    };
    let panel = |title: &str, points| crate::io::plot::Panel {
        title: title.into(),
        points,
        dots: false,
    };
    let mined = series(&|r| r["selected_pos"].as_f64());
    let mut panels = vec![
        panel("loss (batch + memory)", series(&|r| r["loss"].as_f64())),
        panel("learning rate", series(&|r| r["lr"].as_f64())),
    ];
    if mined.iter().any(|p| p.1 > 0.0) {
        panels.push(panel("pseudo-positives mined per step", mined));
    }
    panels.push(panel(
        "images/s",
        series(&|r| Some(r["images"].as_f64()? / r["seconds"].as_f64()?.max(1e-9))),
    ));
    panels
}

/// `dir/plot.svg` from `dir/log.jsonl`.
pub fn plot_run(dir: &Path) -> Result<()> {
    let rows = read_log(dir)?;
    if rows.is_empty() {
        return Ok(());
    }
    let title = format!("{}", dir.display());
    crate::io::plot::write(
        &dir.join("plot.svg"),
        &title,
        "step",
        &log_panels(&[(0.0, rows)]),
    )
}

/// Keeps the log lines of steps `<= step` (a resumed run rewrites what came after).
pub(super) fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .collect();
    let mut body = kept.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(path, body).with_context(|| format!("rewriting {}", path.display()))
}

//! `insclr-cu report`: one HTML page of what a training run decided (see [`insclr::report`]).

use anyhow::Result;
use insclr::report::{self, Options};
use std::path::PathBuf;

/// Arguments of `insclr-cu report`.
#[derive(clap::Args)]
pub struct Args {
    /// The run directory (train's OUTPUT_DIR); run report from the folder train ran in, since
    /// the run's paths are relative to it.
    run_dir: PathBuf,
    /// The page to write [default: RUN_DIR/report.html]; its numbers go beside it as .json.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A list ground truth (the JSON of eval --dataset list) to mark every decision right or
    /// wrong, with the precision and recall of mined positives per round.
    #[arg(long)]
    gnd: Option<PathBuf>,
    /// The folder the ground truth's names are relative to [default: the run's DATA.ROOT].
    #[arg(long, requires = "gnd")]
    gnd_root: Option<PathBuf>,
    /// eval --json of the model before training (its top 10 per query are shown).
    #[arg(long)]
    before: Option<PathBuf>,
    /// eval --json of the trained model, shown beside --before.
    #[arg(long)]
    after: Option<PathBuf>,
    /// An anchor to inspect: a training image's path relative to DATA.ROOT, or its index.
    /// Repeatable.
    #[arg(long)]
    anchor: Vec<String>,
    /// Traced anchors shown besides the --anchor ones.
    #[arg(long, default_value_t = 8)]
    anchors: usize,
    /// Candidate-pool columns shown per anchor.
    #[arg(long, default_value_t = 16)]
    columns: usize,
}

pub fn run(args: Args) -> Result<()> {
    let out = args.out.unwrap_or_else(|| args.run_dir.join("report.html"));
    let w = report::write(&Options {
        run_dir: args.run_dir,
        out,
        gnd: args.gnd,
        gnd_root: args.gnd_root,
        before: args.before,
        after: args.after,
        named: args.anchor,
        sample: args.anchors,
        columns: args.columns,
    })?;
    if let Some(q) = &w.quality {
        println!(
            "{} traced tuples, {} judged by the ground truth",
            q.decisions, q.judged_decisions
        );
        println!("round  added  judged  right  precision  recall");
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
        for r in &q.rounds {
            println!(
                "{:>5}  {:>5}  {:>6}  {:>5}  {:>9}  {:>6}",
                r.round,
                r.added,
                r.added_tally.judged,
                r.added_tally.right,
                pct(r.precision),
                pct(r.recall)
            );
        }
    }
    println!(
        "wrote {} ({} anchors inspected) and {}",
        w.html.display(),
        w.anchors.len(),
        w.json.display()
    );
    Ok(())
}

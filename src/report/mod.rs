//! `insclr-cu report`: what a training run decided, as one HTML page. It reads the run
//! directory (`run.json`, `log.jsonl`, `decisions.jsonl`), the candidate pool and images the run
//! read, and optionally a list ground truth and `eval --json` files of the model before and
//! after training; [`html`] draws the page.
//!
//! Judging decisions against a ground truth made for retrieval (queries and `ok` / `junk`
//! database images): two training images are the same instance when one query's group (the
//! query image and its `ok` images) holds both; an image in the `junk` of a query whose group
//! holds the anchor is neither right nor wrong. Only anchors in some group are judged.

pub mod html;

use crate::data::image_paths;
use crate::eval::list::ListGnd;
use crate::io::out_dir::Manifest;
use crate::io::paths::{check_outputs, Named};
use crate::mining::{Boundaries, CandidatePool};
use crate::train::log::DECISIONS_FILE;
use crate::train::run_dir::{RunRecord, RUN_FILE};
use crate::train::{Config, Decision};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A finished (or running) training stage, read back from its directory.
pub struct Run {
    pub dir: PathBuf,
    pub cfg: Config,
    /// The training images, in dataset order.
    pub paths: Vec<PathBuf>,
    pub pool: CandidatePool,
    /// The pool's offline zones at the run's `XBM.POSITIVE_THRESH` / `NEGATIVE_THRESH`.
    pub bounds: Boundaries,
    /// `log.jsonl`, one object per step.
    pub steps: Vec<serde_json::Value>,
    /// `decisions.jsonl`.
    pub decisions: Vec<Decision>,
}

/// Parses a JSON-lines file; a line that does not parse is an error naming it.
fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not a record of insclr-cu train",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

impl Run {
    /// Reads the run in `dir`. Paths in its config are taken from the current folder, as
    /// `train` took them.
    pub fn open(dir: &Path) -> Result<Run> {
        let cfg = RunRecord::read(dir)?.to_config()?;
        let root = PathBuf::from(&cfg.data.root);
        let list =
            (!cfg.data.train_filename.is_empty()).then(|| root.join(&cfg.data.train_filename));
        let paths = image_paths(&root, list.as_deref()).with_context(|| {
            format!(
                "the run's training images (DATA.ROOT {}); run report from the folder train ran in",
                root.display()
            )
        })?;
        let pool = CandidatePool::load(Path::new(&cfg.neighbor.src), paths.len())
            .context("the run's candidate pool (NEIGHBOR.SRC)")?;
        let bounds = Boundaries::new(&pool, cfg.xbm.positive_thresh, cfg.xbm.negative_thresh);
        let steps = read_jsonl(&dir.join("log.jsonl"))?;
        let decisions_path = dir.join(DECISIONS_FILE);
        let decisions = if decisions_path.exists() {
            read_jsonl(&decisions_path)?
        } else {
            Vec::new()
        };
        if let Some(d) = decisions
            .iter()
            .find(|d: &&Decision| d.anchor >= paths.len())
        {
            bail!(
                "{}: step {} traces anchor {} but the run has {} images",
                decisions_path.display(),
                d.step,
                d.anchor,
                paths.len()
            );
        }
        Ok(Run {
            dir: dir.to_path_buf(),
            cfg,
            paths,
            pool,
            bounds,
            steps,
            decisions,
        })
    }

    /// The image `name` names: a path as listed (relative to `DATA.ROOT`), or a dataset index.
    pub fn find_image(&self, name: &str) -> Result<usize> {
        let path = Path::new(&self.cfg.data.root).join(name);
        if let Some(i) = self.paths.iter().position(|p| *p == path) {
            return Ok(i);
        }
        match name.parse::<usize>() {
            Ok(i) if i < self.paths.len() => Ok(i),
            _ => bail!(
                "--anchor {name}: neither a training image under {} nor an index below {}",
                self.cfg.data.root,
                self.paths.len()
            ),
        }
    }

    /// Whether the run mines pseudo-positives (XBM v2).
    pub fn mining_on(&self) -> bool {
        self.cfg.xbm.enable && self.cfg.xbm.version == "v2"
    }

    /// The image's name as the page shows it (relative to `DATA.ROOT`).
    pub fn name(&self, i: usize) -> String {
        let p = &self.paths[i];
        p.strip_prefix(&self.cfg.data.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }
}

/// How a decision about image `j` for an anchor compares with the ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    Right,
    Wrong,
    Junk,
    /// The anchor is in no group of the ground truth.
    Unknown,
}

/// The ground truth in dataset indices: for each training image, its same-instance images and
/// its junk (both sorted), and whether it is judged at all.
pub struct Truth {
    same: Vec<Vec<usize>>,
    junk: Vec<Vec<usize>>,
    labelled: Vec<bool>,
}

impl Truth {
    /// `gnd`'s groups mapped onto `paths` (ground-truth names are relative to `root`); images
    /// of the ground truth that are not training images are left out.
    pub fn new(gnd: &ListGnd, root: &Path, paths: &[PathBuf]) -> Result<Truth> {
        let index: HashMap<&Path, usize> = paths
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_path(), i))
            .collect();
        let find = |name: &str| index.get(root.join(name).as_path()).copied();
        let n = paths.len();
        let (mut same, mut junk) = (vec![BTreeSet::new(); n], vec![BTreeSet::new(); n]);
        let mut labelled = vec![false; n];
        for (q, name) in gnd.gnd.iter().zip(&gnd.qimlist) {
            let group: Vec<usize> = find(name)
                .into_iter()
                .chain(q.ok.iter().filter_map(|&k| find(&gnd.imlist[k])))
                .collect();
            let junked: Vec<usize> = q
                .junk
                .iter()
                .filter_map(|&k| find(&gnd.imlist[k]))
                .collect();
            for &a in &group {
                labelled[a] = true;
                same[a].extend(group.iter().filter(|&&b| b != a));
                junk[a].extend(&junked);
            }
        }
        if !labelled.iter().any(|&l| l) {
            bail!(
                "the ground truth names no training image under {}; pass --gnd-root, the folder its names are relative to",
                root.display()
            );
        }
        let same: Vec<Vec<usize>> = same.into_iter().map(|s| s.into_iter().collect()).collect();
        let junk = junk
            .into_iter()
            .zip(&same)
            .map(|(j, s)| {
                j.into_iter()
                    .filter(|x| s.binary_search(x).is_err())
                    .collect()
            })
            .collect();
        Ok(Truth {
            same,
            junk,
            labelled,
        })
    }

    /// Whether `j` is a positive of `anchor`.
    pub fn mark(&self, anchor: usize, j: usize) -> Mark {
        if !self.labelled[anchor] {
            Mark::Unknown
        } else if self.same[anchor].binary_search(&j).is_ok() {
            Mark::Right
        } else if self.junk[anchor].binary_search(&j).is_ok() {
            Mark::Junk
        } else {
            Mark::Wrong
        }
    }

    /// Whether `anchor` is judged.
    pub fn is_labelled(&self, anchor: usize) -> bool {
        self.labelled[anchor]
    }

    /// The training images of `anchor`'s instance (itself excluded).
    pub fn positives(&self, anchor: usize) -> &[usize] {
        &self.same[anchor]
    }
}

/// Right and judged (right + wrong; junk is neither) among some decisions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    pub right: usize,
    pub judged: usize,
}

impl Tally {
    fn add(&mut self, m: Mark) {
        match m {
            Mark::Right => (self.right, self.judged) = (self.right + 1, self.judged + 1),
            Mark::Wrong => self.judged += 1,
            Mark::Junk | Mark::Unknown => {}
        }
    }

    /// right / judged, when something was judged.
    pub fn precision(&self) -> Option<f64> {
        (self.judged > 0).then(|| self.right as f64 / self.judged as f64)
    }
}

/// Mining quality after one round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Round {
    /// 0: before mining (kept neighbours and init positives); then each mining iteration.
    pub round: usize,
    /// Positives this round added (kept neighbours + init positives for round 0; then mined
    /// images that were not positives of the tuple already, nor its anchor).
    pub added: usize,
    /// Their precision.
    pub added_tally: Tally,
    pub precision: Option<f64>,
    /// Of every judged tuple's true positives, the share among its positives so far.
    pub recall: Option<f64>,
}

/// The decisions of a run judged against a ground truth (`report.json`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quality {
    /// Traced tuples, and those whose anchor the ground truth judges.
    pub decisions: usize,
    pub judged_decisions: usize,
    /// Mini-batch selection: neighbours kept, and neighbours dropped (right = a true positive).
    pub kept: Tally,
    pub dropped: Tally,
    /// Init positives credited to the tuples.
    pub init: Tally,
    pub rounds: Vec<Round>,
}

/// Judges every traced decision; `iters` is the mining mode's iteration count.
pub fn quality(decisions: &[Decision], truth: &Truth, iters: usize) -> Quality {
    let mut q = Quality {
        decisions: decisions.len(),
        judged_decisions: 0,
        kept: Tally::default(),
        dropped: Tally::default(),
        init: Tally::default(),
        rounds: Vec::new(),
    };
    let mut added = vec![Tally::default(); iters + 1];
    let mut count = vec![0usize; iters + 1];
    let (mut found, mut total) = (vec![0usize; iters + 1], 0usize);
    for d in decisions.iter().filter(|d| truth.is_labelled(d.anchor)) {
        q.judged_decisions += 1;
        let a = d.anchor;
        for (&j, &kept) in d.neighbors.iter().zip(&d.kept) {
            if kept { &mut q.kept } else { &mut q.dropped }.add(truth.mark(a, j));
        }
        for &j in &d.init {
            q.init.add(truth.mark(a, j));
        }
        // Positives after each round, as sets (an image may be both a neighbour and mined by
        // another tuple's member list).
        let mut have: BTreeSet<usize> = d
            .neighbors
            .iter()
            .zip(&d.kept)
            .filter(|(_, &k)| k)
            .map(|(&j, _)| j)
            .chain(d.init.iter().copied())
            .collect();
        for &j in &have {
            added[0].add(truth.mark(a, j));
        }
        count[0] += have.len();
        let t = truth.positives(a);
        total += t.len();
        for r in 0..=iters {
            if r > 0 {
                // Mining may re-select the anchor or a kept neighbour (spec 4.5.2: candidates
                // do not exclude the tuple's members): not a new positive.
                let new: Vec<usize> = d
                    .mined
                    .iter()
                    .filter(|m| m.1 == r && m.0 != a && !have.contains(&m.0))
                    .map(|m| m.0)
                    .collect();
                for j in new {
                    added[r].add(truth.mark(a, j));
                    count[r] += 1;
                    have.insert(j);
                }
            }
            found[r] += t.iter().filter(|j| have.contains(j)).count();
        }
    }
    q.rounds = (0..=iters)
        .map(|r| Round {
            round: r,
            added: count[r],
            added_tally: added[r],
            precision: added[r].precision(),
            recall: (total > 0).then(|| found[r] as f64 / total as f64),
        })
        .collect();
    q
}

/// One query's results in an `eval --json` file.
#[derive(Clone, Debug, Deserialize)]
pub struct EvalQuery {
    pub path: PathBuf,
    pub top: Vec<EvalHit>,
}

/// One result: the database image, its score, and `ok` / `junk` / `wrong`.
#[derive(Clone, Debug, Deserialize)]
pub struct EvalHit {
    pub path: PathBuf,
    pub score: f32,
    pub mark: String,
}

/// What the page shows of an `eval --json` file.
#[derive(Clone, Debug)]
pub struct Eval {
    pub file: PathBuf,
    pub descriptors: String,
    pub map: f64,
    pub queries: Vec<EvalQuery>,
}

impl Eval {
    /// Reads an `eval --json` file of a list or revisited dataset (its first protocol's mAP).
    pub fn read(path: &Path) -> Result<Eval> {
        #[derive(Deserialize)]
        struct File {
            descriptors: String,
            results: Vec<serde_json::Value>,
            #[serde(default)]
            queries: Option<Vec<EvalQuery>>,
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: File = serde_json::from_str(&text).with_context(|| {
            format!("{}: not the JSON of insclr-cu eval --json", path.display())
        })?;
        let queries = f.queries.with_context(|| {
            format!("{}: has no per-query results; write it again with this insclr-cu's eval --json (list or revisited datasets)", path.display())
        })?;
        let map = f
            .results
            .first()
            .and_then(|r| r.get("map"))
            .and_then(|m| m.as_f64())
            .with_context(|| format!("{}: no mAP in its results", path.display()))?;
        Ok(Eval {
            file: path.to_path_buf(),
            descriptors: f.descriptors,
            map,
            queries,
        })
    }
}

/// What `insclr-cu report` is asked for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub run_dir: PathBuf,
    /// The page; its numbers go beside it as `.json`.
    pub out: PathBuf,
    /// A list ground truth (`eval --dataset list` format) and the folder its names are
    /// relative to (default: the run's `DATA.ROOT`).
    pub gnd: Option<PathBuf>,
    pub gnd_root: Option<PathBuf>,
    /// `eval --json` files of the model before and after training.
    pub before: Option<PathBuf>,
    pub after: Option<PathBuf>,
    /// Anchors to inspect (paths relative to `DATA.ROOT`, or indices), shown first.
    pub named: Vec<String>,
    /// Traced anchors the inspector samples besides the named ones.
    pub sample: usize,
    /// Pool columns shown per anchor.
    pub columns: usize,
}

/// What was written.
#[derive(Clone, Debug, Serialize)]
pub struct Written {
    pub html: PathBuf,
    pub json: PathBuf,
    /// The anchors the inspector shows.
    pub anchors: Vec<usize>,
    pub quality: Option<Quality>,
}

/// The inspector's anchors: the named ones, then up to `sample` traced ones: judged anchors
/// first (when there is a ground truth), then those whose last traced step mined something,
/// then by index.
fn pick_anchors(run: &Run, truth: Option<&Truth>, named: &[usize], sample: usize) -> Vec<usize> {
    let mut last: std::collections::BTreeMap<usize, &Decision> = Default::default();
    for d in &run.decisions {
        last.insert(d.anchor, d);
    }
    let mut traced: Vec<(bool, bool, usize)> = last
        .iter()
        .filter(|(a, _)| !named.contains(a))
        .map(|(&a, d)| {
            (
                !truth.is_some_and(|t| t.is_labelled(a)),
                d.mined.is_empty(),
                a,
            )
        })
        .collect();
    traced.sort();
    named
        .iter()
        .copied()
        .chain(traced.into_iter().take(sample).map(|t| t.2))
        .collect()
}

/// Reads the run, judges it when a ground truth is given, and writes the page and its JSON.
pub fn write(o: &Options) -> Result<Written> {
    crate::io::check_writable(&o.out)?;
    let run = Run::open(&o.run_dir)?;
    let json = o.out.with_extension("json");
    let mut inputs: Vec<Named> = [RUN_FILE, "log.jsonl", DECISIONS_FILE]
        .iter()
        .map(|f| Named::new("the run's", o.run_dir.join(f)))
        .collect();
    inputs.push(Named::new("NEIGHBOR.SRC", &run.cfg.neighbor.src));
    for (flag, p) in [
        ("--gnd", &o.gnd),
        ("--before", &o.before),
        ("--after", &o.after),
    ] {
        inputs.extend(p.iter().map(|p| Named::new(flag, p)));
    }
    inputs.extend(
        run.paths
            .iter()
            .map(|p| Named::new("the training image", p)),
    );
    check_outputs(
        &inputs,
        &[
            Named::new("--out", &o.out),
            Named::new("the numbers beside it", &json),
        ],
    )?;
    let truth = match &o.gnd {
        Some(g) => {
            let root = o
                .gnd_root
                .clone()
                .unwrap_or_else(|| PathBuf::from(&run.cfg.data.root));
            Some(
                Truth::new(&ListGnd::read(g)?, &root, &run.paths)
                    .with_context(|| format!("--gnd {}", g.display()))?,
            )
        }
        None => None,
    };
    let iters = if run.mining_on() {
        crate::mining::Mode::parse(&run.cfg.xbm.candidate_mode)?.iters
    } else {
        0
    };
    let quality = truth.as_ref().map(|t| quality(&run.decisions, t, iters));
    let before = o.before.as_deref().map(Eval::read).transpose()?;
    let after = o.after.as_deref().map(Eval::read).transpose()?;
    if let (Some(b), Some(a)) = (&before, &after) {
        if b.queries.len() != a.queries.len() {
            bail!(
                "--before and --after evaluate different query sets ({} and {} queries); evaluate both models on the same ground truth",
                b.queries.len(),
                a.queries.len()
            );
        }
    }
    let named = o
        .named
        .iter()
        .map(|n| run.find_image(n))
        .collect::<Result<Vec<_>>>()?;
    let anchors = pick_anchors(&run, truth.as_ref(), &named, o.sample);
    let page = html::Page {
        run: &run,
        out: &o.out,
        truth: truth.as_ref(),
        quality: quality.as_ref(),
        before: before.as_ref(),
        after: after.as_ref(),
        anchors: &anchors,
        columns: o.columns,
    };
    let text = html::render(&page)?;
    // Written into a run's folder (the default), the page becomes one of the run's files:
    // `train --overwrite` may then delete it with the rest.
    if let Some(dir) = o.out.parent().filter(|d| Manifest::exists(d)) {
        let mut m = Manifest::open(dir)?;
        m.add(&o.out)?;
        m.add(&json)?;
    }
    crate::io::npy::write_atomic(&o.out, |w| {
        std::io::Write::write_all(w, text.as_bytes())?;
        Ok(())
    })?;
    let written = Written {
        html: o.out.clone(),
        json: json.clone(),
        anchors,
        quality,
    };
    crate::io::npy::write_atomic(&json, |w| {
        serde_json::to_writer_pretty(&mut *w, &written)?;
        Ok(())
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::list::ListQuery;

    fn gnd() -> ListGnd {
        ListGnd {
            about: None,
            imlist: vec![
                "b.jpg".into(),
                "c.jpg".into(),
                "d.jpg".into(),
                "x.jpg".into(),
            ],
            qimlist: vec!["a.jpg".into()],
            gnd: vec![ListQuery {
                ok: vec![0, 1],
                junk: vec![2],
                bbx: None,
            }],
        }
    }

    #[test]
    fn a_query_group_makes_its_members_mutual_positives_and_junk_counts_neither_way() {
        // Training images a, b, c, d, e (x.jpg of the ground truth is not one of them).
        let paths: Vec<PathBuf> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| Path::new("r").join(format!("{n}.jpg")))
            .collect();
        let t = Truth::new(&gnd(), Path::new("r"), &paths).unwrap();
        assert_eq!(t.positives(0), &[1, 2]);
        assert_eq!(t.positives(1), &[0, 2]);
        assert_eq!(t.mark(1, 2), Mark::Right);
        assert_eq!(t.mark(1, 3), Mark::Junk);
        assert_eq!(t.mark(1, 4), Mark::Wrong);
        assert_eq!(t.mark(3, 0), Mark::Unknown, "d is only junk: not judged");
        assert!(Truth::new(&gnd(), Path::new("elsewhere"), &paths).is_err());
    }

    #[test]
    fn a_re_mined_tuple_member_is_not_a_new_positive() {
        let paths: Vec<PathBuf> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| Path::new("r").join(format!("{n}.jpg")))
            .collect();
        let t = Truth::new(&gnd(), Path::new("r"), &paths).unwrap();
        let d = Decision {
            step: 1,
            anchor: 0,
            neighbors: vec![1, 4],
            kept: vec![true, false],
            init: vec![],
            mined: vec![(0, 1, 0.9), (1, 1, 0.8), (4, 1, 0.7), (2, 2, 0.6)],
            hard: vec![],
        };
        let q = quality(&[d], &t, 2);
        assert_eq!(
            (q.kept, q.dropped),
            (
                Tally {
                    right: 1,
                    judged: 1
                },
                Tally {
                    right: 0,
                    judged: 1
                }
            )
        );
        // Round 1 adds e only (a is the anchor, b already kept): wrong. Round 2 adds c: right.
        assert_eq!(
            q.rounds[1].added_tally,
            Tally {
                right: 0,
                judged: 1
            }
        );
        assert_eq!(
            q.rounds[2].added_tally,
            Tally {
                right: 1,
                judged: 1
            }
        );
        let recall: Vec<f64> = q.rounds.iter().map(|r| r.recall.unwrap()).collect();
        assert_eq!(recall, vec![0.5, 0.5, 1.0]);
    }
}

//! The report page: curves as inline SVG, the mining inspector, retrieval before and after.
//! Images are linked relative to the page (no network, no server); one small script only
//! checks that every image loaded and says so on the console when one did not.

use super::{Eval, EvalHit, Mark, Quality, Run, Truth};
use crate::io::html::{href, html_escape};
use crate::train::Decision;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

/// What one page shows.
pub struct Page<'a> {
    pub run: &'a Run,
    /// Where the page is written (images are linked relative to it).
    pub out: &'a Path,
    pub truth: Option<&'a Truth>,
    pub quality: Option<&'a Quality>,
    pub before: Option<&'a Eval>,
    pub after: Option<&'a Eval>,
    /// Anchors the inspector shows, in order.
    pub anchors: &'a [usize],
    /// Pool columns shown per anchor.
    pub columns: usize,
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px}
h2{border-top:2px solid #ccc;padding-top:.6em;margin-top:1.6em}
.meta{color:#555;font-size:14px}
.charts{display:flex;flex-wrap:wrap;gap:16px}
.charts svg{background:#fafafa;border:1px solid #ddd}
table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}
.anchor{border-top:1px solid #ccc;padding-top:.6em;margin-top:1em}
.row{display:flex;flex-wrap:wrap;gap:6px;margin:4px 0 10px}
figure{margin:0;width:104px;font-size:11px;line-height:1.25;overflow-wrap:anywhere}
figure img{width:96px;height:96px;object-fit:cover;display:block;border:4px solid #ddd}
figure.anchor-img img{border-color:#36c}
figure.zone-pos img{border-color:#7b5}figure.zone-cand img{border-color:#fc6}figure.zone-neg img{border-color:#c88}
.badge{display:inline-block;padding:0 3px;border-radius:3px;margin:1px 1px 0 0;background:#eee}
.b-kept{background:#cde}.b-drop{background:#fbb}.b-init{background:#bdf}.b-mined{background:#bfb}.b-hard{background:#fcc}
.right{color:#080;font-weight:bold}.wrong{color:#c00;font-weight:bold}.junk{color:#888}
.query{display:flex;gap:12px;border-top:1px solid #ddd;padding-top:6px;margin-top:6px}
.side{font-size:12px;color:#555;margin-top:4px}
";

/// Checks, after load, that every image is there; a missing one is a console error (the
/// browser test fails on console errors).
const SCRIPT: &str = "window.addEventListener('load',function(){var bad=[];\
for(var i=0;i<document.images.length;i++){var im=document.images[i];\
if(!im.complete||im.naturalWidth===0)bad.push(im.getAttribute('src'));}\
if(bad.length)console.error('report: '+bad.length+' image(s) did not load, first '+bad[0]);\
document.body.setAttribute('data-images-loaded',String(document.images.length-bad.length));});";

/// The whole page.
pub fn render(p: &Page) -> Result<String> {
    let run = p.run;
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>insclr-cu report: {}</title>\n<style>\n{STYLE}</style>\n<script>{SCRIPT}</script>\n</head>\n<body>\n",
        html_escape(&run.dir.display().to_string())
    );
    let c = &run.cfg;
    let _ = writeln!(
        s,
        "<h1>What self-supervision decided</h1>\n<p class=\"meta\">run {} &middot; {} images under {} &middot; model {} + {} &middot; {} steps logged of {} &middot; {} anchors per step, K = {} neighbours &middot; pool k = {} ({}) &middot; memory {} &middot; selection {} &middot; mining {} &middot; {} traced tuples</p>",
        html_escape(&run.dir.display().to_string()),
        run.paths.len(),
        html_escape(&c.data.root),
        html_escape(&c.model.backbone.name),
        if c.model.head.enable { html_escape(&format!("{} head ({}-d)", c.model.head.name, c.model.head.out_dim)) } else { "GeM, no head".into() },
        run.steps.len(),
        c.solver.max_step,
        c.solver.ims_per_batch,
        c.neighbor.k,
        run.pool.k,
        html_escape(&c.neighbor.src),
        if c.xbm.enable { html_escape(&format!("XBM {}", c.xbm.version)) } else { "off".into() },
        if c.selection.enable { format!("{} {}", html_escape(&c.selection.kind), c.selection.thresh) } else { "off".into() },
        if run.mining_on() { html_escape(&c.xbm.candidate_mode) } else { "off".into() },
        run.decisions.len()
    );
    curves(&mut s, p);
    if let Some(q) = p.quality {
        quality_table(&mut s, q, run);
    }
    inspector(&mut s, p)?;
    retrieval(&mut s, p)?;
    s.push_str("</body>\n</html>\n");
    Ok(s)
}

/// One line of a chart.
struct Series {
    name: &'static str,
    color: &'static str,
    points: Vec<(f64, f64)>,
    /// Draw the points as dots (few points) rather than a line.
    dots: bool,
}

fn step_series(
    run: &Run,
    name: &'static str,
    color: &'static str,
    f: impl Fn(&serde_json::Value) -> Option<f64>,
) -> Series {
    let points = run
        .steps
        .iter()
        .filter_map(|v| Some((v.get("step")?.as_f64()?, f(v)?)))
        .collect();
    Series {
        name,
        color,
        points,
        dots: false,
    }
}

fn field(v: &serde_json::Value, key: &str) -> Option<f64> {
    v.get(key)?.as_f64()
}

fn curves(s: &mut String, p: &Page) {
    let run = p.run;
    let per_anchor = run.cfg.solver.ims_per_batch.max(1) as f64;
    s.push_str("<h2>Training curves</h2>\n<div class=\"charts\">\n");
    let charts: Vec<(&str, Vec<Series>)> = vec![
        (
            "loss",
            vec![
                step_series(run, "total", "#222", |v| field(v, "loss")),
                step_series(run, "batch", "#36c", |v| field(v, "batch_loss")),
                step_series(run, "memory", "#c63", |v| field(v, "memory_loss")),
            ],
        ),
        (
            "learning rate",
            vec![step_series(run, "lr", "#639", |v| field(v, "lr"))],
        ),
        (
            "positives per anchor",
            vec![
                step_series(run, "mined", "#2a2", |v| {
                    Some(field(v, "selected_pos")? / per_anchor)
                }),
                step_series(run, "init", "#39c", |v| {
                    Some(field(v, "init_pos")? / per_anchor)
                }),
                step_series(run, "dropped by selection", "#c33", |v| {
                    Some(field(v, "rejected")? / per_anchor)
                }),
            ],
        ),
        (
            "active pairs per row",
            vec![
                step_series(run, "batch pos", "#36c", |v| field(v, "batch_pos")),
                step_series(run, "batch neg", "#9bd", |v| field(v, "batch_neg")),
                step_series(run, "memory pos", "#c63", |v| field(v, "memory_pos")),
                step_series(run, "memory neg", "#eb9", |v| field(v, "memory_neg")),
            ],
        ),
    ];
    for (title, series) in &charts {
        s.push_str(&chart(title, series));
    }
    let last = run
        .steps
        .last()
        .and_then(|v| field(v, "step"))
        .unwrap_or(0.0);
    let maps: Vec<(f64, f64)> = [(0.0, p.before), (last, p.after)]
        .iter()
        .filter_map(|(x, e)| e.map(|e| (*x, 100.0 * e.map)))
        .collect();
    if maps.is_empty() {
        s.push_str("<p class=\"meta\">mAP: no evaluation given (report --before / --after with files of eval --json).</p>\n");
    } else {
        let series = vec![Series {
            name: "mAP (eval --json)",
            color: "#222",
            points: maps,
            dots: true,
        }];
        s.push_str(&chart("mAP per evaluation", &series));
    }
    s.push_str("</div>\n");
}

/// A number for an axis: short, whatever its scale.
fn tick(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(0.01..10_000.0).contains(&a) {
        format!("{v:.1e}")
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else {
        let t = format!("{v:.3}");
        let t = t.trim_end_matches('0').trim_end_matches('.');
        if t == "-0" {
            "0".into()
        } else {
            t.to_string()
        }
    }
}

/// Series longer than this are drawn with a running mean over `len / SMOOTH_FROM` steps.
const SMOOTH_FROM: usize = 50;

/// The mean of each point's trailing window of `w` points (fewer at the start).
fn running_mean(points: &[(f64, f64)], w: usize) -> Vec<(f64, f64)> {
    let w = w.max(1);
    let mut sum = 0.0;
    points
        .iter()
        .enumerate()
        .map(|(i, &(x, y))| {
            sum += y;
            if i >= w {
                sum -= points[i - w].1;
            }
            (x, sum / (i + 1).min(w) as f64)
        })
        .collect()
}

/// An SVG line chart of `series` over a shared x axis (thin: each step; thick: running mean).
fn chart(title: &str, series: &[Series]) -> String {
    const W: f64 = 420.0;
    const H: f64 = 230.0;
    let (l, r, t, b) = (58.0, 12.0, 26.0, 52.0);
    let pts = series
        .iter()
        .flat_map(|s| &s.points)
        .filter(|(x, y)| x.is_finite() && y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, 0.0f64, f64::MIN);
    for &(x, y) in pts {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{0}\"><text x=\"{l}\" y=\"17\" font-size=\"14\" font-weight=\"bold\">{0}</text>",
        html_escape(title)
    );
    if x0 > x1 {
        s.push_str("<text x=\"60\" y=\"120\" font-size=\"13\" fill=\"#888\">no data in this run</text></svg>\n");
        return s;
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    // Head room for the dots' value labels.
    y1 += 0.08 * (y1 - y0);
    let sx = |x: f64| l + (x - x0) / (x1 - x0) * (W - l - r);
    let sy = |y: f64| H - b - (y - y0) / (y1 - y0) * (H - t - b);
    let _ = write!(
        s,
        "<rect x=\"{l}\" y=\"{t}\" width=\"{}\" height=\"{}\" fill=\"#fff\" stroke=\"#bbb\"/>",
        W - l - r,
        H - t - b
    );
    for i in 0..=4 {
        let f = i as f64 / 4.0;
        let (xv, yv) = (x0 + f * (x1 - x0), y0 + f * (y1 - y0));
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{}</text><line x1=\"{l}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            sx(xv),
            H - b + 13.0,
            if x1 - x0 >= 4.0 { format!("{:.0}", xv) } else { tick(xv) },
            l - 4.0,
            sy(yv) + 3.0,
            tick(yv),
            W - r,
            sy(yv),
            sy(yv)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">step</text>",
        (l + W - r) / 2.0,
        H - b + 25.0
    );
    let mut lx = l;
    for se in series.iter().filter(|se| !se.points.is_empty()) {
        let coords: Vec<String> = se
            .points
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if se.dots {
            for c in &coords {
                let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = write!(
                    s,
                    "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"4\" fill=\"{}\"/>",
                    se.color
                );
            }
            for &(x, y) in &se.points {
                // Beside the dot, on the side away from the plot's edge.
                let (dx, anchor) = if sx(x) > (l + W - r) / 2.0 {
                    (-7.0, "end")
                } else {
                    (7.0, "start")
                };
                let _ = write!(s, "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"{anchor}\">{:.2}</text>", sx(x) + dx, sy(y) + 12.0, y);
            }
        } else if se.points.len() > SMOOTH_FROM {
            // Per-step values are noisy: the steps faintly, their running mean on top.
            let _ = write!(s, "<polyline fill=\"none\" stroke=\"{}\" stroke-opacity=\"0.3\" stroke-width=\"1\" points=\"{}\"/>", se.color, coords.join(" "));
            let mean: Vec<String> = running_mean(&se.points, se.points.len() / SMOOTH_FROM)
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"2\" points=\"{}\"/>",
                se.color,
                mean.join(" ")
            );
        } else {
            let _ = write!(
                s,
                "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>",
                se.color,
                coords.join(" ")
            );
        }
        let _ = write!(
            s,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{}</text>",
            H - 16.0,
            se.color,
            lx + 13.0,
            H - 7.0,
            html_escape(se.name)
        );
        lx += 20.0 + 6.0 * se.name.len() as f64;
    }
    s.push_str("</svg>\n");
    s
}

fn pct(v: Option<f64>) -> String {
    v.map_or("&ndash;".into(), |v| format!("{:.1}%", 100.0 * v))
}

fn quality_table(s: &mut String, q: &Quality, run: &Run) {
    let _ = writeln!(
        s,
        "<h2>Decisions against the ground truth</h2>\n<p class=\"meta\">{} traced tuples, {} with an anchor the ground truth judges (two images are the same instance when one query's group, the query and its ok images, holds both; junk counts neither way). Precision: right / (right + wrong) among what a step added; recall: of the judged anchors' true positives among the training images, the share that were the tuple's positives after the round (kept neighbours, init positives, mined so far), summed over traced tuples.</p>",
        q.decisions, q.judged_decisions
    );
    let _ = writeln!(
        s,
        "<table><tr><th class=\"l\">decision</th><th>count judged</th><th>right</th><th>precision</th></tr>\n<tr><td class=\"l\">neighbour kept by selection</td><td>{}</td><td>{}</td><td>{}</td></tr>\n<tr><td class=\"l\">neighbour dropped by selection</td><td>{}</td><td>{}</td><td>{}</td></tr>\n<tr><td class=\"l\">init positive (offline similarity &ge; {})</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        q.kept.judged, q.kept.right, pct(q.kept.precision()),
        q.dropped.judged, q.dropped.right, pct(q.dropped.precision()),
        run.cfg.xbm.positive_thresh, q.init.judged, q.init.right, pct(q.init.precision())
    );
    s.push_str("<p></p><table id=\"rounds\"><tr><th>round</th><th>positives added</th><th>judged</th><th>right</th><th>precision</th><th>recall after the round</th></tr>\n");
    for r in &q.rounds {
        let _ = writeln!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if r.round == 0 {
                "0 (kept + init)".to_string()
            } else {
                format!("mining {}", r.round)
            },
            r.added,
            r.added_tally.judged,
            r.added_tally.right,
            pct(r.precision),
            pct(r.recall)
        );
    }
    s.push_str("</table>\n");
}

/// A thumbnail with a caption of badges.
fn figure(s: &mut String, p: &Page, j: usize, class: &str, caption: &str) -> Result<()> {
    let _ = write!(
        s,
        "<figure class=\"{class}\"><img src=\"{}\" alt=\"image {j}\" title=\"{}\"><figcaption>{caption}</figcaption></figure>",
        href(&p.run.paths[j], p.out)?,
        html_escape(&p.run.name(j))
    );
    Ok(())
}

fn mark_badge(m: Mark) -> &'static str {
    match m {
        Mark::Right => "<span class=\"right\">&#10003; right</span>",
        Mark::Wrong => "<span class=\"wrong\">&#10007; wrong</span>",
        Mark::Junk => "<span class=\"junk\">junk</span>",
        Mark::Unknown => "",
    }
}

fn inspector(s: &mut String, p: &Page) -> Result<()> {
    let run = p.run;
    let (pos_th, neg_th) = (run.cfg.xbm.positive_thresh, run.cfg.xbm.negative_thresh);
    let _ = writeln!(
        s,
        "<h2>Mining inspector</h2>\n<p class=\"meta\">For each anchor: its candidate-pool row with offline similarities (border: green init-positive zone &ge; {pos_th}, yellow candidates, red hard negatives &lt; {neg_th}), what mini-batch selection kept or dropped of its tuple, the positives mining added and in which round, and the hard negatives in the memory sample, at the last step the anchor was traced. Mining may pick the anchor or a tuple neighbour again (candidates do not exclude the tuple's own members, as in the original): shown, but not counted as a new positive.{}</p>",
        if p.truth.is_some() { " Marks compare each decision with the ground truth." } else { " Pass --gnd to mark decisions right or wrong." }
    );
    if p.anchors.is_empty() {
        s.push_str("<p>No traced anchors in this run (SOLVER.TRACE_ANCHORS = 0 and no TRACE_IMAGES).</p>\n");
    }
    for &a in p.anchors {
        let traced: Vec<&Decision> = run.decisions.iter().filter(|d| d.anchor == a).collect();
        // The anchor itself (re-mined) is neither right nor wrong.
        let mark = |j: usize| match p.truth {
            Some(t) if j != a => t.mark(a, j),
            _ => Mark::Unknown,
        };
        let _ = writeln!(
            s,
            "<section class=\"anchor\" id=\"anchor-{a}\"><h3>anchor {a}: {}</h3>",
            html_escape(&run.name(a))
        );
        let last = traced.last().copied();
        match last {
            Some(d) => {
                let steps: Vec<String> = traced.iter().map(|d| d.step.to_string()).collect();
                let _ = writeln!(
                    s,
                    "<p class=\"meta\">in a batch at steps {}; shown: step {}</p>",
                    steps.join(", "),
                    d.step
                );
            }
            None => {
                s.push_str("<p class=\"meta\">never traced in this run: only its pool row is shown (add it to SOLVER.TRACE_IMAGES to log its decisions).</p>\n");
            }
        }
        s.push_str("<div class=\"row\">");
        figure(s, p, a, "anchor-img", "anchor")?;
        s.push_str("</div>\n");
        let row = run.pool.neighbors(a);
        let sims = run.pool.similarities(a);
        let (pb, nb) = (run.bounds.pb[a] as usize, run.bounds.nb[a] as usize);
        let shown = p.columns.min(row.len());
        let _ = writeln!(
            s,
            "<h4>candidate pool row (columns 1-{shown} of {})</h4><div class=\"row\">",
            row.len()
        );
        for c in 0..shown {
            let j = row[c] as usize;
            let zone = if c < pb {
                "zone-pos"
            } else if c < nb.max(pb) {
                "zone-cand"
            } else {
                "zone-neg"
            };
            let mut cap = format!("#{} sim {:.3}<br>", c + 1, sims[c]);
            if let Some(d) = last {
                if let Some(k) = d.neighbors.iter().position(|&x| x == j).filter(|&k| k == c) {
                    cap += if d.kept[k] {
                        "<span class=\"badge b-kept\">tuple, kept</span>"
                    } else {
                        "<span class=\"badge b-drop\">tuple, dropped</span>"
                    };
                }
                if d.init.contains(&j) {
                    cap += "<span class=\"badge b-init\">init +</span>";
                }
                if let Some(m) = d.mined.iter().find(|m| m.0 == j) {
                    cap += &format!("<span class=\"badge b-mined\">mined r{}</span>", m.1);
                }
                if d.hard.contains(&j) {
                    cap += "<span class=\"badge b-hard\">hard &minus;</span>";
                }
            }
            let m = mark(j);
            cap += &format!("<br>{}", mark_badge(m));
            figure(s, p, j, zone, &cap)?;
        }
        s.push_str("</div>\n");
        let Some(d) = last else {
            s.push_str("</section>\n");
            continue;
        };
        if run.mining_on() {
            let _ = writeln!(s, "<h4>mined positives ({}), through the whole tuple's candidates</h4><div class=\"row\">", d.mined.len());
            for &(j, round, score) in &d.mined {
                let col = if j == a {
                    "the anchor itself".to_string()
                } else if let Some(k) = d.neighbors.iter().position(|&x| x == j) {
                    format!("tuple neighbour {}", k + 1)
                } else {
                    row.iter()
                        .position(|&x| x as usize == j)
                        .map_or("not in its row".into(), |c| format!("column {}", c + 1))
                };
                let m = mark(j);
                let cap = format!(
                    "<span class=\"badge b-mined\">round {round}</span> {score:.3}<br>{col}<br>{}",
                    mark_badge(m)
                );
                figure(s, p, j, "zone-cand", &cap)?;
            }
            if d.mined.is_empty() {
                s.push_str("<span class=\"meta\">none</span>");
            }
            let _ = writeln!(s, "</div>\n<h4>hard negatives in the memory sample (its own, first {})</h4><div class=\"row\">", crate::train::step::TRACED_HARD);
            for &j in &d.hard {
                let m = mark(j);
                let c = row.iter().position(|&x| x as usize == j).unwrap_or(0);
                let cap = format!("#{} sim {:.3}<br>{}", c + 1, sims[c], mark_badge(m));
                figure(s, p, j, "zone-neg", &cap)?;
            }
            if d.hard.is_empty() {
                s.push_str("<span class=\"meta\">none</span>");
            }
            s.push_str("</div>\n");
        }
        s.push_str("<table><tr><th>step</th><th>neighbours kept</th><th>init positives</th><th>mined (by round)</th><th>hard negatives listed</th></tr>\n");
        for d in &traced {
            let mut by_round: Vec<usize> = Vec::new();
            for &(_, r, _) in &d.mined {
                if by_round.len() < r {
                    by_round.resize(r, 0);
                }
                by_round[r - 1] += 1;
            }
            let rounds: Vec<String> = by_round.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(
                s,
                "<tr><td>{}</td><td>{}/{}</td><td>{}</td><td>{} ({})</td><td>{}</td></tr>",
                d.step,
                d.kept.iter().filter(|&&k| k).count(),
                d.kept.len(),
                d.init.len(),
                d.mined.len(),
                if rounds.is_empty() {
                    "&ndash;".into()
                } else {
                    rounds.join(" + ")
                },
                d.hard.len()
            );
        }
        s.push_str("</table>\n</section>\n");
    }
    Ok(())
}

/// The last component of `path`, for a caption.
fn file_name(path: &Path) -> String {
    path.file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned())
}

fn hit_figure(s: &mut String, p: &Page, h: &EvalHit, rank: usize) -> Result<()> {
    let badge = match h.mark.as_str() {
        "ok" => "<span class=\"right\">&#10003;</span>",
        "junk" => "<span class=\"junk\">junk</span>",
        _ => "<span class=\"wrong\">&#10007;</span>",
    };
    let name = file_name(&h.path);
    let _ = write!(
        s,
        "<figure class=\"hit\"><img src=\"{}\" alt=\"rank {rank}\" title=\"{}\"><figcaption>{rank}. {:.3} {badge}<br>{}</figcaption></figure>",
        href(&h.path, p.out)?,
        html_escape(&h.path.display().to_string()),
        h.score,
        html_escape(&name)
    );
    Ok(())
}

fn retrieval(s: &mut String, p: &Page) -> Result<()> {
    let evals: Vec<(&str, &Eval)> = [("before", p.before), ("after", p.after)]
        .into_iter()
        .filter_map(|(n, e)| e.map(|e| (n, e)))
        .collect();
    s.push_str("<h2>Retrieval: top 10 per query</h2>\n");
    if evals.is_empty() {
        s.push_str("<p class=\"meta\">No evaluation given: pass --before / --after, files of insclr-cu eval --json.</p>\n");
        return Ok(());
    }
    for (name, e) in &evals {
        let _ = writeln!(
            s,
            "<p class=\"meta\"><b>{name}</b>: mAP {:.2}, {} ({})</p>",
            100.0 * e.map,
            html_escape(&e.descriptors),
            html_escape(&e.file.display().to_string())
        );
    }
    for q in 0..evals[0].1.queries.len() {
        let query = &evals[0].1.queries[q];
        let _ = write!(
            s,
            "<div class=\"query\"><figure class=\"anchor-img\"><img src=\"{}\" alt=\"query {q}\"><figcaption>query {}<br>{}</figcaption></figure><div>",
            href(&query.path, p.out)?,
            q + 1,
            html_escape(&file_name(&query.path))
        );
        for (name, e) in &evals {
            let hits = &e.queries[q].top;
            let ok = hits.iter().filter(|h| h.mark == "ok").count();
            let _ = write!(
                s,
                "<div class=\"side\">{name}: {ok} of the top {} right</div><div class=\"row\">",
                hits.len()
            );
            for (r, h) in hits.iter().enumerate() {
                hit_figure(s, p, h, r + 1)?;
            }
            s.push_str("</div>");
        }
        s.push_str("</div></div>\n");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_mean_uses_the_trailing_window() {
        let p: Vec<(f64, f64)> = [1.0, 3.0, 5.0, 7.0]
            .iter()
            .enumerate()
            .map(|(i, &y)| (i as f64, y))
            .collect();
        let m: Vec<f64> = running_mean(&p, 2).iter().map(|q| q.1).collect();
        assert_eq!(m, vec![1.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn a_chart_without_points_says_so_and_ticks_stay_short() {
        let empty = Series {
            name: "x",
            color: "#000",
            points: vec![],
            dots: false,
        };
        assert!(chart("t", &[empty]).contains("no data"));
        assert_eq!(tick(0.000_123), "1.2e-4");
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(1234.0), "1234");
    }
}

//! `insclr-cu report` (issue 13): a tiny full stage (no-DA bank, selection, mining) traces its
//! decisions; the page's precision and recall per round equal an independent computation from
//! `decisions.jsonl` and the ground truth; the page opens in headless Chromium with no console
//! error, every image loaded, and a screenshot that is not blank. Without Chromium the browser
//! part is skipped with a message (CI installs it: `scripts/install-browser.sh`, and sets
//! `INSCLR_REQUIRE_BROWSER=1` so that a missing browser fails).

mod common;

use insclr::mining::CandidatePool;
use insclr::rng::Rng;
use insclr::train::{self, Config, RunOptions};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("insclr-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The instance of image `i` (`common::write_group_pngs`: 4 groups, image `i` in group `i % 4`).
fn group(i: usize) -> usize {
    i % 4
}

/// 8 images, their pool (group directions plus noise, so groups are each other's neighbours),
/// and a full-stage config: no-DA bank (XBM v2), selection, two mining rounds.
fn make_run(dir: &Path) -> Config {
    common::write_group_pngs(&dir.join("images"));
    let mut r = Rng::new(5);
    let feats: Vec<f32> = (0..8)
        .flat_map(|i| {
            let mut v: Vec<f32> = (0..4)
                .map(|t| if t == group(i) { 1.0 } else { 0.0 } + 0.4 * r.normal())
                .collect();
            let n = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            v.iter_mut().for_each(|a| *a /= n);
            v
        })
        .collect();
    let be = insclr::backend::cpu();
    let pool = CandidatePool::compute(be, &feats, 8, 4, 6, 64, &mut |_| {}).unwrap();
    pool.save(&dir.join("pool.npz")).unwrap();
    let toml = common::tiny_stage_toml(dir, 6, 1e-3, "random", "");
    let mut cfg = Config::parse(&toml, "test.toml").unwrap();
    cfg.noaug.enable = true;
    cfg.noaug.scales = vec![1.0];
    cfg.xbm.version = "v2".into();
    cfg.xbm.get_step = 0;
    cfg.xbm.get_size = 8;
    cfg.xbm.positive_thresh = 0.9;
    cfg.xbm.negative_thresh = 0.0;
    cfg.xbm.candidate_mode = "b+i_tr2_avg0.00_k02".into();
    cfg.selection.enable = true;
    cfg.selection.thresh = 0.5;
    cfg
}

/// A list ground truth: queries img_0, img_1, img_2 with their group's other image as `ok`;
/// group 3 is in no query (its anchors are not judged); img_1 is junk for query 0.
fn write_gnd(path: &Path) {
    let names: Vec<String> = (0..8).map(|i| format!("img_{i}.png")).collect();
    let gnd = serde_json::json!({
        "imlist": names,
        "qimlist": ["img_0.png", "img_1.png", "img_2.png"],
        "gnd": [
            {"ok": [4], "junk": [1]},
            {"ok": [5], "junk": []},
            {"ok": [6], "junk": []},
        ],
    });
    std::fs::write(path, serde_json::to_string(&gnd).unwrap()).unwrap();
}

fn cli(args: &[&str], cwd: &Path) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
        .args(args)
        .current_dir(cwd)
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "insclr-cu {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Right / judged of `j` for anchor `a` under `write_gnd`'s truth: None when not judged (the
/// anchor is in group 3, or `j` is junk).
fn judge(a: usize, j: usize) -> Option<bool> {
    if group(a) == 3 {
        return None;
    }
    if group(j) == group(a) && j != a {
        return Some(true);
    }
    if group(a) == 0 && j == 1 {
        return None;
    }
    Some(false)
}

/// Precision and recall per round from the decision log alone (the report's definitions:
/// round 0 holds the kept neighbours and init positives, a later round what it mined that
/// was not a positive yet; recall over the anchor's true positives among the 8 images).
fn rounds_from_log(
    decisions: &[Value],
    iters: usize,
) -> Vec<(usize, usize, Option<f64>, Option<f64>)> {
    let ids = |v: &Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    let mut out = Vec::new();
    for r in 0..=iters {
        let (mut right, mut judged, mut found, mut total) = (0, 0, 0, 0);
        for d in decisions {
            let a = d["anchor"].as_u64().unwrap() as usize;
            if group(a) == 3 {
                continue;
            }
            let kept: Vec<bool> = d["kept"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_bool().unwrap())
                .collect();
            let mut have: BTreeSet<usize> = ids(&d["neighbors"])
                .into_iter()
                .zip(kept)
                .filter(|p| p.1)
                .map(|p| p.0)
                .chain(ids(&d["init"]))
                .collect();
            let mined: Vec<(usize, usize)> = d["mined"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    (
                        m[0].as_u64().unwrap() as usize,
                        m[1].as_u64().unwrap() as usize,
                    )
                })
                .collect();
            // Round r adds what it mined that was not yet a positive (nor the anchor).
            for m in mined.iter().filter(|m| m.1 < r) {
                have.insert(m.0);
            }
            let added: Vec<usize> = if r == 0 {
                have.iter().copied().collect()
            } else {
                mined
                    .iter()
                    .filter(|m| m.1 == r && m.0 != a && !have.contains(&m.0))
                    .map(|m| m.0)
                    .collect()
            };
            for &j in &added {
                if let Some(ok) = judge(a, j) {
                    judged += 1;
                    right += ok as usize;
                }
            }
            have.extend(mined.iter().filter(|m| m.1 <= r).map(|m| m.0));
            let truth: Vec<usize> = (0..8).filter(|&j| j != a && group(j) == group(a)).collect();
            total += truth.len();
            found += truth.iter().filter(|j| have.contains(j)).count();
        }
        let p = (judged > 0).then(|| right as f64 / judged as f64);
        let rc = (total > 0).then(|| found as f64 / total as f64);
        out.push((judged, right, p, rc));
    }
    out
}

#[test]
fn report_numbers_match_the_decision_log_and_the_page_renders() {
    let dir = tmpdir("run");
    let cfg = make_run(&dir);
    let opts = RunOptions {
        quiet: true,
        ..RunOptions::default()
    };
    train::run(cfg, insclr::backend::cpu(), &opts).unwrap();
    let out = dir.join("out");
    let log = std::fs::read_to_string(out.join("decisions.jsonl")).unwrap();
    let decisions: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 6 steps of 2 anchors, every anchor traced (TRACE_ANCHORS defaults to 64).
    assert_eq!(decisions.len(), 12, "{log}");
    assert!(
        decisions
            .iter()
            .any(|d| !d["mined"].as_array().unwrap().is_empty()),
        "no tuple mined anything, the test would check nothing: {log}"
    );

    let gnd = dir.join("gnd.json");
    write_gnd(&gnd);
    let images = dir.join("images");
    let weights = out.join("model_final.safetensors");
    let eval = |args: &[&str], json: &str| {
        let mut a = vec!["eval", "--dataset", "list", "--root"];
        a.push(images.to_str().unwrap());
        a.extend([
            "--gnd",
            gnd.to_str().unwrap(),
            "--img-size",
            "32",
            "--quiet",
            "--json",
            json,
        ]);
        a.extend(args);
        cli(&a, &dir);
    };
    eval(&["--model", "tiny-gem"], "before.json");
    eval(&["--weights", weights.to_str().unwrap()], "after.json");
    let before: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("before.json")).unwrap()).unwrap();
    assert_eq!(before["queries"].as_array().unwrap().len(), 3);
    assert_eq!(before["queries"][0]["top"].as_array().unwrap().len(), 8);

    let page = dir.join("page/report.html");
    std::fs::create_dir_all(page.parent().unwrap()).unwrap();
    let printed = cli(
        &[
            "report",
            out.to_str().unwrap(),
            "--out",
            page.to_str().unwrap(),
            "--gnd",
            gnd.to_str().unwrap(),
            "--before",
            "before.json",
            "--after",
            "after.json",
            "--anchor",
            "img_3.png",
        ],
        &dir,
    );
    let text = String::from_utf8_lossy(&printed.stdout);
    assert!(text.contains("wrote"), "{text}");

    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("page/report.json")).unwrap())
            .unwrap();
    let q = &report["quality"];
    assert_eq!(q["decisions"], 12);
    let rounds = q["rounds"].as_array().unwrap();
    let want = rounds_from_log(&decisions, 2);
    assert!(
        want[1..].iter().any(|w| w.0 > 0),
        "no mined positive of a judged anchor: the per-round check would check nothing"
    );
    assert_eq!(rounds.len(), want.len());
    for (got, (judged, right, p, rc)) in rounds.iter().zip(&want) {
        assert_eq!(
            got["added_tally"]["judged"].as_u64().unwrap() as usize,
            *judged,
            "{got}"
        );
        assert_eq!(
            got["added_tally"]["right"].as_u64().unwrap() as usize,
            *right,
            "{got}"
        );
        assert_eq!(got["precision"].as_f64(), *p, "{got}");
        assert_eq!(got["recall"].as_f64(), *rc, "{got}");
    }
    // The named anchor comes first, then the sampled ones.
    assert_eq!(report["anchors"][0], 3);

    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.matches("<svg").count() >= 5,
        "curves and the mAP chart"
    );
    assert!(html.contains("polyline"));
    for a in report["anchors"].as_array().unwrap() {
        assert!(
            html.contains(&format!("id=\"anchor-{a}\"")),
            "anchor {a} not on the page"
        );
    }
    browser_check(&page, &html, &dir.join("browser"));
    std::fs::remove_dir_all(&dir).ok();
}

/// Opens the page in headless Chromium (scripts/browser-check.sh).
fn browser_check(page: &Path, html: &str, out: &Path) {
    let browser = std::env::var("INSCLR_CHROMIUM").unwrap_or_else(|_| "chromium".into());
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {browser}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("INSCLR_REQUIRE_BROWSER").map_or(true, |v| v != "1"),
            "INSCLR_REQUIRE_BROWSER=1 but {browser} is not installed (scripts/install-browser.sh)"
        );
        common::log("SKIPPED report browser check: no chromium (run scripts/install-browser.sh)");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/browser-check.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(page)
        .arg(out)
        .arg("1200,1600")
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "browser-check failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let console = std::fs::read_to_string(out.join("console.txt")).unwrap();
    assert!(
        console.trim().is_empty(),
        "the page logged to the console:\n{console}"
    );
    let dom = std::fs::read_to_string(out.join("dom.html")).unwrap();
    let images = html.matches("<img ").count();
    assert!(images > 10);
    assert!(
        dom.contains(&format!("data-images-loaded=\"{images}\"")),
        "not every one of the {images} images loaded, or the page's script did not run"
    );
    let shot = image::open(out.join("screenshot.png")).unwrap().to_rgb8();
    assert_eq!(shot.dimensions(), (1200, 1600));
    let px = shot.pixels().count();
    let inked = shot
        .pixels()
        .filter(|p| p.0.iter().any(|&c| c < 200))
        .count();
    let colours: BTreeSet<[u8; 3]> = shot.pixels().map(|p| p.0).collect();
    assert!(
        inked * 50 > px && colours.len() > 50,
        "screenshot looks blank: {inked} of {px} pixels inked, {} colours",
        colours.len()
    );
    common::log(&format!(
        "RAN report browser check: {images} images loaded, no console message, screenshot {} colours",
        colours.len()
    ));
}

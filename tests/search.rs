//! `insclr-cu search` (issue 13): a database image searched as a query comes back first with
//! score ~1; `--json` has the documented shape; `--html` links images relative to the page and
//! escapes file names; an index whose list, dimension or values do not fit is refused, naming
//! the files.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_insclr-cu"));
    // The tiny PNGs at one scale: the same settings for the index and the queries.
    c.args(["--device", "cpu"]);
    c
}

/// Settings `extract` and `search` share here: the images are 36 x 32, described at one scale.
const DESCRIBE: [&str; 5] = ["--img-size", "64", "--scales", "1", "--quiet"];

/// A folder with 8 tiny PNGs in `images/` and their tiny-gem index `feats.npy` / `feats.txt`,
/// built once for all the tests of this file.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("insclr-search-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        common::write_group_pngs(&d.join("images"));
        let out = bin()
            .arg("extract")
            .args(["--model", "tiny-gem", "--images"])
            .arg(d.join("images"))
            .arg("--out")
            .arg(d.join("feats.npy"))
            .args(DESCRIBE)
            .output()
            .unwrap();
        assert!(out.status.success(), "extract: {}", text(&out));
        d
    })
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `insclr-cu search` on the fixture's index with `extra` arguments (queries among them).
fn search(index: &Path, list: &Path, extra: &[&std::ffi::OsStr]) -> Output {
    bin()
        .arg("search")
        .arg("--index")
        .arg(index)
        .arg("--images")
        .arg(list)
        .args(["--model", "tiny-gem"])
        .args(DESCRIBE)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_database_image_finds_itself_first() {
    let d = fixture();
    let q = d.join("images/img_3.png");
    let out = search(&d.join("feats.npy"), &d.join("feats.txt"), &[q.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1 + 8,
        "one header and 8 results (k capped): {stdout}"
    );
    assert!(lines[0].starts_with("query ") && lines[0].ends_with("img_3.png"));
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(first[0], "1", "{stdout}");
    let score: f32 = first[1].parse().unwrap();
    assert!((score - 1.0).abs() < 1e-3, "self score {score}: {stdout}");
    assert!(first[2].ends_with("img_3.png"), "{stdout}");
}

#[test]
fn json_has_k_results_per_query_and_the_settings() {
    let d = fixture();
    let (q1, q2) = (d.join("images/img_5.png"), d.join("images/img_0.png"));
    let out = search(
        &d.join("feats.npy"),
        &d.join("feats.txt"),
        &[
            "--json".as_ref(),
            "--k".as_ref(),
            "3".as_ref(),
            q1.as_os_str(),
            q2.as_os_str(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(v["k"], 3);
    assert_eq!(v["database_size"], 8);
    assert_eq!(v["dim"], 3);
    assert_eq!(v["model"], "tiny-gem");
    let queries = v["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 2);
    for (q, want) in queries.iter().zip(["img_5.png", "img_0.png"]) {
        assert!(q["query"].as_str().unwrap().ends_with(want));
        let res = q["results"].as_array().unwrap();
        assert_eq!(res.len(), 3);
        assert_eq!(res[0]["rank"], 1);
        assert!(res[0]["image"].as_str().unwrap().ends_with(want), "{q}");
        let s: Vec<f64> = res.iter().map(|r| r["score"].as_f64().unwrap()).collect();
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "best first: {s:?}");
        assert!((s[0] - 1.0).abs() < 1e-3);
    }
}

/// `--qe` and `--dba` (issue 29) expand the query and augment the index before ranking, and say
/// so in the JSON; `--qe q.jpg` leaves the query a query (the value needs `=`).
#[test]
fn query_expansion_and_database_augmentation_are_said_in_the_json() {
    let d = fixture();
    let q = d.join("images/img_2.png");
    let (index, list) = (d.join("feats.npy"), d.join("feats.txt"));
    let plain = search(&index, &list, &["--json".as_ref(), q.as_os_str()]);
    let out = search(
        &index,
        &list,
        &[
            "--json".as_ref(),
            "--dba=2".as_ref(),
            "--qe".as_ref(),
            q.as_os_str(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let p: serde_json::Value = serde_json::from_slice(&plain.stdout).expect("stdout is JSON");
    assert_eq!(v["expansion"], "αDBA (n 2, α 3), αQE (n 2, α 3)");
    assert_eq!(p["expansion"], "");
    // The query's group (img_2 and img_6, i % 4) stays on top, in either order: augmentation
    // pulls the two together.
    let res = v["queries"][0]["results"].as_array().unwrap();
    let mut top: Vec<&str> = res[..2]
        .iter()
        .map(|r| r["image"].as_str().unwrap())
        .collect();
    top.sort();
    assert!(
        top[0].ends_with("img_2.png") && top[1].ends_with("img_6.png"),
        "{v}"
    );
    let scores = |v: &serde_json::Value| -> Vec<f64> {
        v["queries"][0]["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["score"].as_f64().unwrap())
            .collect()
    };
    assert_ne!(
        scores(&v),
        scores(&p),
        "the expanded scores are not the plain ones"
    );
}

#[test]
fn html_links_images_relative_to_the_page_and_escapes_names() {
    let d = fixture();
    // A query outside the index whose name needs both URL and HTML escaping.
    let qdir = d.join("odd queries");
    std::fs::create_dir_all(&qdir).unwrap();
    let q = qdir.join("a&b <#1>.png");
    std::fs::copy(d.join("images/img_2.png"), &q).unwrap();
    let page = d.join("pages/out.html");
    std::fs::create_dir_all(page.parent().unwrap()).unwrap();
    let out = search(
        &d.join("feats.npy"),
        &d.join("feats.txt"),
        &["--html".as_ref(), page.as_os_str(), q.as_os_str()],
    );
    assert!(out.status.success(), "{}", text(&out));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("src=\"../images/img_2.png\""),
        "the best match linked relative to the page: {html}"
    );
    assert!(
        html.contains("src=\"../odd%20queries/a%26b%20%3C%231%3E.png\""),
        "query linked with its name percent-encoded: {html}"
    );
    assert!(html.contains("a&amp;b &lt;#1&gt;.png"), "caption escaped");
    assert!(!html.contains("<#1>"), "no raw name in the markup");
    assert!(!html.contains("http"), "no network reference");
    assert_eq!(html.matches("<img ").count(), 1 + 8);
}

#[test]
fn a_list_that_does_not_match_the_index_is_refused_naming_both_files() {
    let d = fixture();
    let full = std::fs::read_to_string(d.join("feats.txt")).unwrap();
    let short: String = full.lines().take(7).map(|l| format!("{l}\n")).collect();
    let list = d.join("short-list.txt");
    std::fs::write(&list, short).unwrap();
    let q = d.join("images/img_1.png");
    let out = search(&d.join("feats.npy"), &list, &[q.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("short-list.txt") && err.contains("feats.npy") && err.contains("7 images"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn nan_and_dimension_mismatches_are_refused() {
    let d = fixture();
    let q = d.join("images/img_1.png");
    let list = d.join("feats.txt");
    let write = |name: &str, cols: usize, nan: bool| {
        let mut v = vec![0.5f32; 8 * cols];
        if nan {
            v[2 * cols + 1] = f32::NAN;
        }
        let a = insclr::io::npy::Array::new(vec![8, cols], v).unwrap();
        let p = d.join(name);
        insclr::io::npy::write(&p, &a).unwrap();
        p
    };
    let nan = write("nan.npy", 3, true);
    let out = search(&nan, &list, &[q.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nan.npy") && err.contains("row 2"), "{err}");
    let wide = write("wide.npy", 5, false);
    let out = search(&wide, &list, &[q.as_os_str()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wide.npy") && err.contains("5-d") && err.contains("3-d"),
        "{err}"
    );
}

//! Bad inputs are refused by name, before the work: truncated and too-small images (`extract`
//! fails, or leaves them out with `--skip-bad`; `eval` fails), non-finite descriptors, scales
//! that would exhaust memory, and outputs that cannot be written. All on the tiny-gem model.

use insclr::io::npy;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
}

/// A fresh scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("insclr-bad-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn save_png(path: &Path, rgb: [u8; 3], w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let t = ((x + 3 * y) % 5) as u8;
        image::Rgb([rgb[0].saturating_add(t), rgb[1], rgb[2].saturating_add(t)])
    });
    img.save(path).unwrap();
}

/// The first half of a real photo (a demo JPEG; an encoded noise image where the demo data is
/// not checked out). The JPEG decoder alone would return it as a half-grey picture.
fn half_jpeg(path: &Path) {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/demo/foolbox/imagenet_00_243.jpg");
    let bytes = std::fs::read(&demo).unwrap_or_else(|_| {
        let mut rng = 1u32;
        let img = image::RgbImage::from_fn(120, 90, |_, _| {
            rng = rng.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            image::Rgb([(rng >> 24) as u8, (rng >> 16) as u8, (rng >> 8) as u8])
        });
        let mut jpg = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut jpg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
        jpg
    });
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

fn extract(images: &Path, out: &Path, extra: &[&str]) -> Output {
    bin()
        .args(["extract", "--quiet", "--images"])
        .arg(images)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_truncated_jpeg_fails_extract_by_name_or_is_left_out_with_skip_bad() {
    let dir = scratch("trunc");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    save_png(&imgs.join("a.png"), [200, 30, 30], 40, 30);
    half_jpeg(&imgs.join("b_cut.jpg"));
    save_png(&imgs.join("c.png"), [30, 30, 200], 33, 41);
    let out = dir.join("feats.npy");

    let o = extract(&imgs, &out, &["--scales", "1"]);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("b_cut.jpg is truncated"), "{stderr}");
    assert!(stderr.contains("1 unusable image(s)"), "{stderr}");
    assert!(!out.exists(), "no matrix is written when an image is bad");

    let o = extract(&imgs, &out, &["--scales", "1", "--skip-bad"]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("1 unusable image(s)") && stderr.contains("b_cut.jpg"),
        "{stderr}"
    );
    assert_eq!(npy::read::<f32>(&out).unwrap().shape, vec![2, 3]);
    let order = std::fs::read_to_string(dir.join("feats.txt")).unwrap();
    let rows: Vec<&str> = order.lines().collect();
    assert_eq!(rows.len(), 2, "{order}");
    assert!(
        rows[0].ends_with("a.png") && rows[1].ends_with("c.png"),
        "{order}"
    );
    let bad = std::fs::read_to_string(dir.join("feats.bad.txt")).unwrap();
    assert_eq!(bad.lines().count(), 1, "{bad}");
    assert!(
        bad.contains("b_cut.jpg\t") && bad.contains("truncated"),
        "{bad}"
    );

    // eval describes images with the model too: it stops naming the file instead of scoring
    // a zero (or half-grey) descriptor.
    let gnd = serde_json::json!({
        "imlist": ["imgs/a.png", "imgs/b_cut.jpg"],
        "qimlist": ["imgs/c.png"],
        "gnd": [{"ok": [0], "junk": []}],
    });
    std::fs::write(dir.join("gnd.json"), gnd.to_string()).unwrap();
    let o = bin()
        .args([
            "eval",
            "--dataset",
            "list",
            "--quiet",
            "--scales",
            "1",
            "--root",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("b_cut.jpg is truncated"), "{stderr}");
    assert!(!stdout.contains("ok/junk"), "no score is printed: {stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_one_pixel_image_is_named_as_too_small() {
    let dir = scratch("tiny");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    save_png(&imgs.join("a.png"), [200, 30, 30], 40, 30);
    image::RgbImage::new(1, 1)
        .save(imgs.join("dot.png"))
        .unwrap();
    let out = dir.join("feats.npy");
    let o = extract(&imgs, &out, &[]);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("dot.png is too small") && stderr.contains("1x1 pixels"),
        "{stderr}"
    );
    let o = extract(&imgs, &out, &["--skip-bad"]);
    assert!(o.status.success(), "{}", text(&o).1);
    assert_eq!(npy::read::<f32>(&out).unwrap().shape, vec![1, 3]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn eval_refuses_non_finite_descriptor_files_naming_file_and_row() {
    let dir = scratch("nan");
    let gnd = serde_json::json!({
        "imlist": ["a.png", "b.png", "c.png"],
        "qimlist": ["q0.png", "q1.png"],
        "gnd": [{"ok": [0]}, {"ok": [1]}],
    });
    std::fs::write(dir.join("gnd.json"), gnd.to_string()).unwrap();
    let db = npy::Array::new(vec![3, 2], vec![1.0f32, 0.0, 0.0, 1.0, 0.6, 0.8]).unwrap();
    npy::write(&dir.join("db.npy"), &db).unwrap();
    let q = npy::Array::new(vec![2, 2], vec![1.0f32, 0.0, f32::NAN, 1.0]).unwrap();
    npy::write(&dir.join("q.npy"), &q).unwrap();
    let mut db_inf = db.clone();
    db_inf.data[5] = f32::INFINITY;
    npy::write(&dir.join("db_inf.npy"), &db_inf).unwrap();
    npy::write(
        &dir.join("q_ok.npy"),
        &npy::Array::new(vec![2, 2], vec![1.0f32, 0.0, 0.0, 1.0]).unwrap(),
    )
    .unwrap();
    for (dbf, qf, want) in [
        (
            "db.npy",
            "q.npy",
            "q.npy: row 1 of 2 has a non-finite value (NaN)",
        ),
        (
            "db_inf.npy",
            "q_ok.npy",
            "db_inf.npy: row 2 of 3 has a non-finite value (inf)",
        ),
    ] {
        let o = bin()
            .args(["eval", "--dataset", "list", "--root"])
            .arg(&dir)
            .arg("--db-feats")
            .arg(dir.join(dbf))
            .arg("--query-feats")
            .arg(dir.join(qf))
            .output()
            .unwrap();
        let (stdout, stderr) = text(&o);
        assert!(!o.status.success(), "{stdout}\n{stderr}");
        assert!(stderr.contains(want), "{stderr}");
        assert!(!stdout.contains("ok/junk"), "no score is printed: {stdout}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_huge_scale_is_refused_with_the_limit_before_any_work() {
    let dir = scratch("scale");
    save_png(&dir.join("a.png"), [200, 30, 30], 8, 6);
    let out = dir.join("feats.npy");
    let o = extract(&dir, &out, &["--scales", "1000000"]);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("a.png") && stderr.contains("limit of 8192 pixels per side"),
        "{stderr}"
    );
    assert!(stderr.contains("--max-side"), "{stderr}");
    // Raising the limit past what memory holds is refused by the memory estimate (Linux).
    if std::fs::read_to_string("/proc/meminfo").is_ok_and(|m| m.contains("MemAvailable")) {
        let o = extract(
            &dir,
            &out,
            &["--scales", "1000000", "--max-side", "100000000"],
        );
        let (stdout, stderr) = text(&o);
        assert!(!o.status.success(), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("needs at least") && stderr.contains("MemAvailable"),
            "{stderr}"
        );
    }
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unwritable_outputs_are_refused_before_the_work() {
    let dir = scratch("unwritable");
    save_png(&dir.join("a.png"), [200, 30, 30], 20, 16);
    // A regular file where the output folder should be: unwritable even for root.
    let blocker = dir.join("not_a_dir");
    std::fs::write(&blocker, b"x").unwrap();

    let o = extract(&dir, &blocker.join("feats.npy"), &["--scales", "1"]);
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("cannot write output") && stderr.contains("not_a_dir/feats.npy"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("model:"),
        "refused before loading the model: {stderr}"
    );

    let gnd = serde_json::json!({"imlist": ["a.png"], "qimlist": ["a.png"], "gnd": [{"ok": [0]}]});
    std::fs::write(dir.join("gnd.json"), gnd.to_string()).unwrap();
    let f = npy::Array::new(vec![1, 2], vec![1.0f32, 0.0]).unwrap();
    npy::write(&dir.join("f.npy"), &f).unwrap();
    let o = bin()
        .args(["eval", "--dataset", "list", "--root"])
        .arg(&dir)
        .arg("--db-feats")
        .arg(dir.join("f.npy"))
        .arg("--query-feats")
        .arg(dir.join("f.npy"))
        .arg("--json")
        .arg(blocker.join("res.json"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("not_a_dir/res.json"), "{stderr}");
    assert!(stdout.is_empty(), "refused before scoring: {stdout}");

    let o = bin()
        .args(["pool", "--k", "1", "--feats"])
        .arg(dir.join("f.npy"))
        .arg("--out")
        .arg(blocker.join("pool.npz"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&o);
    assert!(!o.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("not_a_dir/pool.npz"), "{stderr}");
    assert!(stdout.is_empty(), "refused before the search: {stdout}");
    std::fs::remove_dir_all(&dir).ok();
}

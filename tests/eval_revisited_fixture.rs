//! revisitop ground truths pickled by real numpy (protocols 2, 4, 5; written by
//! scripts/gen-revisited-fixture.py) are read and scored exactly as an independent numpy
//! re-implementation of revisitop's `compute_map` scored them (tests/data/revisited-numpy/expected.txt).

use std::path::Path;
use std::process::Command;

#[test]
fn numpy_pickled_gnd_scores_match_the_numpy_reference() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/revisited-numpy");
    let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let want: Vec<Vec<String>> = expected
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect();
    assert_eq!(want.len(), 3);
    for proto in [2, 4, 5] {
        let out = Command::new(env!("CARGO_BIN_EXE_insclr-cu"))
            .args([
                "eval",
                "--dataset",
                "roxford5k",
                "--device",
                "cpu",
                "--root",
            ])
            .arg(&dir)
            .arg("--gnd")
            .arg(dir.join(format!("gnd_p{proto}.pkl")))
            .arg("--db-feats")
            .arg(dir.join("db.npy"))
            .arg("--query-feats")
            .arg(dir.join("query.npy"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Vec<Vec<String>> = stdout
            .lines()
            .skip(2)
            .map(|l| l.split_whitespace().take(5).map(str::to_string).collect())
            .collect();
        assert_eq!(got, want, "protocol {proto}:\n{stdout}");
    }
}

#[test]
fn numpy_pickled_gnd_entries_are_decoded() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/revisited-numpy");
    let g = insclr::eval::gnd_pickle::read(&dir.join("gnd_p2.pkl")).unwrap();
    assert_eq!(
        (g.imlist.len(), g.qimlist.len(), g.gnd.len()),
        (300, 12, 12)
    );
    assert_eq!(g.imlist[7], "db0007");
    // Query 0 was written with no easy image; odd queries carry bbx as an array, even as a list.
    assert!(g.gnd[0].easy.is_empty());
    assert_eq!(g.gnd[1].bbx, Some([1.5, 2.5, 100.0, 80.0]));
    assert_eq!(g.gnd[2].bbx, Some([3.0, 4.0, 50.5, 60.0]));
    let g5 = insclr::eval::gnd_pickle::read(&dir.join("gnd_p5.pkl")).unwrap();
    assert_eq!(g, g5);
}

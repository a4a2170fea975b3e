//! The mining family (kernels/mining.cu) against its CPU twin, on the GPU or the emulated GPU:
//! mini-batch selection and the query-set scores of iterative mining must make the very same
//! choices (keep flags, counts) and give the very same scores, bit for bit.

mod common;

use common::kernel_device;
use insclr::backend::{Backend, BatchSelect, MiningScore};
use insclr::rng::Rng;

fn batch_select_on(
    be: &dyn Backend,
    g: &[f32],
    ap: &[usize],
    np: &[usize],
    s: BatchSelect,
) -> Vec<i32> {
    let gb = be.upload(g).unwrap();
    let mut keep = be.upload(&vec![-7i32; s.anchors * s.k]).unwrap();
    be.batch_select(&gb, ap, np, &mut keep, s).unwrap();
    be.download(&keep).unwrap()
}

#[test]
fn kernel_batch_select_matches_cpu() {
    let dev = kernel_device("kernel_batch_select_matches_cpu");
    let mut rng = Rng::new(61);
    for &(anchors, k, d) in &[
        (1usize, 1usize, 1usize),
        (4, 3, 12),
        (32, 5, 64),
        (7, 40, 2048),
    ] {
        let rows = anchors * (k + 1);
        let g = rng.vec_f32(rows * d, -1.0, 1.0);
        let ap: Vec<usize> = (0..anchors).collect();
        let np: Vec<usize> = (0..anchors * k).map(|p| anchors + p).collect();
        for (dynamic, thresh) in [(false, 0.0f32), (false, 0.6), (true, 0.6), (true, -0.3)] {
            let s = BatchSelect {
                anchors,
                k,
                dim: d,
                dynamic,
                thresh,
            };
            let want = batch_select_on(insclr::backend::cpu(), &g, &ap, &np, s);
            let got = batch_select_on(&dev, &g, &ap, &np, s);
            assert_eq!(got, want, "{s:?}");
            assert!(want.iter().all(|&f| f == 0 || f == 1));
        }
    }
}

fn score_on(
    be: &dyn Backend,
    sim: &[f32],
    chosen: &[bool],
    s: MiningScore,
) -> (Vec<u32>, Vec<i32>) {
    let sb = be.upload(sim).unwrap();
    let mut score = be.upload(&vec![f32::NAN; s.nc]).unwrap();
    let mut num = be.upload(&vec![-7i32; s.nc]).unwrap();
    be.mining_score(&sb, chosen, &mut score, &mut num, s)
        .unwrap();
    let score: Vec<f32> = be.download(&score).unwrap();
    (
        score.iter().map(|v| v.to_bits()).collect(),
        be.download(&num).unwrap(),
    )
}

#[test]
fn kernel_mining_score_matches_cpu() {
    let dev = kernel_device("kernel_mining_score_matches_cpu");
    let mut rng = Rng::new(62);
    for &(nc, nq) in &[(1usize, 1usize), (5, 3), (129, 17), (300, 60)] {
        // Similarities around the threshold, some exactly on it.
        let mut sim = rng.vec_f32(nc * nq, 0.0, 1.0);
        for v in sim.iter_mut().step_by(7) {
            *v = 0.6;
        }
        let chosen: Vec<bool> = (0..nc).map(|r| r % 4 == 1).collect();
        for use_max in [false, true] {
            for th in [0.6f32, 0.0, 1.5] {
                let s = MiningScore {
                    nc,
                    nq,
                    use_max,
                    th,
                };
                let want = score_on(insclr::backend::cpu(), &sim, &chosen, s);
                let got = score_on(&dev, &sim, &chosen, s);
                assert_eq!(got, want, "{s:?}");
            }
        }
    }
}

// ---- thresholds: inputs exactly on every threshold the method compares against ----------------
//
// A flipped comparison (`>=` for `>`) changes a decision only for an input exactly on the
// threshold, and random inputs never land there. Each case below plants such inputs, with the
// decision the spec's rule gives written out by hand: checking the kernel against the CPU twin
// alone would pass a comparison flipped in both.

/// The next f32 above / below a positive finite `x`.
fn next_up(x: f32) -> f32 {
    f32::from_bits(x.to_bits() + 1)
}
fn next_down(x: f32) -> f32 {
    f32::from_bits(x.to_bits() - 1)
}

/// A row of two whose dot product with `E1` is exactly `c` (1 * c + 0 * sine), with no
/// rounding anywhere, on every backend; the sine only makes it a unit vector.
fn at_cos(c: f32) -> [f32; 2] {
    [c, (1.0 - c * c).max(0.0).sqrt()]
}
const E1: [f32; 2] = [1.0, 0.0];

#[test]
fn batch_selection_keeps_a_neighbour_exactly_on_the_threshold() {
    let dev = kernel_device("batch_selection_keeps_a_neighbour_exactly_on_the_threshold");
    let dev: &dyn Backend = &dev;
    let t = insclr::mining::selection::SELECTION_THRESH;
    // (rule, threshold, the three neighbours' similarities to their anchor, keep flags by hand).
    let cases: &[(bool, f32, [f32; 3], [i32; 3])] = &[
        // Fixed (spec 4.5.1): keep s >= t; the shipped 0.6 and a value exact in every format.
        (false, t, [t, next_down(t), next_up(t)], [1, 0, 1]),
        (false, 0.75, [next_down(0.75), 0.75, 1.0], [0, 1, 1]),
        // Dynamic: keep s / max s >= t. 0.375 / 0.5 is exactly 0.75.
        (true, 0.75, [0.5, 0.375, next_down(0.375)], [1, 1, 0]),
        // The rule's bound: at t = 1 only the best (and a tie with it) stays.
        (true, 1.0, [0.5, next_down(0.5), 0.5], [1, 0, 1]),
    ];
    for &(dynamic, thresh, sims, want) in cases {
        // Two anchors with the same neighbours: rows 0, 1 anchors, then 3 neighbours each.
        let mut g: Vec<f32> = [E1, E1].concat();
        for _ in 0..2 {
            g.extend(sims.iter().flat_map(|&c| at_cos(c)));
        }
        let s = BatchSelect {
            anchors: 2,
            k: 3,
            dim: 2,
            dynamic,
            thresh,
        };
        let (ap, np) = ([0usize, 1], [2usize, 3, 4, 5, 6, 7]);
        let want = [want, want].concat();
        let cpu = batch_select_on(insclr::backend::cpu(), &g, &ap, &np, s);
        assert_eq!(cpu, want, "cpu, {s:?}, similarities {sims:?}");
        let got = batch_select_on(dev, &g, &ap, &np, s);
        assert_eq!(got, want, "{}, {s:?}, similarities {sims:?}", dev.name());
    }
}

#[test]
fn mining_scores_count_a_similarity_exactly_on_the_threshold() {
    let dev = kernel_device("mining_scores_count_a_similarity_exactly_on_the_threshold");
    let dev: &dyn Backend = &dev;
    let th = 0.6f32; // `avg0.60`: the shipped score threshold, as the mode string parses it
    let below = next_down(th);
    #[rustfmt::skip]
    let sim = [
        th,    below, 0.8,  th,   // two on the threshold and one above it count
        th,    0.1,   0.2,  0.3,  // only the one on it
        below, 0.59,  -1.0, 0.0,  // none
        0.9,   0.9,   0.9,  0.9,  // already chosen: 0 whatever its row
    ];
    let chosen = [false, false, false, true];
    // avg = sum of the qualifying similarities / (count + 1e-6) (trap G22), summed in row
    // order; max = the largest qualifying one, 0 when none qualifies.
    let avg = [
        ((th + 0.8f32) + th) / (3.0 + 1e-6),
        th / (1.0 + 1e-6),
        0.0,
        0.0,
    ];
    let counts = vec![3, 1, 0, 0];
    // G22's consequence: a candidate whose one qualifying similarity sits on the threshold
    // scores below it.
    assert!(avg[1] < th);
    for use_max in [false, true] {
        let s = MiningScore {
            nc: 4,
            nq: 4,
            use_max,
            th,
        };
        let want_score: [f32; 4] = if use_max { [0.8, th, 0.0, 0.0] } else { avg };
        let want = (
            want_score.iter().map(|v| v.to_bits()).collect(),
            counts.clone(),
        );
        assert_eq!(
            score_on(insclr::backend::cpu(), &sim, &chosen, s),
            want,
            "cpu, {s:?}"
        );
        assert_eq!(
            score_on(dev, &sim, &chosen, s),
            want,
            "{}, {s:?}",
            dev.name()
        );
    }
}

/// Iterative mining's pickers at their thresholds, through the whole `select` (GEMM, row
/// copies, scores) on the CPU and on the kernel device: the query set is e1 and the candidates'
/// similarities to it are exactly 0.6 (the score threshold), just below it, and 0.7.
#[test]
fn mining_pickers_at_the_score_and_selector_thresholds() {
    use insclr::mining::{select::select, Mode};
    let dev = kernel_device("mining_pickers_at_the_score_and_selector_thresholds");
    let th = 0.6f32;
    let c: Vec<f32> = [th, 0.7, next_down(th)]
        .iter()
        .flat_map(|&v| at_cos(v))
        .collect();
    let cases = [
        // avg on the threshold is 0.6 / (1 + 1e-6) < 0.6: the t0.60 selector leaves it (G22).
        ("b+i_tr1_avg0.60_t0.60", vec![1]),
        // Top-k takes every candidate with a qualifying similarity (count > 0), the one on the
        // threshold included, and never the one below it.
        ("b+i_tr1_avg0.60_k05", vec![0, 1]),
        // max on the threshold is exactly 0.6, and the selector keeps score >= t.
        ("b+i_tr1_max0.60_t0.60", vec![0, 1]),
    ];
    for (mode, want) in cases {
        let m = Mode::parse(mode).unwrap();
        for be in [insclr::backend::cpu(), &dev as &dyn Backend] {
            let (q, cb) = (be.upload(&E1).unwrap(), be.upload(&c).unwrap());
            let sel = select(be, &m, &q, &cb, 2).unwrap();
            assert_eq!(
                sel.chosen,
                want,
                "{mode} on {}: scores {:?}",
                be.name(),
                sel.scores
            );
        }
    }
}

/// The offline boundaries (spec 4.5.0): pb and nb count the columns with similarity >=
/// POSITIVE_THRESH (0.75) and >= NEGATIVE_THRESH (0.5); both are exact in f32.
#[test]
fn offline_boundaries_include_similarities_exactly_on_the_thresholds() {
    use insclr::mining::mine::{NEGATIVE_THRESH, POSITIVE_THRESH};
    use insclr::mining::{Boundaries, CandidatePool};
    let (p, n) = (POSITIVE_THRESH, NEGATIVE_THRESH);
    #[rustfmt::skip]
    let similarity = vec![
        0.9, p, next_down(p), n, next_down(n), 0.1,
        p,   p, n,            n, 0.2,          0.0,
    ];
    let pool = CandidatePool {
        n: 2,
        k: 6,
        neighbor: vec![1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        similarity,
    };
    let b = Boundaries::new(&pool, p, n);
    assert_eq!(b.pb, vec![2, 2]);
    assert_eq!(b.nb, vec![4, 4]);
}

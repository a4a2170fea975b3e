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

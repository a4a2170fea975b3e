//! The InsCLR method between descriptors and the loss: candidate pool ([`pool`]), tuples and
//! the sampler ([`tuples`]), mini-batch selection ([`selection`]), the candidate-mode grammar
//! ([`mode`]), iterative query expansion ([`select`]) and pseudo-positive mining / memory
//! sampling ([`mine`]). Similarities go through the backend's GEMM; masks, top-k and index
//! bookkeeping run on the host.

pub mod mine;
pub mod mode;
pub mod pool;
pub mod select;
pub mod selection;
pub mod tuples;

pub use mine::{mine_v2, sample_v1, Boundaries, MineConfig, Mined, Miner};
pub use mode::Mode;
pub use pool::CandidatePool;
pub use selection::{select_in_batch, SelectionRule};
pub use tuples::{AnchorSampler, Batch};

#[cfg(test)]
pub(crate) mod testutil {
    use crate::rng::Rng;

    /// Clustered unit vectors: `c` random centres, points = centre + noise, normalised.
    pub fn clustered(n: usize, d: usize, c: usize, noise: f32, seed: u64) -> Vec<f32> {
        let mut r = Rng::new(seed);
        let centres: Vec<f32> = (0..c * d).map(|_| r.normal()).collect();
        let mut x = Vec::with_capacity(n * d);
        for _ in 0..n {
            let ci = r.below(c);
            let row: Vec<f32> = (0..d)
                .map(|t| centres[ci * d + t] + noise * r.normal())
                .collect();
            let nrm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            x.extend(row.iter().map(|v| v / nrm));
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::mine::{NEGATIVE_THRESH, POSITIVE_THRESH};
    use super::testutil::clustered;
    use super::tuples::NEIGHBOR_K;
    use super::*;
    use crate::memory::IndexedBank;
    use crate::rng::Rng;
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn boundaries_use_the_largest_qualifying_column() {
        let pool = CandidatePool {
            n: 2,
            k: 6,
            neighbor: vec![1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
            similarity: vec![0.9, 0.8, 0.76, 0.6, 0.74, 0.4, 0.3, 0.2, 0.1, 0.1, 0.0, 0.0],
        };
        let b = Boundaries::new(&pool, POSITIVE_THRESH, NEGATIVE_THRESH);
        assert_eq!(b.pb, vec![3, 0]);
        assert_eq!(b.nb, vec![5, 0]);
        assert_eq!(b.candidates(&pool, 0).len(), 2);
        assert_eq!(b.hard_negatives(&pool, 1).len(), 6);
    }

    fn unit(deg: f32) -> [f32; 2] {
        let r = deg.to_radians();
        [r.cos(), r.sin()]
    }

    #[test]
    fn hand_example_duplicate_positive_goes_to_the_largest_label() {
        // Tuple label 1 = anchor 0, tuple label 2 = anchor 1; both have image 4 as an init
        // positive. Image 2 is a candidate of anchor 0 at 10 degrees from it.
        let pool = CandidatePool {
            n: 6,
            k: 3,
            neighbor: [
                [4, 2, 3],
                [4, 5, 3],
                [0, 1, 3],
                [0, 1, 2],
                [0, 1, 2],
                [0, 1, 2],
            ]
            .concat(),
            similarity: [[0.9, 0.6, 0.3], [0.8, 0.3, 0.2], [0.1, 0.1, 0.1]]
                .iter()
                .cycle()
                .take(6)
                .flatten()
                .copied()
                .collect(),
        };
        let be = crate::backend::cpu();
        let mut noda = IndexedBank::new(be, 6, 2).unwrap();
        let feats: Vec<f32> = [0.0, 90.0, 10.0, 180.0, 45.0, 270.0]
            .iter()
            .flat_map(|&a| unit(a))
            .collect();
        noda.write(be, &[0, 1, 2, 3, 4, 5], &be.upload(&feats).unwrap())
            .unwrap();
        let cfg = MineConfig {
            mode: Mode::parse("b+i_tr4_avg0.60_k05").unwrap(),
            get_size: 10,
            use_negative: true,
        };
        let miner = Miner::new(pool, POSITIVE_THRESH, NEGATIVE_THRESH, cfg);
        let m = miner
            .mine(be, &noda, &[0, 1], &[1, 2], &mut Rng::new(1))
            .unwrap();
        assert_eq!((m.init, m.selected, m.hard, m.random), (1, 1, 2, 2));
        assert_eq!(&m.indices[..4], &[4, 2, 3, 5]);
        assert_eq!(m.labels, vec![2, 1, 7, 7, 7, 7]);
        let mut rand = m.indices[4..].to_vec();
        rand.sort();
        assert_eq!(
            rand,
            vec![0, 1],
            "batch images are valid random negatives (G9)"
        );
    }

    /// One mining step on clustered data: returns the batch (after selection) and the result.
    fn step(
        miner: &Miner,
        noda: &IndexedBank,
        sampler: &mut AnchorSampler,
        seed: u64,
    ) -> (Batch, Mined) {
        let be = crate::backend::cpu();
        let mut batch = Batch::new(&miner.pool, &sampler.next_batch(), NEIGHBOR_K).unwrap();
        let g = noda.gather(be, &batch.indices).unwrap();
        select_in_batch(be, &mut batch, &g, noda.dim(), SelectionRule::Fixed(0.6)).unwrap();
        let m = miner
            .mine(be, noda, &batch.indices, &batch.labels, &mut Rng::new(seed))
            .unwrap();
        (batch, m)
    }

    #[test]
    fn mining_properties_on_clustered_data() {
        let (n, d, k) = (600, 16, 60);
        let x = clustered(n, d, 25, 0.6, 3);
        let be = crate::backend::cpu();
        let pool = CandidatePool::compute(be, &x, n, d, k, 128, &mut |_| {}).unwrap();
        // The live no-DA bank drifts from the offline pool features (another model), so
        // mini-batch selection rejects some neighbours.
        let mut r = Rng::new(17);
        let live: Vec<f32> = x
            .chunks(d)
            .flat_map(|row| {
                let v: Vec<f32> = row.iter().map(|&a| a + 0.15 * r.normal()).collect();
                let nrm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
                v.into_iter().map(move |a| a / nrm)
            })
            .collect();
        let mut noda = IndexedBank::new(be, n, d).unwrap();
        noda.write(be, &(0..n).collect::<Vec<_>>(), &be.upload(&live).unwrap())
            .unwrap();
        let cfg = MineConfig {
            mode: Mode::parse("b+i_tr4_avg0.60_k05").unwrap(),
            get_size: 400,
            use_negative: true,
        };
        let miner = Miner::new(pool, POSITIVE_THRESH, NEGATIVE_THRESH, cfg.clone());
        let mut sampler = AnchorSampler::new(n, 8, 7).unwrap();
        let (mut tot_init, mut tot_sel, mut tot_hard, mut rejected) = (0, 0, 0, 0);
        for s in 0..10 {
            let (batch, m) = step(&miner, &noda, &mut sampler, s);
            rejected += batch.labels.iter().filter(|&&t| t <= 0).count();
            let mut members: BTreeMap<i64, BTreeSet<usize>> = BTreeMap::new();
            for (&i, &t) in batch.indices.iter().zip(&batch.labels) {
                if t > 0 {
                    members.entry(t).or_default().insert(i);
                }
            }
            let npos = m.positives();
            for p in 0..m.init {
                let (j, t) = (m.indices[p], m.labels[p]);
                assert!(
                    !members[&t].contains(&j),
                    "init positive {j} is a member of tuple {t}"
                );
            }
            for p in 0..npos {
                assert!(
                    members.contains_key(&m.labels[p]),
                    "positive with unknown label"
                );
            }
            assert!(m.labels[npos..].iter().all(|&t| t == n as i64 + 1));
            let pos: BTreeSet<usize> = m.indices[..npos].iter().copied().collect();
            let neg: BTreeSet<usize> = m.indices[npos..].iter().copied().collect();
            assert_eq!(pos.len(), npos, "positives are distinct");
            assert_eq!(neg.len(), m.indices.len() - npos, "negatives are distinct");
            assert!(pos.is_disjoint(&neg), "positives and negatives overlap");
            assert_eq!(m.indices.len(), cfg.get_size.max(npos + m.hard));
            // Every hard negative comes from a kept batch image's band below the boundary.
            for &j in &m.indices[npos..npos + m.hard] {
                let from_band = batch.indices.iter().zip(&batch.labels).any(|(&i, &t)| {
                    t > 0
                        && miner
                            .bounds
                            .hard_negatives(&miner.pool, i)
                            .contains(&(j as u32))
                });
                assert!(from_band, "hard negative {j} not in any N0");
            }
            tot_init += m.init;
            tot_sel += m.selected;
            tot_hard += m.hard;
        }
        // The data must exercise every branch, or the checks above prove nothing.
        assert!(
            tot_init > 0 && tot_sel > 0 && tot_hard > 0 && rejected > 0,
            "init {tot_init} selected {tot_sel} hard {tot_hard} rejected {rejected}"
        );

        // Same seed, same result; another seed changes only the random negatives.
        let mut s1 = AnchorSampler::new(n, 8, 99).unwrap();
        let mut s2 = AnchorSampler::new(n, 8, 99).unwrap();
        let a = step(&miner, &noda, &mut s1, 5);
        let b = step(&miner, &noda, &mut s2, 5);
        assert_eq!(a, b);
        let mut s3 = AnchorSampler::new(n, 8, 99).unwrap();
        let c = step(&miner, &noda, &mut s3, 6);
        let fixed = a.1.positives() + a.1.hard;
        assert_eq!(a.1.indices[..fixed], c.1.indices[..fixed]);
        assert_ne!(a.1.indices[fixed..], c.1.indices[fixed..]);

        // Without negatives only positives come back.
        let miner_pos = Miner {
            cfg: MineConfig {
                use_negative: false,
                ..cfg.clone()
            },
            ..miner.clone()
        };
        let mut s4 = AnchorSampler::new(n, 8, 99).unwrap();
        let p = step(&miner_pos, &noda, &mut s4, 5);
        assert_eq!(p.1.indices, a.1.indices[..a.1.positives()]);
    }

    #[test]
    fn v1_sampling_skips_potential_positives_and_empty_rows() {
        let (n, d) = (300, 8);
        let x = clustered(n, d, 10, 0.3, 9);
        let be = crate::backend::cpu();
        let pool = CandidatePool::compute(be, &x, n, d, 60, 64, &mut |_| {}).unwrap();
        let mut bank = IndexedBank::new(be, n, d).unwrap();
        let written: Vec<usize> = (0..n).filter(|i| i % 3 != 0).collect();
        let feats = written
            .iter()
            .flat_map(|&i| x[i * d..(i + 1) * d].to_vec())
            .collect::<Vec<_>>();
        bank.write(be, &written, &be.upload(&feats).unwrap())
            .unwrap();
        let batch = [1usize, 2, 4];
        let m = sample_v1(&pool, &bank, &batch, 50, 1000, &mut Rng::new(4)).unwrap();
        let excl: BTreeSet<u32> = batch
            .iter()
            .flat_map(|&i| pool.neighbors(i)[..50].to_vec())
            .collect();
        let want = written
            .iter()
            .filter(|&&j| !excl.contains(&(j as u32)))
            .count();
        assert_eq!(
            m.len(),
            want,
            "all eligible rows when get_size exceeds them"
        );
        assert!(m.iter().all(|&j| j % 3 != 0 && !excl.contains(&(j as u32))));
        let small = sample_v1(&pool, &bank, &batch, 50, 10, &mut Rng::new(4)).unwrap();
        assert_eq!(small.len(), 10);
        assert_eq!(
            small,
            sample_v1(&pool, &bank, &batch, 50, 10, &mut Rng::new(4)).unwrap()
        );
    }
}

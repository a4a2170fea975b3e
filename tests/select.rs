//! The select family (kernels/select.cu) against its CPU twin, on the GPU or the emulated GPU:
//! row-wise top-k and the streamed nearest-neighbour search. FAISS's rule, made stricter by our
//! deterministic tie order: values must be equal exactly, and so must the indices (equal scores
//! go to the lower index on every backend). Inputs are small integers where ties matter, so
//! every backend computes the very same scores.

mod common;

use common::{kernel_device, upload_as};
use insclr::backend::{Backend, DType, Knn, TopK};
use insclr::rng::Rng;

/// Scores and indices of a top-k on `be`, slots past the candidates included.
type Top = (Vec<u32>, Vec<u32>);

fn topk_on(be: &dyn Backend, scores: &[f32], s: TopK) -> Top {
    let x = be.upload(scores).unwrap();
    let mut val = be.upload(&vec![f32::NAN; s.rows * s.k]).unwrap();
    let mut idx = be.upload(&vec![7u32; s.rows * s.k]).unwrap();
    be.topk(&x, &mut val, &mut idx, s).unwrap();
    let val: Vec<f32> = be.download(&val).unwrap();
    (
        val.iter().map(|v| v.to_bits()).collect(),
        be.download(&idx).unwrap(),
    )
}

#[test]
fn kernel_topk_matches_cpu() {
    let dev = kernel_device("kernel_topk_matches_cpu");
    let mut rng = Rng::new(31);
    // Around the block's 256 threads and the 1024 cap; k = n, n < k.
    let cases: &[(usize, usize, &[usize])] = &[
        (3, 1, &[1, 4]),
        (2, 255, &[1, 7, 255, 300]),
        (2, 256, &[128, 256]),
        (2, 257, &[1, 256, 257]),
        (1, 1000, &[500, 1000, 1024]),
        (4, 3000, &[1, 1023, 1024]),
    ];
    for &(rows, n, ks) in cases {
        for ties in [false, true] {
            // Few distinct values (ties everywhere, negatives included, +0 and -0 apart), or
            // continuous ones.
            let scores: Vec<f32> = (0..rows * n)
                .map(|_| {
                    if ties {
                        [-0.0, 0.0, 1.0, -1.0, 2.0, f32::INFINITY][rng.below(6)]
                    } else {
                        rng.uniform_f32(-1.0, 1.0)
                    }
                })
                .collect();
            for &k in ks {
                let s = TopK { rows, n, k };
                let want = topk_on(insclr::backend::cpu(), &scores, s);
                let got = topk_on(&dev, &scores, s);
                assert_eq!(got, want, "rows {rows} n {n} k {k} ties {ties}");
                // The benchmark's baseline (a full sort of each row) must agree too.
                let be: &dyn Backend = &dev;
                let x = be.upload(&scores).unwrap();
                let mut val = be.upload(&vec![f32::NAN; rows * k]).unwrap();
                let mut idx = be.upload(&vec![7u32; rows * k]).unwrap();
                dev.topk_by_sort(&x, &mut val, &mut idx, s).unwrap();
                let val: Vec<f32> = be.download(&val).unwrap();
                let sorted: Top = (
                    val.iter().map(|v| v.to_bits()).collect(),
                    be.download(&idx).unwrap(),
                );
                assert_eq!(
                    sorted, want,
                    "sort baseline: rows {rows} n {n} k {k} ties {ties}"
                );
            }
        }
    }
}

/// (scores as bits, indices) of a search on `be` with descriptors stored as `dt`.
fn knn_on(
    be: &dyn Backend,
    q: &[f32],
    db: &[f32],
    exclude: Option<&[i64]>,
    s: Knn,
    dt: DType,
) -> Top {
    let (qb, dbb) = (
        upload_as(be, q, dt).unwrap(),
        upload_as(be, db, dt).unwrap(),
    );
    let x = exclude.map(|x| be.upload(x).unwrap());
    let mut val = be.upload(&vec![f32::NAN; s.nq * s.k]).unwrap();
    let mut idx = be.upload(&vec![7u32; s.nq * s.k]).unwrap();
    be.knn(&qb, &dbb, x.as_ref(), &mut val, &mut idx, s)
        .unwrap();
    let val: Vec<f32> = be.download(&val).unwrap();
    (
        val.iter().map(|v| v.to_bits()).collect(),
        be.download(&idx).unwrap(),
    )
}

#[test]
fn kernel_knn_matches_cpu() {
    let dev = kernel_device("kernel_knn_matches_cpu");
    let mut rng = Rng::new(32);
    // Small integer components: every dot product is exact on every backend, and ties abound.
    let (nq, ndb, dim) = (19, 300, 6);
    let ints = |rng: &mut Rng, n: usize| -> Vec<f32> {
        (0..n).map(|_| rng.below(5) as f32 - 2.0).collect()
    };
    let q = ints(&mut rng, nq * dim);
    let db = ints(&mut rng, ndb * dim);
    let diagonal: Vec<i64> = (0..nq as i64).collect();
    let mixed: Vec<i64> = (0..nq)
        .map(|r| if r % 3 == 0 { -1 } else { (r * 7 % ndb) as i64 })
        .collect();
    // A one-row tile merges 300 times: small k there (the emulator runs every merge in full
    // until the list fills); large k with the tiles around the kernel's block width.
    let cases: &[(usize, &[usize])] = &[
        (1, &[1, 5]),
        (64, &[1, 256, 301]),
        (255, &[299, 300]),
        (300, &[5, 300]),
        (1000, &[1, 256]),
    ];
    for &(tile, ks) in cases {
        for &k in ks {
            for exclude in [None, Some(&diagonal[..]), Some(&mixed[..])] {
                let s = Knn {
                    nq,
                    ndb,
                    dim,
                    k,
                    tile,
                };
                // Small integers are exact in bf16 too: the tensor-core search must agree.
                for dt in [DType::F32, DType::BF16] {
                    if dt == DType::BF16 && tile < 64 {
                        continue; // 300 tensor-core GEMMs: slow on the emulator, no new path
                    }
                    let want = knn_on(insclr::backend::cpu(), &q, &db, exclude, s, dt);
                    let got = knn_on(&dev, &q, &db, exclude, s, dt);
                    let ex = exclude.map(|x| x[1]);
                    assert_eq!(got, want, "{dt} tile {tile} k {k} exclude {ex:?}");
                }
            }
        }
    }
    // An empty database: every slot is past the candidates.
    let s = Knn {
        nq: 2,
        ndb: 0,
        dim,
        k: 3,
        tile: 4,
    };
    let got = knn_on(&dev, &q[..2 * dim], &[], None, s, DType::F32);
    assert_eq!(got.0, vec![f32::NEG_INFINITY.to_bits(); 6]);
    assert_eq!(got.1, vec![u32::MAX; 6]);
}

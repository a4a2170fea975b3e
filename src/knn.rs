//! Exact inner-product nearest neighbours, streamed in tiles: the one top-k search behind the
//! candidate pool (`mining::pool`) and retrieval ranking (`eval::rank`).
//!
//! Queries are scored against the database one `query_block x db_tile` block at a time by the
//! backend's streamed search (`Backend::knn`: our GEMM and a running top-k per query on CUDA,
//! the CPU GEMM and a heap per query on the CPU). Per query only a running top-k survives a
//! block, so memory is O(query_block * db_tile + nq * k) beyond the uploaded descriptors: the
//! `nq x ndb` score matrix never exists. Order is deterministic: score descending, then
//! database index ascending.

use crate::backend::{Backend, Buf, DType, Knn, MatMul};
use anyhow::{bail, Result};

/// How a search runs: tile sizes of the streaming loops and the descriptors' storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiling {
    /// Queries per matmul.
    pub query_block: usize,
    /// Database rows per matmul.
    pub db_tile: usize,
    /// Storage of the descriptors on the backend: f32, or bf16 (rounded to nearest even: half
    /// the memory, tensor cores on a GPU; scores within bf16 rounding of each other may swap).
    pub dtype: DType,
}

impl Default for Tiling {
    /// 512 queries x 2048 database rows: a 4 MiB score block, which stays in cache between the
    /// matmul that writes it and the top-k scan that reads it (measured fastest of 256..1024 x
    /// 2048..16384 for the 100k x 128 pool on the 2-core CPU machine).
    fn default() -> Self {
        Tiling {
            query_block: 512,
            db_tile: 2048,
            dtype: DType::F32,
        }
    }
}

/// Descriptor matrices of one search: `nq x dim` queries and `ndb x dim` database rows.
#[derive(Clone, Copy)]
pub struct Pair<'a> {
    /// Row-major `nq x dim` query descriptors.
    pub queries: &'a [f32],
    /// Row-major `ndb x dim` database descriptors.
    pub db: &'a [f32],
    /// Descriptor length.
    pub dim: usize,
}

impl Pair<'_> {
    /// `(nq, ndb)`, or an error when `dim` does not divide both matrices.
    pub fn sizes(&self) -> Result<(usize, usize)> {
        let d = self.dim;
        if d == 0 || self.queries.len() % d != 0 || self.db.len() % d != 0 {
            bail!(
                "descriptors: dim {d} does not divide the query ({}) and database ({}) element counts; both must be N x {d}",
                self.queries.len(),
                self.db.len()
            );
        }
        Ok((self.queries.len() / d, self.db.len() / d))
    }

    /// An error naming the first non-finite descriptor value, query or database side.
    pub fn check_finite(&self) -> Result<()> {
        for (side, m) in [("query", self.queries), ("database", self.db)] {
            if let Some(p) = m.iter().position(|v| !v.is_finite()) {
                bail!(
                    "{side} descriptor row {} has a non-finite value ({}) at column {}; re-extract it",
                    p / self.dim.max(1),
                    m[p],
                    p % self.dim.max(1)
                );
            }
        }
        Ok(())
    }
}

/// Which database row, if any, each query must not return.
#[derive(Clone, Copy, Debug)]
pub enum Exclude<'a> {
    /// Every database row is a candidate.
    Nothing,
    /// Query `i` skips database row `i` (a set searched against itself; needs `nq <= ndb`).
    Diagonal,
    /// Query `i` skips database row `skip[i]` (one entry per query, each `< ndb`).
    PerQuery(&'a [usize]),
    /// A shifted diagonal, for a block of a set's rows searched against a shard of the same set
    /// (a rank's share, [`crate::dist::shard`]): query `i` skips database row `i + shift` when
    /// there is one. `k` is capped at `ndb - 1` as with [`Exclude::Diagonal`].
    ShiftedDiagonal(isize),
}

impl Exclude<'_> {
    fn check(&self, nq: usize, ndb: usize) -> Result<()> {
        match *self {
            Exclude::Nothing => {}
            Exclude::Diagonal if nq > ndb => bail!(
                "self exclusion needs a database row per query: {nq} queries, {ndb} database rows"
            ),
            Exclude::Diagonal | Exclude::ShiftedDiagonal(_) => {}
            Exclude::PerQuery(skip) => {
                if skip.len() != nq {
                    bail!(
                        "{} excluded indices for {nq} queries; give one per query",
                        skip.len()
                    );
                }
                if let Some((q, &j)) = skip.iter().enumerate().find(|(_, &j)| j >= ndb) {
                    bail!("query {q}: excluded database index {j} is out of range (database has {ndb} rows)");
                }
            }
        }
        Ok(())
    }

    fn of(&self, q: usize) -> Option<usize> {
        match *self {
            Exclude::Nothing => None,
            Exclude::Diagonal => Some(q),
            Exclude::PerQuery(skip) => Some(skip[q]),
            Exclude::ShiftedDiagonal(shift) => usize::try_from(q as isize + shift).ok(),
        }
    }

    fn is_some(&self) -> bool {
        !matches!(self, Exclude::Nothing)
    }
}

/// The result of [`top_k`]: `k` neighbours per query, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Neighbors {
    /// Neighbours per query: the requested k, capped by the candidates there are.
    pub k: usize,
    /// `nq x k` database indices, row-major, best first.
    pub index: Vec<u32>,
    /// `nq x k` scores (the matmul's dot products) matching `index`.
    pub score: Vec<f32>,
}

impl Neighbors {
    /// Database indices of query `q`'s neighbours, best first.
    pub fn indices(&self, q: usize) -> &[u32] {
        &self.index[q * self.k..(q + 1) * self.k]
    }

    /// Scores of query `q`'s neighbours, best first.
    pub fn scores(&self, q: usize) -> &[f32] {
        &self.score[q * self.k..(q + 1) * self.k]
    }
}

/// The `k` best of neighbour lists found over disjoint shards of one database, by score
/// descending then index ascending: exactly what one search over the whole database finds,
/// provided every shard's list holds its `k` best. `index` and `score` are the shards' lists
/// one after another (each `nq x k`, indices already global), as an all-gather returns them.
pub fn merge(index: &[u32], score: &[f32], nq: usize, k: usize) -> Neighbors {
    let parts = index.len() / (nq * k).max(1);
    let mut out = Neighbors {
        k,
        index: Vec::with_capacity(nq * k),
        score: Vec::with_capacity(nq * k),
    };
    for q in 0..nq {
        let mut row: Vec<(f32, u32)> = (0..parts)
            .flat_map(|p| {
                (p * nq * k + q * k..p * nq * k + (q + 1) * k).map(|e| (score[e], index[e]))
            })
            .collect();
        row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(v, j) in row.iter().take(k) {
            out.score.push(v);
            out.index.push(j);
        }
    }
    out
}

/// Calls `visit(q0, j0, scores, nqb, nt)` for every block, database tiles in ascending order:
/// `scores` is the row-major `nqb x nt` similarity block of queries `q0..q0+nqb` against
/// database rows `j0..j0+nt`. Queries are uploaded once; each database tile once.
pub fn for_each_tile(
    be: &dyn Backend,
    pair: Pair,
    tiling: Tiling,
    mut visit: impl FnMut(usize, usize, &[f32], usize, usize),
) -> Result<()> {
    let (nq, ndb) = pair.sizes()?;
    let d = pair.dim;
    let (qb, tb) = (tiling.query_block.max(1), tiling.db_tile.max(1));
    let qbufs = (0..nq)
        .step_by(qb)
        .map(|q0| {
            let n = qb.min(nq - q0);
            Ok((q0, n, be.upload(&pair.queries[q0 * d..(q0 + n) * d])?))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut s = Buf::empty(DType::F32);
    for j0 in (0..ndb).step_by(tb) {
        let nt = tb.min(ndb - j0);
        let dbuf = be.upload(&pair.db[j0 * d..(j0 + nt) * d])?;
        for (q0, n, qbuf) in &qbufs {
            // Only the short last block changes the size; a full block reuses the buffer.
            if s.len() != n * nt {
                s = be.zeros(DType::F32, n * nt)?;
            }
            be.matmul(qbuf, &dbuf, &mut s, MatMul::new(*n, nt, d).tb())?;
            // Host buffers are read in place: copying every block would move 4 * nq * ndb bytes.
            let host = be.host_view::<f32>(&s)?;
            visit(*q0, j0, &host, *n, nt);
        }
    }
    Ok(())
}

/// The `k` highest-scoring database rows of every query, best first (score desc, index asc),
/// skipping the rows `exclude` names. `k` is capped by the candidates each query has (`ndb`,
/// or `ndb - 1` with an exclusion). The database is uploaded once; each block of
/// `tiling.query_block` queries is one `Backend::knn` call (streamed over `tiling.db_tile`
/// database rows at a time), after which `progress` is told how many queries it finished.
pub fn top_k(
    be: &dyn Backend,
    pair: Pair,
    k: usize,
    exclude: Exclude,
    tiling: Tiling,
    progress: &mut dyn FnMut(usize),
) -> Result<Neighbors> {
    let (nq, ndb) = pair.sizes()?;
    if ndb > u32::MAX as usize {
        bail!("top-k: {ndb} database rows exceed the u32 index range; split the database");
    }
    exclude.check(nq, ndb)?;
    pair.check_finite()?;
    let k = k.min(ndb - usize::from(exclude.is_some() && ndb > 0));
    let mut score = vec![0f32; nq * k];
    let mut index = vec![0u32; nq * k];
    if k == 0 {
        progress(nq);
        return Ok(Neighbors { k, index, score });
    }
    let d = pair.dim;
    let upload = |v: &[f32]| -> Result<Buf> {
        match tiling.dtype {
            DType::BF16 => be.upload(
                &v.iter()
                    .map(|&x| half::bf16::from_f32(x))
                    .collect::<Vec<_>>(),
            ),
            DType::F32 => be.upload(v),
            other => bail!("top-k: descriptors are stored as f32 or bf16, not {other}"),
        }
    };
    let db = upload(pair.db)?;
    let qb = tiling.query_block.max(1);
    let (mut val, mut idx) = (Buf::empty(DType::F32), Buf::empty(DType::U32));
    for q0 in (0..nq).step_by(qb) {
        let n = qb.min(nq - q0);
        let q = upload(&pair.queries[q0 * d..(q0 + n) * d])?;
        let skip = match exclude {
            Exclude::Nothing => None,
            _ => {
                let x: Vec<i64> = (q0..q0 + n)
                    .map(|r| exclude.of(r).map_or(-1, |j| j as i64))
                    .collect();
                Some(be.upload(&x)?)
            }
        };
        // Only the short last block changes the size; a full block reuses the buffers.
        if val.len() != n * k {
            val = be.zeros(DType::F32, n * k)?;
            idx = be.zeros(DType::U32, n * k)?;
        }
        let shape = Knn {
            nq: n,
            ndb,
            dim: d,
            k,
            tile: tiling.db_tile.max(1),
        };
        be.knn(&q, &db, skip.as_ref(), &mut val, &mut idx, shape)?;
        score[q0 * k..(q0 + n) * k].copy_from_slice(&be.host_view::<f32>(&val)?);
        index[q0 * k..(q0 + n) * k].copy_from_slice(&be.host_view::<u32>(&idx)?);
        progress(n);
    }
    if let Some(p) = score.iter().position(|v| !v.is_finite()) {
        bail!(
            "top-k: query {} scores {} against database row {}: the dot product overflowed f32; \
             normalise the descriptors",
            p / k,
            score[p],
            index[p]
        );
    }
    Ok(Neighbors { k, index, score })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The reference: one full `nq x ndb` matmul (the same GEMM, so the same scores), then a
    /// full sort by (score desc, index asc) of every row minus its excluded column.
    fn brute(pair: Pair, k: usize, exclude: Exclude) -> Neighbors {
        let be = crate::backend::cpu();
        let (nq, ndb) = pair.sizes().unwrap();
        let mut s = be.zeros(DType::F32, nq * ndb).unwrap();
        let (a, b) = (
            be.upload(pair.queries).unwrap(),
            be.upload(pair.db).unwrap(),
        );
        be.matmul(&a, &b, &mut s, MatMul::new(nq, ndb, pair.dim).tb())
            .unwrap();
        let s = be.download::<f32>(&s).unwrap();
        let k = k.min(ndb - usize::from(exclude.is_some()));
        let (mut index, mut score) = (Vec::new(), Vec::new());
        for q in 0..nq {
            let mut row: Vec<(f32, u32)> = (0..ndb)
                .filter(|&j| exclude.of(q) != Some(j))
                .map(|j| (s[q * ndb + j], j as u32))
                .collect();
            row.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(v, j) in &row[..k] {
                score.push(v);
                index.push(j);
            }
        }
        Neighbors { k, index, score }
    }

    fn search(pair: Pair, k: usize, exclude: Exclude, tiling: Tiling) -> Neighbors {
        let mut told = 0;
        let got = top_k(crate::backend::cpu(), pair, k, exclude, tiling, &mut |t| {
            told += t
        })
        .unwrap();
        assert_eq!(told, pair.sizes().unwrap().0, "progress must sum to nq");
        got
    }

    fn tilings() -> [Tiling; 4] {
        [
            Tiling::default(),
            Tiling {
                query_block: 1,
                db_tile: 1,
                ..Tiling::default()
            },
            // Neither divides the sizes below: short last blocks in both dimensions.
            Tiling {
                query_block: 7,
                db_tile: 13,
                ..Tiling::default()
            },
            Tiling {
                query_block: 16,
                db_tile: 64,
                ..Tiling::default()
            },
        ]
    }

    #[test]
    fn random_inputs_equal_a_full_sort_for_every_tiling_and_k() {
        let mut rng = Rng::new(3);
        let (nq, ndb, d) = (23, 101, 9);
        let q = rng.vec_f32(nq * d, -1.0, 1.0);
        let db = rng.vec_f32(ndb * d, -1.0, 1.0);
        let pair = Pair {
            queries: &q,
            db: &db,
            dim: d,
        };
        for k in [1, 2, 10, 50, ndb - 1, ndb, ndb + 5] {
            let want = brute(pair, k, Exclude::Nothing);
            assert_eq!(want.k, k.min(ndb));
            for t in tilings() {
                assert_eq!(
                    search(pair, k, Exclude::Nothing, t),
                    want,
                    "k {k} tiling {t:?}"
                );
            }
        }
    }

    #[test]
    fn ties_resolve_by_lower_index_across_tiles() {
        // Small integers: every dot product is exact, so ties are real ties. Many database
        // rows share each score, spread over different tiles.
        let mut rng = Rng::new(8);
        let (nq, ndb, d) = (9, 150, 3);
        let q: Vec<f32> = (0..nq * d).map(|_| rng.below(3) as f32 - 1.0).collect();
        let db: Vec<f32> = (0..ndb * d).map(|_| rng.below(3) as f32 - 1.0).collect();
        let pair = Pair {
            queries: &q,
            db: &db,
            dim: d,
        };
        for k in [1, 5, 40, 149, 150] {
            let want = brute(pair, k, Exclude::Nothing);
            for t in tilings() {
                let got = search(pair, k, Exclude::Nothing, t);
                assert_eq!(got, want, "k {k} tiling {t:?}");
            }
        }
        // A hand-made case: every row ties, so the answer is the index order.
        let ones = vec![1.0f32; 6 * 2];
        let pair = Pair {
            queries: &ones[..2],
            db: &ones,
            dim: 2,
        };
        let t = Tiling {
            query_block: 1,
            db_tile: 4,
            ..Tiling::default()
        };
        let got = search(pair, 3, Exclude::Nothing, t);
        assert_eq!(got.index, vec![0, 1, 2]);
        assert_eq!(got.score, vec![2.0; 3]);
    }

    #[test]
    fn exclusion_removes_exactly_one_row_per_query() {
        let mut rng = Rng::new(21);
        let (n, d) = (61, 4);
        let x: Vec<f32> = (0..n * d).map(|_| rng.below(5) as f32 - 2.0).collect();
        let pair = Pair {
            queries: &x,
            db: &x,
            dim: d,
        };
        let skip: Vec<usize> = (0..n).map(|q| (q * 7 + 3) % n).collect();
        for k in [1, 8, n - 1, n + 3] {
            for ex in [Exclude::Diagonal, Exclude::PerQuery(&skip)] {
                let want = brute(pair, k, ex);
                assert_eq!(want.k, k.min(n - 1));
                for t in tilings() {
                    let got = search(pair, k, ex, t);
                    assert_eq!(got, want, "k {k} {ex:?} tiling {t:?}");
                    for q in 0..n {
                        let x = ex.of(q).unwrap() as u32;
                        assert!(!got.indices(q).contains(&x), "row {q} kept {x}");
                    }
                }
            }
        }
        // With k = n - 1 every row holds all other rows: a permutation without the excluded one.
        let got = search(pair, n - 1, Exclude::Diagonal, Tiling::default());
        for q in 0..n {
            let mut idx = got.indices(q).to_vec();
            idx.sort_unstable();
            let want: Vec<u32> = (0..n as u32).filter(|&j| j != q as u32).collect();
            assert_eq!(idx, want);
        }
    }

    #[test]
    fn bad_sizes_and_values_are_clear_errors() {
        let be = crate::backend::cpu();
        let x = vec![0.5f32; 12];
        let t = Tiling::default();
        let run = |pair: Pair, ex: Exclude| {
            let e = top_k(be, pair, 2, ex, t, &mut |_| {}).unwrap_err();
            format!("{e:#}")
        };
        let ok = Pair {
            queries: &x[..8],
            db: &x,
            dim: 4,
        };
        let e = run(Pair { dim: 5, ..ok }, Exclude::Nothing);
        assert!(e.contains("dim 5 does not divide"), "{e}");
        let e = run(
            Pair {
                queries: &x,
                db: &x[..8],
                dim: 4,
            },
            Exclude::Diagonal,
        );
        assert!(e.contains("3 queries, 2 database rows"), "{e}");
        let e = run(ok, Exclude::PerQuery(&[0]));
        assert!(e.contains("1 excluded indices for 2 queries"), "{e}");
        let e = run(ok, Exclude::PerQuery(&[0, 3]));
        assert!(e.contains("query 1: excluded database index 3"), "{e}");
        let mut bad = x.clone();
        bad[9] = f32::NAN;
        let e = run(
            Pair {
                queries: &x[..4],
                db: &bad,
                dim: 4,
            },
            Exclude::Nothing,
        );
        assert!(
            e.contains("database descriptor row 2 has a non-finite value"),
            "{e}"
        );
        let big = vec![3e19f32; 8];
        let e = run(
            Pair {
                queries: &big,
                db: &big,
                dim: 4,
            },
            Exclude::Nothing,
        );
        assert!(e.contains("overflowed"), "{e}");
    }

    #[test]
    fn empty_database_or_zero_k_gives_empty_rows() {
        let x = vec![1.0f32; 8];
        let pair = Pair {
            queries: &x,
            db: &[],
            dim: 4,
        };
        let got = search(pair, 5, Exclude::Nothing, Tiling::default());
        assert_eq!((got.k, got.index.len()), (0, 0));
        let pair = Pair { db: &x, ..pair };
        let got = search(pair, 0, Exclude::Nothing, Tiling::default());
        assert_eq!((got.k, got.index.len()), (0, 0));
    }
}

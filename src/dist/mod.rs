//! Data parallelism: a job split over ranks (one per GPU, or threads on the CPU) that meet at
//! collectives. Every rank runs the same program on its [`shard`] of the work; what must be
//! whole (a step's descriptors, the parameter gradients, a descriptor matrix, a pool) is put
//! together by the [`Collective`] the ranks share:
//!
//! - [`Solo`]: one rank; every collective is the identity, so a single-GPU run takes the same
//!   path as before, bit for bit.
//! - [`threads::ThreadGroup`]: ranks as threads of one process, on `--device cpu` or `emu`
//!   (`--gpus N` there). Sums are added in rank order, so results are reproducible; a rank that
//!   fails stops the others at their next collective with an error naming it.
//! - [`nccl::NcclGroup`]: one process per GPU over NCCL, loaded at run time; the ranks find
//!   each other through [`rendezvous`], launched by `--gpus N` ([`launch`]) or by a cluster's
//!   launcher (`srun`, `torchrun`).

pub mod launch;
pub mod nccl;
pub mod rank_env;
pub mod rendezvous;
pub mod threads;

use crate::backend::{Backend, Buf, DType};
use anyhow::{bail, Result};
use std::ops::Range;

/// What the ranks of one job share: who this rank is, and the collectives. Every rank must
/// call the same collectives in the same order.
pub trait Collective: Send + Sync {
    /// This rank, `0..world()`; rank 0 writes the job's files.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn world(&self) -> usize;
    /// Every rank's `part` (lengths may differ), by rank.
    fn all_gather_bytes(&self, part: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// `x` becomes the element-wise sum of every rank's `x`, added in rank order (the same
    /// bits on every rank).
    fn all_reduce_sum(&self, x: &mut [f32]) -> Result<()>;
    /// `x` becomes rank `root`'s `x` (the same length on every rank).
    fn broadcast(&self, x: &mut [f32], root: usize) -> Result<()>;
    /// [`Collective::all_reduce_sum`] of f32 buffers of `be` (a model's gradients): through
    /// the host, in buckets of about [`BUCKET_BYTES`], one collective a bucket.
    fn all_reduce_bufs(&self, be: &dyn Backend, bufs: &mut [&mut Buf]) -> Result<()> {
        in_buckets(be, bufs, "all-reduce", |x| self.all_reduce_sum(x))
    }
    /// [`Collective::broadcast`] of f32 buffers of `be`, in buckets as
    /// [`Collective::all_reduce_bufs`].
    fn broadcast_bufs(&self, be: &dyn Backend, bufs: &mut [&mut Buf], root: usize) -> Result<()> {
        in_buckets(be, bufs, "broadcast", |x| self.broadcast(x, root))
    }
    /// This rank failed with `why`: every other rank's current or next collective returns an
    /// error naming it instead of waiting for it.
    fn abort(&self, why: &str);
}

/// About how many bytes of buffers one collective of [`Collective::all_reduce_bufs`] carries
/// (PyTorch DDP's bucket): a ResNet-101's 187 MB of gradients go in 8 collectives, not 314.
pub const BUCKET_BYTES: usize = 25 << 20;

/// Applies `exchange` to consecutive runs of `bufs` of about [`BUCKET_BYTES`], each staged on
/// the host as one slice.
fn in_buckets(
    be: &dyn Backend,
    bufs: &mut [&mut Buf],
    what: &str,
    mut exchange: impl FnMut(&mut [f32]) -> Result<()>,
) -> Result<()> {
    if let Some(b) = bufs.iter().find(|b| b.dtype() != DType::F32) {
        bail!(
            "{what} of a {} buffer: only f32 buffers are exchanged",
            b.dtype()
        );
    }
    let mut start = 0;
    while start < bufs.len() {
        let (mut end, mut bytes) = (start, 0);
        while end < bufs.len() && (end == start || bytes + 4 * bufs[end].len() <= BUCKET_BYTES) {
            bytes += 4 * bufs[end].len();
            end += 1;
        }
        let mut host = Vec::with_capacity(bytes / 4);
        for b in &bufs[start..end] {
            host.extend(be.download::<f32>(b)?);
        }
        exchange(&mut host)?;
        let mut at = 0;
        for b in &mut bufs[start..end] {
            let n = b.len();
            be.upload_into(&host[at..at + n], b)?;
            at += n;
        }
        start = end;
    }
    Ok(())
}

/// One rank: the job is not split.
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_gather_bytes(&self, part: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![part.to_vec()])
    }
    fn all_reduce_sum(&self, _: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _: &mut [f32], _: usize) -> Result<()> {
        Ok(())
    }
    fn all_reduce_bufs(&self, _: &dyn Backend, _: &mut [&mut Buf]) -> Result<()> {
        Ok(())
    }
    fn broadcast_bufs(&self, _: &dyn Backend, _: &mut [&mut Buf], _: usize) -> Result<()> {
        Ok(())
    }
    fn abort(&self, _: &str) {}
}

/// Rank `rank`'s items of `n` split over `world` ranks: contiguous, in order, the first
/// `n % world` ranks one item more (a rank gets none only when `n < world`).
pub fn shard(n: usize, rank: usize, world: usize) -> Range<usize> {
    let (base, extra) = (n / world, n % world);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// Every rank's `part`, concatenated in rank order (the ranks share one byte order: x86-64
/// and aarch64 are both little-endian).
pub fn all_gather<T: bytemuck::Pod>(c: &dyn Collective, part: &[T]) -> Result<Vec<T>> {
    let parts = c.all_gather_bytes(bytemuck::cast_slice(part))?;
    Ok(bytemuck::pod_collect_to_vec(&parts.concat()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_items_in_order_and_differ_by_at_most_one() {
        for world in 1..6 {
            for n in 0..13 {
                let parts: Vec<_> = (0..world).map(|r| shard(n, r, world)).collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[world - 1].end, n);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() == w[1].len() || w[0].len() == w[1].len() + 1);
                }
            }
        }
        assert_eq!(shard(5, 0, 2), 0..3);
        assert_eq!(shard(5, 1, 2), 3..5);
        assert_eq!(shard(1, 1, 2), 1..1);
    }

    #[test]
    fn one_rank_gathers_and_reduces_to_itself() {
        let mut x = vec![1.0f32, 2.0];
        Solo.all_reduce_sum(&mut x).unwrap();
        Solo.broadcast(&mut x, 0).unwrap();
        assert_eq!(x, [1.0, 2.0]);
        assert_eq!(all_gather(&Solo, &x).unwrap(), x);
    }
}

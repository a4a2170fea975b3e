//! The collectives of ranks in separate processes, one GPU each: NCCL, loaded at run time
//! (`libnccl.so.2`, like libcuda and libcublas: the binary builds and runs without it, and
//! only a multi-process launch asks for it).
//!
//! The exchanged values travel through device buffers of the rank's GPU: host -> device,
//! the NCCL collective, device -> host. For a step's descriptors that is a few MB; for
//! ResNet-101's gradients (in 25 MB buckets) 187 MB each way per step over PCIe, on top of the
//! backend's own download and upload: about 30 ms a step at 25 GB/s, which reducing the
//! backend's device buffers directly would remove (docs/multi-gpu.md has the arithmetic).
//! NCCL's sums are the same bits on every rank (each element is reduced once and
//! broadcast), though not added in rank order.

use super::rank_env::RankEnv;
use super::rendezvous;
use super::Collective;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{CudaContext, CudaStream};
use cudarc::nccl::safe::{Comm, Id, ReduceOp};
use std::sync::Arc;
use std::time::Duration;

/// One process's rank in an NCCL communicator.
pub struct NcclGroup {
    comm: Comm,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
}

// SAFETY: the communicator is used by one thread at a time (the rank's job calls the
// collectives in order); NCCL communicators may move between threads.
unsafe impl Send for NcclGroup {}
// SAFETY: as above; no collective of one rank runs concurrently with another of the same rank.
unsafe impl Sync for NcclGroup {}

/// True when libnccl can be loaded.
pub fn nccl_present() -> bool {
    // SAFETY: only tries to dlopen libnccl; no NCCL call is made.
    unsafe { cudarc::nccl::sys::is_culib_present() }
}

impl NcclGroup {
    /// Joins the job `env` describes on GPU `env.gpu`: rank 0 makes NCCL's id and
    /// shares it through [`rendezvous::share`], then every rank joins the communicator.
    pub fn connect(env: &RankEnv, timeout: Duration) -> Result<NcclGroup> {
        if !crate::backend::cuda::driver_present() {
            bail!(
                "rank {}: no CUDA driver (libcuda.so.1): ranks launched as processes run on GPUs",
                env.rank
            );
        }
        if !nccl_present() {
            bail!("rank {}: libnccl.so.2 not found; install NCCL (`pip install nvidia-nccl-cu13` puts it in site-packages/nvidia/nccl/lib) and add its folder to LD_LIBRARY_PATH", env.rank);
        }
        let ctx = CudaContext::new(env.gpu).map_err(|e| {
            anyhow!(
                "rank {}: opening GPU {} (its local rank, or 0 where it sees one GPU): {e}",
                env.rank,
                env.gpu
            )
        })?;
        let stream = ctx.default_stream();
        let id = if env.rank == 0 {
            let id = Id::new().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))?;
            Some(id.internal().iter().map(|&c| c as u8).collect::<Vec<u8>>())
        } else {
            None
        };
        let shared = rendezvous::share(&env.master, env.rank, env.world, id.as_deref(), timeout)?;
        let internal: [std::ffi::c_char; 128] = shared
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| anyhow!("rank 0 sent a {}-byte NCCL id, not 128", shared.len()))?;
        let comm = Comm::from_rank(stream.clone(), env.rank, env.world, Id::uninit(internal))
            .map_err(|e| {
                anyhow!(
                    "rank {}: ncclCommInitRank over {} ranks: {e:?}",
                    env.rank,
                    env.world
                )
            })?;
        Ok(NcclGroup {
            comm,
            stream,
            rank: env.rank,
            world: env.world,
        })
    }

    fn gather_u8(&self, part: &[u8]) -> Result<Vec<u8>> {
        let s = &self.stream;
        let send = s.clone_htod(part).context("NCCL all-gather: upload")?;
        let mut recv = s
            .alloc_zeros::<u8>(part.len() * self.world)
            .context("NCCL all-gather: buffer")?;
        self.comm
            .all_gather(&send, &mut recv)
            .map_err(|e| anyhow!("ncclAllGather: {e:?}"))?;
        s.clone_dtoh(&recv).context("NCCL all-gather: download")
    }
}

impl Collective for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_gather_bytes(&self, part: &[u8]) -> Result<Vec<Vec<u8>>> {
        // NCCL gathers equal parts: the lengths first, then every part padded to the longest.
        let lens = self.gather_u8(&(part.len() as u64).to_le_bytes())?;
        let lens: Vec<usize> = lens
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
            .collect();
        let longest = lens.iter().copied().max().unwrap_or(0);
        let mut padded = part.to_vec();
        padded.resize(longest, 0);
        let all = self.gather_u8(&padded)?;
        Ok(lens
            .iter()
            .enumerate()
            .map(|(r, &n)| all[r * longest..r * longest + n].to_vec())
            .collect())
    }
    fn all_reduce_sum(&self, x: &mut [f32]) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let mut buf = s.clone_htod(&*x).context("NCCL all-reduce: upload")?;
        self.comm
            .all_reduce_in_place(&mut buf, &ReduceOp::Sum)
            .map_err(|e| anyhow!("ncclAllReduce: {e:?}"))?;
        s.memcpy_dtoh(&buf, x).context("NCCL all-reduce: download")
    }
    fn broadcast(&self, x: &mut [f32], root: usize) -> Result<()> {
        if x.is_empty() {
            return Ok(());
        }
        let s = &self.stream;
        let mut buf = s.clone_htod(&*x).context("NCCL broadcast: upload")?;
        self.comm
            .broadcast_in_place(&mut buf, root as i32)
            .map_err(|e| anyhow!("ncclBroadcast: {e:?}"))?;
        s.memcpy_dtoh(&buf, x).context("NCCL broadcast: download")
    }
    fn abort(&self, _why: &str) {
        // A failed process exits; the launcher (`--gpus N`, or srun --kill-on-bad-exit)
        // stops the others, which NCCL cannot tell otherwise while they wait in a collective.
    }
}

//! How a job becomes ranks:
//!
//! - `--gpus N` with `--device cpu` or `emu`: N threads of this process
//!   ([`super::threads`]).
//! - `--gpus N` with `--device cuda`: the binary starts N copies of itself, one per GPU
//!   ([`spawn_local`]), each with the variables below; when one fails the others are stopped.
//! - A cluster's launcher: every process reads its rank from the variables `torchrun` sets
//!   (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or those of an `srun`
//!   step (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`, with `MASTER_ADDR`
//!   exported by the batch script), and the ranks meet over NCCL ([`super::nccl`]).

use super::nccl::NcclGroup;
pub use super::rank_env::RankEnv;
use super::threads;
use super::{Collective, Solo};
use crate::backend::DeviceChoice;
use anyhow::{bail, Context, Result};
use std::time::Duration;

/// How long ranks wait for each other at the start.
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `job(comm, gpu)` as this process's rank(s) and returns rank 0's result (or, in a
/// process launched as rank r > 0, rank r's): on the ranks a launcher gave this process
/// ([`RankEnv`]), else on `gpus` threads for cpu / emu, else on one rank. `gpu` is the
/// ordinal of the rank's GPU.
pub fn on_ranks<T: Send>(
    gpus: usize,
    device: DeviceChoice,
    job: impl Fn(&dyn Collective, usize) -> Result<T> + Sync,
) -> Result<T> {
    if let Some(env) = RankEnv::from_env()?.filter(|e| e.world > 1 || !on_cpu(device)) {
        if gpus > 1 && gpus != env.world {
            bail!(
                "--gpus {gpus}, but the launcher started {} ranks (WORLD_SIZE or SLURM_STEP_NUM_TASKS): drop --gpus under a launcher",
                env.world
            );
        }
        if on_cpu(device) {
            bail!("processes started as ranks (RANK / WORLD_SIZE, or Slurm's variables) meet over NCCL, which needs --device cuda; on cpu or emu use --gpus N in one process (the ranks are threads)");
        }
        let group = NcclGroup::connect(&env, RENDEZVOUS_TIMEOUT)?;
        return job(&group, env.gpu).with_context(|| format!("rank {} of {}", env.rank, env.world));
    }
    match (gpus, device) {
        (0 | 1, _) => job(&Solo, 0),
        (_, DeviceChoice::Cpu | DeviceChoice::Emu) => threads::run(gpus, |c| job(c, 0))?
            .into_iter()
            .next()
            .context("no rank ran"),
        _ => bail!(
            "--gpus {gpus} on GPUs runs one process per GPU: `insclr-cu <command> --gpus {gpus} --device cuda` starts them, or a cluster launcher (srun, torchrun) that sets RANK and WORLD_SIZE; on the CPU use --device cpu (the ranks are then threads)"
        ),
    }
}

/// Whether `device` is one whose ranks are threads.
fn on_cpu(device: DeviceChoice) -> bool {
    matches!(device, DeviceChoice::Cpu | DeviceChoice::Emu)
}

/// ", 2 ranks" for a job's first line; "" on one rank.
pub fn ranks_note(comm: &dyn Collective) -> String {
    match comm.world() {
        1 => String::new(),
        w => format!(", {w} ranks"),
    }
}

/// Whether this process prints a job's results: it is not a launched rank, or it is rank 0.
pub fn is_rank_zero() -> Result<bool> {
    Ok(RankEnv::from_env()?.is_none_or(|e| e.rank == 0))
}

/// Whether `--gpus gpus` on `device` means starting one process per GPU here: CUDA, several
/// GPUs, and this process is not itself a launched rank.
pub fn needs_processes(gpus: usize, device: DeviceChoice) -> Result<bool> {
    Ok(gpus > 1 && device == DeviceChoice::Cuda && RankEnv::from_env()?.is_none())
}

/// Starts this binary `gpus` times with the same arguments, as ranks `0..gpus` on GPUs
/// `0..gpus` of this machine (rank 0 listens on a free local port), and waits for them. When
/// one exits with an error the others are stopped, and the error names it.
pub fn spawn_local(gpus: usize) -> Result<()> {
    if let Ok(v) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let shown = v.split(',').filter(|d| !d.trim().is_empty()).count();
        if shown < gpus {
            bail!("--gpus {gpus}, but CUDA_VISIBLE_DEVICES={v} shows {shown} GPU(s): show {gpus} or lower --gpus");
        }
    }
    let exe = std::env::current_exe().context("finding this program to start its ranks")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free port for the ranks' rendezvous")?
        .port();
    let mut children = Vec::with_capacity(gpus);
    for rank in 0..gpus {
        let child = std::process::Command::new(&exe)
            .args(&args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", gpus.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .spawn()
            .with_context(|| format!("starting rank {rank} ({})", exe.display()));
        match child {
            Ok(c) => children.push(c),
            Err(e) => {
                children.iter_mut().for_each(|c| drop(c.kill()));
                return Err(e);
            }
        }
    }
    let mut running: Vec<Option<std::process::Child>> = children.into_iter().map(Some).collect();
    loop {
        for rank in 0..gpus {
            let Some(c) = running[rank].as_mut() else {
                continue;
            };
            if let Some(status) = c.try_wait()? {
                running[rank] = None;
                if !status.success() {
                    for other in running.iter_mut().flatten() {
                        let _ = other.kill();
                        let _ = other.wait();
                    }
                    bail!("rank {rank} of {gpus} exited with {status} (its error is above); the other ranks were stopped");
                }
            }
        }
        if running.iter().all(Option::is_none) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

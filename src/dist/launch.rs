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
use super::threads;
use super::{Collective, Solo};
use crate::backend::DeviceChoice;
use anyhow::{anyhow, bail, Context, Result};
use std::time::Duration;

/// Port rank 0 listens on when `MASTER_PORT` is not set (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// How long ranks wait for each other at the start.
pub const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);

/// This process's place in a job its launcher started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world: usize,
    /// The rank's GPU on its machine.
    pub local_rank: usize,
    /// Rank 0's `host:port`.
    pub master: String,
}

impl RankEnv {
    /// The rank this process's variables give it; `None` outside a multi-rank launch.
    pub fn from_env() -> Result<Option<RankEnv>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`RankEnv::from_env`] over any source of variables.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<RankEnv>> {
        let num = |k: &str| -> Result<Option<usize>> {
            var(k)
                .map(|v| {
                    v.trim()
                        .parse::<usize>()
                        .map_err(|_| anyhow!("{k} = {v:?} is not a number"))
                })
                .transpose()
        };
        let (rank, world, local, from) = if let Some(world) = num("WORLD_SIZE")? {
            let rank = num("RANK")?
                .context("WORLD_SIZE is set but RANK is not: set both (torchrun does)")?;
            (rank, world, num("LOCAL_RANK")?.unwrap_or(rank), "RANK")
        } else if let Some(world) = num("SLURM_STEP_NUM_TASKS")? {
            // The tasks of an srun step; a batch script's own shell (SLURM_NTASKS, no step) is
            // one process, not a rank.
            let rank = num("SLURM_PROCID")?
                .context("SLURM_STEP_NUM_TASKS is set but SLURM_PROCID is not")?;
            (
                rank,
                world,
                num("SLURM_LOCALID")?.unwrap_or(0),
                "SLURM_PROCID",
            )
        } else {
            return Ok(None);
        };
        // One srun task is no job of ranks; torchrun's one process (or `WORLD_SIZE=1` set by
        // hand) is a world of one over NCCL, the GPU protocol's check of that path.
        if world == 0 || world == 1 && from == "SLURM_PROCID" {
            return Ok(None);
        }
        if rank >= world {
            bail!(
                "{from} = {rank} but there are {world} ranks: ranks are 0..{}",
                world - 1
            );
        }
        let addr = var("MASTER_ADDR").or_else(|| (world == 1).then(|| "127.0.0.1".to_string())).context(
            "a multi-rank launch needs MASTER_ADDR, the host of rank 0; under Slurm: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)",
        )?;
        let port = match var("MASTER_PORT") {
            Some(p) => p
                .trim()
                .parse::<u16>()
                .map_err(|_| anyhow!("MASTER_PORT = {p:?} is not a port number"))?,
            None => DEFAULT_PORT,
        };
        Ok(Some(RankEnv {
            rank,
            world,
            local_rank: local,
            master: format!("{addr}:{port}"),
        }))
    }
}

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
        return job(&group, env.local_rank)
            .with_context(|| format!("rank {} of {}", env.rank, env.world));
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

/// ", 2 ranks (threads)" and the like for a job's first line; "" on one rank.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Option<RankEnv>> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RankEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn ranks_come_from_torchrun_or_slurm_variables() {
        assert_eq!(env(&[]).unwrap(), None);
        let one = env(&[("WORLD_SIZE", "1"), ("RANK", "0")]).unwrap().unwrap();
        assert_eq!(
            (one.rank, one.world, one.master.as_str()),
            (0, 1, "127.0.0.1:29500")
        );
        assert_eq!(
            env(&[("SLURM_STEP_NUM_TASKS", "1"), ("SLURM_PROCID", "0")]).unwrap(),
            None
        );
        let t = env(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((t.rank, t.world, t.local_rank), (5, 8, 1));
        assert_eq!(t.master, "node0:1234");
        let s = env(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "3"),
            ("MASTER_ADDR", "gpu-a"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((s.rank, s.world, s.local_rank), (3, 4, 3));
        assert_eq!(s.master, format!("gpu-a:{DEFAULT_PORT}"));
    }

    #[test]
    fn a_launch_missing_a_variable_says_which() {
        // A batch script's shell in an allocation of 4 tasks is no rank.
        assert_eq!(
            env(&[("SLURM_NTASKS", "4"), ("SLURM_PROCID", "0")]).unwrap(),
            None
        );
        let e = env(&[("SLURM_STEP_NUM_TASKS", "2"), ("SLURM_PROCID", "0")]).unwrap_err();
        assert!(e.to_string().contains("needs MASTER_ADDR"), "{e}");
        assert!(e.to_string().contains("scontrol show hostnames"), "{e}");
        let e = env(&[("WORLD_SIZE", "2")]).unwrap_err();
        assert!(e.to_string().contains("RANK is not"), "{e}");
        let e = env(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_ADDR", "h")]).unwrap_err();
        assert!(
            e.to_string().contains("RANK = 2 but there are 2 ranks"),
            "{e}"
        );
        let e = env(&[("WORLD_SIZE", "x")]).unwrap_err();
        assert!(
            e.to_string().contains("WORLD_SIZE = \"x\" is not a number"),
            "{e}"
        );
    }
}

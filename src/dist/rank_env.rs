//! Who this process is in a job a launcher started: the variables torchrun sets (`RANK`,
//! `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or those of an `srun` step
//! (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`, `SLURM_LOCALID`, with `MASTER_ADDR` exported by the
//! batch script).

use anyhow::{anyhow, bail, Context, Result};

/// Port rank 0 listens on when `MASTER_PORT` is not set (torchrun's default).
pub const DEFAULT_PORT: u16 = 29500;

/// This process's place in a job its launcher started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world: usize,
    /// The rank's place on its machine.
    pub local_rank: usize,
    /// The ordinal of the rank's GPU: `local_rank`, or 0 where the launcher shows each rank
    /// only its own GPU (`CUDA_VISIBLE_DEVICES` with one entry, as Slurm's `--gpus-per-task=1`).
    pub gpu: usize,
    /// Rank 0's `host:port` (under torchrun, whose store holds `MASTER_PORT`, the port after).
    pub master: String,
}

impl RankEnv {
    /// The rank this process's variables give it; `None` when none do (one srun task counts
    /// as none; `WORLD_SIZE=1` is a world of one).
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
        // torchrun's own store already listens on MASTER_PORT: ours takes the next one.
        let port = if var("TORCHELASTIC_RUN_ID").is_some() {
            port.checked_add(1)
                .context("MASTER_PORT 65535 leaves no port for the rendezvous under torchrun")?
        } else {
            port
        };
        let one_visible = var("CUDA_VISIBLE_DEVICES")
            .is_some_and(|v| v.split(',').filter(|d| !d.trim().is_empty()).count() == 1);
        Ok(Some(RankEnv {
            rank,
            world,
            gpu: if one_visible { 0 } else { local },
            local_rank: local,
            master: format!("{addr}:{port}"),
        }))
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
        assert_eq!((t.rank, t.world, t.local_rank, t.gpu), (5, 8, 1, 1));
        assert_eq!(t.master, "node0:1234");
        let torchrun = env(&[
            ("WORLD_SIZE", "2"),
            ("RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "1234"),
            ("TORCHELASTIC_RUN_ID", "none"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(torchrun.master, "node0:1235", "torchrun's store has 1234");
        let s = env(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "3"),
            ("MASTER_ADDR", "gpu-a"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((s.rank, s.world, s.local_rank, s.gpu), (3, 4, 3, 3));
        let own = env(&[
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "3"),
            ("MASTER_ADDR", "gpu-a"),
            ("CUDA_VISIBLE_DEVICES", "3"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (own.local_rank, own.gpu),
            (3, 0),
            "the one GPU it sees is ordinal 0"
        );
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

//! Ranks as threads of one process: the collectives of `--gpus N` on `--device cpu` or `emu`,
//! and of the tests that prove N ranks give what one rank gives.
//!
//! Each collective is one exchange: every rank leaves its part, the last to arrive hands the
//! round's parts (by rank) to all. Sums are added in rank order by every rank alike, so every
//! rank and every run gets the same bits. A rank that fails ([`Collective::abort`], also
//! called for it by [`run`] when its job returns an error or panics) wakes the others with an
//! error naming it; a rank that finished while others still wait for it does the same.

use super::Collective;
use anyhow::{anyhow, bail, Result};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// One rank's handle on the shared exchange.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    turn: Condvar,
}

#[derive(Default)]
struct State {
    /// Rounds completed.
    round: u64,
    /// This round's parts so far, with the collective each rank is in.
    parts: Vec<Option<(&'static str, Vec<u8>)>>,
    arrived: usize,
    /// The last completed round's parts, by rank.
    done: Arc<Vec<Vec<u8>>>,
    /// The first rank that failed, and why.
    failed: Option<(usize, String)>,
    /// Ranks whose job returned: no collective of theirs will come.
    left: Vec<bool>,
}

impl ThreadGroup {
    /// The handles of ranks `0..world`, one per thread.
    pub fn new(world: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                parts: vec![None; world],
                left: vec![false; world],
                ..State::default()
            }),
            turn: Condvar::new(),
        });
        (0..world)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left the state consistent (it only
        // panics outside it), so a poisoned lock is still usable.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Why this rank cannot go on, if another rank failed or left.
    fn stopped(&self, s: &State) -> Option<anyhow::Error> {
        if let Some((r, why)) = &s.failed {
            return Some(anyhow!(
                "rank {r} failed ({why}); rank {} stops too",
                self.rank
            ));
        }
        let left = s.left.iter().position(|&l| l)?;
        Some(anyhow!(
            "rank {left} finished while rank {} still waits for it at a collective: the ranks ran different steps",
            self.rank
        ))
    }

    /// One round: leaves `part`, waits for every rank's, returns them by rank.
    fn exchange(&self, op: &'static str, part: Vec<u8>) -> Result<Arc<Vec<Vec<u8>>>> {
        let world = self.shared.world;
        let mut s = self.lock();
        if let Some(e) = self.stopped(&s) {
            return Err(e);
        }
        let round = s.round;
        s.parts[self.rank] = Some((op, part));
        s.arrived += 1;
        if s.arrived == world {
            let parts: Vec<(&str, Vec<u8>)> = s.parts.iter_mut().filter_map(Option::take).collect();
            s.arrived = 0;
            s.round += 1;
            if let Some((r, (other, _))) = parts.iter().enumerate().find(|(_, p)| p.0 != op) {
                let why = format!(
                    "rank {r} called {other} where rank {} called {op}",
                    self.rank
                );
                s.failed = Some((r, why.clone()));
                self.shared.turn.notify_all();
                bail!("the ranks diverged: {why}");
            }
            s.done = Arc::new(parts.into_iter().map(|p| p.1).collect());
            self.shared.turn.notify_all();
            return Ok(s.done.clone());
        }
        loop {
            s = self.shared.turn.wait(s).unwrap_or_else(|e| e.into_inner());
            if s.round > round {
                if let Some(e) = s.failed.as_ref().and_then(|_| self.stopped(&s)) {
                    return Err(e);
                }
                return Ok(s.done.clone());
            }
            if let Some(e) = self.stopped(&s) {
                return Err(e);
            }
        }
    }

    /// This rank's job returned: a rank still waiting for it is told so.
    fn leave(&self) {
        let mut s = self.lock();
        s.left[self.rank] = true;
        self.shared.turn.notify_all();
    }

    /// The first rank that failed, and why.
    fn failure(&self) -> Option<(usize, String)> {
        self.lock().failed.clone()
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(b)
}

fn bytes(x: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(x).to_vec()
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_gather_bytes(&self, part: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(self.exchange("all-gather", part.to_vec())?.to_vec())
    }
    fn all_reduce_sum(&self, x: &mut [f32]) -> Result<()> {
        let parts = self.exchange("all-reduce", bytes(x))?;
        if let Some(r) = parts.iter().position(|p| p.len() != 4 * x.len()) {
            bail!(
                "all-reduce of {} values, but rank {r} gave {}",
                x.len(),
                parts[r].len() / 4
            );
        }
        x.fill(0.0);
        for p in parts.iter() {
            x.iter_mut().zip(f32s(p)).for_each(|(a, b)| *a += b);
        }
        Ok(())
    }
    fn broadcast(&self, x: &mut [f32], root: usize) -> Result<()> {
        let mine = if self.rank == root {
            bytes(x)
        } else {
            Vec::new()
        };
        let parts = self.exchange("broadcast", mine)?;
        let from = &parts[root];
        if from.len() != 4 * x.len() {
            bail!(
                "broadcast of {} values from rank {root}, which has {}",
                x.len(),
                from.len() / 4
            );
        }
        x.copy_from_slice(&f32s(from));
        Ok(())
    }
    fn abort(&self, why: &str) {
        let mut s = self.lock();
        if s.failed.is_none() {
            s.failed = Some((self.rank, why.to_string()));
        }
        self.shared.turn.notify_all();
    }
}

/// Runs `job` on `world` ranks, one thread each, and returns every rank's result by rank.
/// When a rank fails (an error or a panic), the others stop at their next collective and the
/// error returned is the failed rank's, naming it.
pub fn run<T: Send>(
    world: usize,
    job: impl Fn(&dyn Collective) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    if world == 0 {
        bail!("0 ranks: give at least 1");
    }
    let groups = ThreadGroup::new(world);
    let job = &job;
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let handles: Result<Vec<_>> = groups
            .iter()
            .map(|g| {
                std::thread::Builder::new()
                    .name(format!("insclr-rank-{}", g.rank))
                    .spawn_scoped(scope, move || {
                        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(g)))
                            .unwrap_or_else(|p| Err(anyhow!("panicked: {}", panic_text(&p))));
                        match &out {
                            Ok(_) => g.leave(),
                            Err(e) => g.abort(&format!("{e:#}")),
                        }
                        out
                    })
            })
            .collect::<std::io::Result<_>>()
            .map_err(|e| anyhow!("starting a rank's thread: {e}"));
        match handles {
            Ok(hs) => hs
                .into_iter()
                .map(|h: std::thread::ScopedJoinHandle<Result<T>>| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow!("a rank's thread panicked")))
                })
                .collect(),
            Err(e) => {
                groups[0].abort("a rank's thread did not start");
                vec![Err(e)]
            }
        }
    });
    let mut results = results;
    if let Some((r, _)) = groups[0].failure() {
        if r < results.len() {
            if let Err(e) = results.swap_remove(r) {
                return Err(e.context(format!("rank {r} of {world} failed")));
            }
        }
    }
    results.into_iter().collect()
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::all_gather;

    #[test]
    fn gathers_in_rank_order_and_sums_the_same_bits_on_every_rank() {
        let out = run(3, |c| {
            let r = c.rank() as f32;
            let mine: Vec<f32> = (0..=c.rank()).map(|i| r * 10.0 + i as f32).collect();
            let all = all_gather(c, &mine)?;
            let mut x = vec![0.1 * (r + 1.0), 1e8 * (1.0 - r)];
            c.all_reduce_sum(&mut x)?;
            let mut b = vec![r; 2];
            c.broadcast(&mut b, 2)?;
            Ok((all, x, b))
        })
        .unwrap();
        for (all, x, b) in &out {
            assert_eq!(all, &[0.0, 10.0, 11.0, 20.0, 21.0, 22.0]);
            // Rank order: (0.1 + 0.2) + 0.3, and 1e8 + 0 - 1e8.
            assert_eq!(x[0], (0.1f32 + 0.2f32) + 0.3f32);
            assert_eq!(x[1], 0.0);
            assert_eq!(b, &[2.0, 2.0]);
            assert_eq!(x, &out[0].1);
        }
    }

    #[test]
    fn buffers_are_summed_and_broadcast_in_buckets() {
        let be = crate::backend::cpu();
        // 3 and 0 values share a bucket; 7M values (28 MB) are one bucket alone; 5 the last.
        let sizes = [3usize, 0, 7_000_000, 5];
        let out = run(2, |c| {
            let r = c.rank() as f32;
            let mut bufs: Vec<crate::backend::Buf> = sizes
                .iter()
                .map(|&n| be.upload(&vec![r + 1.0; n]))
                .collect::<Result<_>>()?;
            let mut refs: Vec<&mut crate::backend::Buf> = bufs.iter_mut().collect();
            c.all_reduce_bufs(be, &mut refs)?;
            let summed: Vec<Vec<f32>> = bufs
                .iter()
                .map(|b| be.download::<f32>(b))
                .collect::<Result<_>>()?;
            let mut refs: Vec<&mut crate::backend::Buf> = bufs.iter_mut().collect();
            let mut own = be.upload(&[r])?;
            refs.push(&mut own);
            c.broadcast_bufs(be, &mut refs, 1)?;
            Ok((summed, be.download::<f32>(&own)?))
        })
        .unwrap();
        for (summed, own) in out {
            for (v, &n) in summed.iter().zip(&sizes) {
                assert_eq!(v.len(), n);
                assert!(v.iter().all(|&x| x == 3.0));
            }
            assert_eq!(own, [1.0], "rank 1's value");
        }
    }

    #[test]
    fn a_failed_rank_stops_the_others_with_its_name_and_reason() {
        let e = run(3, |c| {
            let mut x = vec![1.0];
            for step in 0..10 {
                if c.rank() == 1 && step == 4 {
                    bail!("could not read image 7");
                }
                c.all_reduce_sum(&mut x)?;
            }
            Ok(())
        })
        .unwrap_err();
        let text = format!("{e:#}");
        assert!(text.starts_with("rank 1 of 3 failed"), "{text}");
        assert!(text.contains("could not read image 7"), "{text}");
    }

    #[test]
    fn a_panic_or_an_early_return_is_an_error_not_a_hang() {
        let e = run(2, |c| {
            if c.rank() == 0 {
                panic!("out of cheese");
            }
            c.all_gather_bytes(b"x").map(|_| ())
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("rank 0 of 2 failed: panicked: out of cheese"),
            "{e:#}"
        );
        let e = run(2, |c| {
            if c.rank() == 1 {
                return Ok(());
            }
            c.all_gather_bytes(b"x").map(|_| ())
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("rank 1 finished while rank 0 still waits"),
            "{e:#}"
        );
        let e = run(2, |c| {
            let mut x = [1.0];
            if c.rank() == 0 {
                c.all_reduce_sum(&mut x)
            } else {
                c.broadcast(&mut x, 0)
            }
        })
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("diverged") || format!("{e:#}").contains("called"),
            "{e:#}"
        );
    }
}

//! How ranks in separate processes (or on separate machines) find each other: rank 0 listens
//! on `MASTER_ADDR:MASTER_PORT`, every other rank connects and says who it is, and rank 0
//! answers each with the same payload (NCCL's unique id). Both sides give up after a timeout
//! with an error that names who did not come.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a rank sends first, so that a stray connection is not taken for a rank.
const HELLO: &[u8; 8] = b"insclr1\n";

/// The most a payload may be (NCCL's id is 128 bytes).
const MAX_PAYLOAD: usize = 1 << 16;

/// Rank 0's `payload` on every rank of `world`, through `master` (`host:port`). Rank 0 passes
/// the payload; the others pass `None`. Rank 0 listens on every interface at the port.
pub fn share(
    master: &str,
    rank: usize,
    world: usize,
    payload: Option<&[u8]>,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    if rank == 0 {
        let payload = payload.context("rank 0 must give the payload to share")?;
        serve(master, world, payload, deadline, timeout)?;
        Ok(payload.to_vec())
    } else {
        join(master, rank, world, deadline, timeout)
    }
}

fn serve(
    master: &str,
    world: usize,
    payload: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<()> {
    if world == 1 {
        return Ok(()); // nobody to wait for, no port to take
    }
    if payload.len() > MAX_PAYLOAD {
        bail!(
            "rendezvous payload of {} bytes is over {MAX_PAYLOAD}",
            payload.len()
        );
    }
    let port = master
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .with_context(|| format!("MASTER_ADDR:MASTER_PORT {master:?} has no port"))?;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .with_context(|| format!("rank 0 listening on port {port} (MASTER_PORT): is another job using it? pick a free one"))?;
    listener.set_nonblocking(true)?;
    let mut arrived: Vec<Option<TcpStream>> = (0..world).map(|_| None).collect();
    while arrived.iter().skip(1).any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                let Ok((r, w)) = read_hello(&mut s) else {
                    continue; // not a rank of ours
                };
                if w != world {
                    bail!("rank {r} (from {peer}) was started with WORLD_SIZE {w}, rank 0 with {world}: start every rank with the same number");
                }
                if r == 0 || r >= world {
                    bail!("a process at {peer} says it is rank {r}, outside 1..{world}");
                }
                if arrived[r].is_some() {
                    bail!("two processes say they are rank {r} (the second from {peer}): give every process its own RANK");
                }
                arrived[r] = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = (1..world)
                        .filter(|&r| arrived[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    bail!(
                        "rendezvous on port {port}: rank(s) {} of {world} did not arrive within {} s; start them with MASTER_ADDR and MASTER_PORT pointing at rank 0 ({master})",
                        missing.join(", "),
                        timeout.as_secs()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("rendezvous: accepting a rank"),
        }
    }
    for (r, s) in arrived.iter_mut().enumerate().skip(1) {
        let s = s.as_mut().context("a rank's connection")?;
        s.write_all(&(payload.len() as u32).to_le_bytes())
            .and_then(|_| s.write_all(payload))
            .with_context(|| format!("rendezvous: sending the id to rank {r}"))?;
    }
    Ok(())
}

fn read_hello(s: &mut TcpStream) -> Result<(usize, usize)> {
    let mut buf = [0u8; 16];
    s.read_exact(&mut buf)?;
    if &buf[..8] != HELLO {
        bail!("not a rank");
    }
    let r = u32::from_le_bytes(buf[8..12].try_into()?) as usize;
    let w = u32::from_le_bytes(buf[12..16].try_into()?) as usize;
    Ok((r, w))
}

fn join(
    master: &str,
    rank: usize,
    world: usize,
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>> {
    let addrs: Vec<_> = master
        .to_socket_addrs()
        .with_context(|| format!("rank {rank}: resolving MASTER_ADDR:MASTER_PORT {master}"))?
        .collect();
    let mut s = loop {
        if let Some(s) = addrs
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(1)).ok())
        {
            break s;
        }
        if Instant::now() > deadline {
            bail!(
                "rank {rank}: rank 0 did not answer at {master} within {} s; is it running, and are MASTER_ADDR and MASTER_PORT the same for every rank?",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut hello = HELLO.to_vec();
    hello.extend((rank as u32).to_le_bytes());
    hello.extend((world as u32).to_le_bytes());
    s.write_all(&hello)?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    s.set_read_timeout(Some(left))?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).with_context(|| {
        format!("rank {rank}: rank 0 at {master} did not send the id (it stops when a rank does not arrive in time; see its error)")
    })?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_PAYLOAD {
        bail!("rank {rank}: rank 0 at {master} sent a {len}-byte id; is it insclr-cu?");
    }
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)
        .with_context(|| format!("rank {rank}: reading the id from {master}"))?;
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn every_rank_gets_rank_zeros_payload() {
        let master = format!("127.0.0.1:{}", free_port());
        let got: Vec<Vec<u8>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|r| {
                    let master = master.clone();
                    s.spawn(move || {
                        let id = (r == 0).then_some(&b"the id"[..]);
                        share(&master, r, 3, id, Duration::from_secs(20)).unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|g| g == b"the id"), "{got:?}");
    }

    #[test]
    fn a_rank_that_never_comes_is_named() {
        let master = format!("127.0.0.1:{}", free_port());
        let e = std::thread::scope(|s| {
            let m = master.clone();
            s.spawn(move || share(&m, 1, 3, None, Duration::from_secs(5)).is_err());
            share(&master, 0, 3, Some(b"id"), Duration::from_secs(1)).unwrap_err()
        });
        let text = format!("{e:#}");
        assert!(
            text.contains("rank(s) 2 of 3 did not arrive within 1 s"),
            "{text}"
        );
        let e = share(&master, 2, 3, None, Duration::from_secs(1)).unwrap_err();
        assert!(format!("{e:#}").contains("rank 0 did not answer"), "{e:#}");
    }
}

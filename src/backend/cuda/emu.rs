//! The device layer on the emulated GPU: our kernels compiled by the host C++ compiler
//! (build/emu.rs) and run by `kernels/emu/runtime.cpp` on the calling thread, blocks one after
//! another, a block's threads as fibers in a seeded random order. It proves kernel logic
//! (indices, barriers, shuffles, bounds under the sanitiser build), never speed.
//!
//! `INSCLR_EMU_SEED` sets the base seed of the thread orders (default 1); each launch derives
//! its own, so a failing run repeats with the same value.
//!
//! Two instruments ride on every emulated launch (kernels/emu/runtime.cpp), fed by the compiler's
//! hooks on every load and store of the kernels and by the wrappers of `kernels/arch.cuh`:
//! - the race checker: an access to shared memory that another warp wrote (or read, for a write)
//!   in the same barrier interval, or a cp.async destination touched before its wait, stops the
//!   launch with both sites (`file:line`). On unless `INSCLR_EMU_RACECHECK=0`; a launch's first
//!   blocks and its grid's far edges are checked (`INSCLR_EMU_RACECHECK=all`: every block).
//! - the memory counters ([`count_memory`], or `INSCLR_EMU_MEMSTATS=1` for a whole process):
//!   per kernel and access site, warp-level requests and the shared-memory wavefronts (bank
//!   conflicts) or global 32-byte sectors (coalescing) they take, against the ideal. They
//!   measure access patterns, not time.

use super::device::{Args, DevMem, Launch};
use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));

/// True when the emulated kernels were built with AddressSanitizer (`INSCLR_EMU_SANITIZE`).
pub const SANITIZED: bool = cfg!(insclr_emu_asan);

/// True when every load and store of the emulated kernels reaches the race checker and the
/// counters. The AddressSanitizer build has no such hooks (the two instrumentations exclude each
/// other): there they see only the accesses of the `arch.cuh` wrappers (ldmatrix, cp.async, the
/// vector loads and stores).
pub const ACCESS_HOOKS: bool = !SANITIZED;

/// One record of the runtime's counters (`InsclrEmuMemStat` in runtime.cpp).
#[repr(C)]
#[derive(Clone, Copy)]
struct RawMemStat {
    kernel: *const c_char,
    pc: c_ulonglong,
    space: c_uint,
    op: c_uint,
    width: c_uint,
    reserved: c_uint,
    requests: c_ulonglong,
    transactions: c_ulonglong,
    ideal: c_ulonglong,
    bytes: c_ulonglong,
}

extern "C" {
    fn insclr_emu_memstats_begin();
    fn insclr_emu_memstats_read(scope: c_int, out: *mut RawMemStat, cap: usize) -> usize;
    fn insclr_emu_memstats_end();
    fn insclr_emu_memstats_process() -> c_int;
    fn insclr_emu_site(pc: c_ulonglong, buf: *mut c_char, cap: usize);
    fn insclr_emu_sites_prepare(pcs: *const c_ulonglong, n: usize);
    fn insclr_emu_alloc(bytes: usize) -> *mut c_void;
    fn insclr_emu_free(p: *mut c_void);
    fn insclr_emu_launch(
        kernel: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        dyn_smem: c_uint,
        args: *const *mut c_void,
        arg_sizes: *const c_uint,
        nargs: c_uint,
        seed: c_ulonglong,
        err: *mut c_char,
        err_cap: usize,
    ) -> c_int;
}

/// The emulated device.
pub struct Emu {
    base_seed: u64,
    launches: AtomicU64,
    /// Multiprocessors of the modelled GPU: what sizes chosen from the GPU's occupancy (split
    /// counts) see.
    pub(crate) sms: u32,
}

impl Emu {
    pub fn new() -> Emu {
        let base_seed = std::env::var("INSCLR_EMU_SEED")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        Emu {
            base_seed,
            launches: AtomicU64::new(0),
            sms: super::occupancy::MODEL_SMS,
        }
    }

    /// The base seed of the thread orders.
    pub fn seed(&self) -> u64 {
        self.base_seed
    }

    /// `bytes` of poisoned memory (every byte 0xFF: NaN as f32), 256-byte aligned like cudaMalloc.
    pub fn alloc(&self, bytes: usize) -> Result<DevMem> {
        // SAFETY: plain allocation; null is checked.
        let p = unsafe { insclr_emu_alloc(bytes) };
        if p.is_null() {
            bail!("out of memory allocating {bytes} bytes for the emulated device");
        }
        // SAFETY: p is a fresh allocation of at least `bytes` bytes, owned by the DevMem.
        Ok(unsafe { DevMem::emu(p as u64, bytes, free) })
    }

    /// Runs `kernel` to completion on the calling thread.
    ///
    /// # Safety
    /// As [`super::layer::Layer::launch`]; the emulator checks the argument count and sizes
    /// against the kernel's parameters, not the pointers.
    pub unsafe fn launch(&self, kernel: &str, cfg: Launch, args: &mut Args) -> Result<()> {
        let name = CString::new(kernel).map_err(|_| anyhow!("kernel name {kernel:?} has a NUL"))?;
        let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
        let block = [cfg.block.0, cfg.block.1, cfg.block.2];
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        let seed = splitmix(self.base_seed ^ splitmix(n));
        let params = args.pointers();
        let mut err = vec![0 as c_char; 1024];
        let rc = insclr_emu_launch(
            name.as_ptr(),
            grid.as_ptr(),
            block.as_ptr(),
            cfg.smem,
            params.as_ptr(),
            args.sizes().as_ptr(),
            params.len() as c_uint,
            seed,
            err.as_mut_ptr(),
            err.len(),
        );
        if rc != 0 {
            let msg = CStr::from_ptr(err.as_ptr()).to_string_lossy();
            bail!(
                "emulated launch failed: {msg} [INSCLR_EMU_SEED={} and the same launches before \
                 it repeat this run]",
                self.base_seed
            );
        }
        Ok(())
    }
}

impl Default for Emu {
    fn default() -> Self {
        Emu::new()
    }
}

fn free(ptr: u64) {
    // SAFETY: ptr came from insclr_emu_alloc (given to its DevMem by `Emu::alloc`) and is freed
    // once, by that DevMem's drop.
    unsafe { insclr_emu_free(ptr as *mut c_void) }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Where a counted access went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemSpace {
    Shared,
    Global,
    /// Tensor-core instructions (no memory).
    TensorCore,
}

impl MemSpace {
    pub fn name(self) -> &'static str {
        match self {
            MemSpace::Shared => "shared",
            MemSpace::Global => "global",
            MemSpace::TensorCore => "tensor",
        }
    }
}

/// The emulated device's counters for one access site of one kernel, summed over its launches.
#[derive(Clone, Debug)]
pub struct MemStat {
    pub kernel: String,
    /// `file:line` of the access, then the lines it was inlined into (`arch.cuh:166 < gemm.cu:163`).
    pub site: String,
    pub space: MemSpace,
    /// `ld`, `st`, `ldmatrix.x1/x2/x4`, `cp.async` or `mma`.
    pub op: &'static str,
    /// Bytes each lane moves.
    pub width: u32,
    /// Warp-level instructions (one per warp and execution, whatever its active lanes).
    pub requests: u64,
    /// Shared: 128-byte wavefronts (more than the ideal = bank conflicts). Global: 32-byte
    /// sectors (more than the ideal = uncoalesced). Tensor: mma instructions.
    pub transactions: u64,
    /// Shared: one wavefront per 128-byte phase of a request. Global: the fewest sectors that
    /// hold the bytes the lanes asked for.
    pub ideal: u64,
    /// Bytes the lanes asked for.
    pub bytes: u64,
}

impl MemStat {
    /// Transactions over the ideal: 1.0 is conflict-free (shared) or fully coalesced (global).
    pub fn excess(&self) -> f64 {
        if self.ideal == 0 {
            1.0
        } else {
            self.transactions as f64 / self.ideal as f64
        }
    }
}

/// True when `INSCLR_EMU_MEMSTATS=1` counts every emulated launch of this process.
pub fn memstats_enabled() -> bool {
    // SAFETY: reads a flag.
    unsafe { insclr_emu_memstats_process() != 0 }
}

/// The counters of every emulated launch of this process so far (empty unless
/// `INSCLR_EMU_MEMSTATS=1`).
pub fn memstats() -> Vec<MemStat> {
    read_stats(0)
}

/// Runs `f` with the counters on for the emulated launches of the calling thread (a launch runs
/// on the thread that makes it) and returns what they counted.
pub fn count_memory<R>(f: impl FnOnce() -> R) -> (R, Vec<MemStat>) {
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            // SAFETY: ends this thread's counting (also when f panics).
            unsafe { insclr_emu_memstats_end() }
        }
    }
    // SAFETY: starts this thread's counting.
    unsafe { insclr_emu_memstats_begin() };
    let end = End;
    let r = f();
    let stats = read_stats(1);
    drop(end);
    (r, stats)
}

fn read_stats(scope: c_int) -> Vec<MemStat> {
    // SAFETY: a null buffer of capacity 0 only asks for the count.
    let n = unsafe { insclr_emu_memstats_read(scope, std::ptr::null_mut(), 0) };
    let empty = RawMemStat {
        kernel: std::ptr::null(),
        pc: 0,
        space: 0,
        op: 0,
        width: 0,
        reserved: 0,
        requests: 0,
        transactions: 0,
        ideal: 0,
        bytes: 0,
    };
    let mut raw = vec![empty; n];
    // SAFETY: raw holds n records; the runtime writes at most that many.
    let got = unsafe { insclr_emu_memstats_read(scope, raw.as_mut_ptr(), raw.len()) };
    raw.truncate(got.min(n));
    let pcs: Vec<c_ulonglong> = raw.iter().map(|r| r.pc).collect();
    // SAFETY: pcs is a valid slice; one addr2line run resolves every site.
    unsafe { insclr_emu_sites_prepare(pcs.as_ptr(), pcs.len()) };
    let all = raw.iter().map(|r| MemStat {
        // SAFETY: the registry's kernel names are static NUL-terminated strings.
        kernel: unsafe { CStr::from_ptr(r.kernel) }
            .to_string_lossy()
            .into_owned(),
        site: site(r.pc),
        space: match r.space {
            0 => MemSpace::Shared,
            1 => MemSpace::Global,
            _ => MemSpace::TensorCore,
        },
        op: match r.op {
            0 => "ld",
            1 => "st",
            2 => "ldmatrix.x1",
            3 => "ldmatrix.x2",
            4 => "ldmatrix.x4",
            5 => "cp.async",
            _ => "mma",
        },
        width: r.width,
        requests: r.requests,
        transactions: if r.op == 6 {
            r.requests
        } else {
            r.transactions
        },
        ideal: if r.op == 6 { r.requests } else { r.ideal },
        bytes: r.bytes,
    });
    // Code addresses of one source line (a struct's fields, an unrolled loop) make one row.
    let mut rows: Vec<MemStat> = Vec::new();
    for s in all {
        let same = |r: &&mut MemStat| {
            (&r.kernel, &r.site, r.space, r.op, r.width)
                == (&s.kernel, &s.site, s.space, s.op, s.width)
        };
        match rows.iter_mut().find(same) {
            Some(r) => {
                r.requests += s.requests;
                r.transactions += s.transactions;
                r.ideal += s.ideal;
                r.bytes += s.bytes;
            }
            None => rows.push(s),
        }
    }
    rows
}

fn site(pc: u64) -> String {
    let mut buf = vec![0 as c_char; 512];
    // SAFETY: buf has room for 512 bytes including the NUL the runtime writes.
    unsafe {
        insclr_emu_site(pc, buf.as_mut_ptr(), buf.len());
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// The counters as a table: per kernel, its sites with the most transactions first.
pub fn memstats_table(stats: &[MemStat]) -> String {
    use std::fmt::Write as _;
    let mut rows: Vec<&MemStat> = stats.iter().collect();
    rows.sort_by(|a, b| {
        (&a.kernel, a.space)
            .cmp(&(&b.kernel, b.space))
            .then(b.transactions.cmp(&a.transactions))
    });
    let site_w = rows
        .iter()
        .map(|r| r.site.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 96);
    let kernel_w = rows
        .iter()
        .map(|r| r.kernel.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut t = String::new();
    writeln!(
        t,
        "emulated memory counters: shared = 128-byte wavefronts (bank conflicts above the ideal), \
         global = 32-byte sectors (uncoalesced above the ideal); patterns, not time"
    )
    .unwrap();
    writeln!(
        t,
        "{:<kernel_w$}  {:<site_w$}  {:<6}  {:<11}  {:>3}  {:>10}  {:>12}  {:>12}  {:>7}  {:>12}",
        "kernel",
        "site",
        "space",
        "op",
        "B",
        "requests",
        "transactions",
        "ideal",
        "x ideal",
        "bytes"
    )
    .unwrap();
    for r in rows {
        let site: String = r.site.chars().take(site_w).collect();
        writeln!(
            t,
            "{:<kernel_w$}  {:<site_w$}  {:<6}  {:<11}  {:>3}  {:>10}  {:>12}  {:>12}  {:>7.2}  {:>12}",
            r.kernel,
            site,
            r.space.name(),
            r.op,
            r.width,
            r.requests,
            r.transactions,
            r.ideal,
            r.excess(),
            r.bytes
        )
        .unwrap();
    }
    t
}

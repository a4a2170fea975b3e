//! The device layer on the emulated GPU: our kernels compiled by the host C++ compiler
//! (build/emu.rs) and run by `kernels/emu/runtime.cpp` on the calling thread, blocks one after
//! another, a block's threads as fibers in a seeded random order. It proves kernel logic
//! (indices, barriers, shuffles, bounds under the sanitiser build), never speed.
//!
//! `INSCLR_EMU_SEED` sets the base seed of the thread orders (default 1); each launch derives
//! its own, so a failing run repeats with the same value.

use super::device::{Args, DevMem, Launch};
use anyhow::{anyhow, bail, Result};
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

include!(concat!(env!("OUT_DIR"), "/emu_kernels.rs"));

/// True when the emulated kernels were built with AddressSanitizer (`INSCLR_EMU_SANITIZE`).
pub const SANITIZED: bool = cfg!(insclr_emu_asan);

extern "C" {
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
        Ok(unsafe { DevMem::emu(p as u64, bytes) })
    }

    /// Runs `kernel` to completion on the calling thread.
    ///
    /// # Safety
    /// As [`super::device::Layer::launch`]; the emulator checks the argument count and sizes
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

pub(super) fn free(ptr: u64) {
    // SAFETY: ptr came from insclr_emu_alloc and is freed once, by its DevMem's drop.
    unsafe { insclr_emu_free(ptr as *mut c_void) }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

//! The types every device layer shares: device memory ([`DevMem`], and the device it lives on,
//! [`Home`]), a launch's shape ([`Launch`]) and its packed argument list ([`Args`], as
//! `cuLaunchKernel` takes it). The layers, a real GPU ([`super::driver`]), the emulated one
//! ([`super::emu`]) and none at all ([`super::record`], which writes launches down for
//! `insclr-cu plan`), build on these; [`super::layer`] chooses among them. This file knows none
//! of them.

use super::work::Work;
use crate::backend::Device;
use anyhow::{bail, Result};
use cudarc::driver::CudaSlice;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The device a piece of memory belongs to: a GPU by ordinal, the emulator, or the plan's
/// recorder. A kernel only ever gets memory of its own device (a GPU address means nothing on the
/// host, and the reverse).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    Gpu(usize),
    Emu,
    Plan,
}

/// Dynamic shared memory a kernel may use without opting in; above it the GPU layer sets the
/// kernel's maximum (`CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES`) before the launch.
pub const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// Device memory, real or emulated: a raw address (what kernels get) and its owner.
pub struct DevMem {
    ptr: u64,
    bytes: usize,
    owner: Owner,
    home: Home,
}

enum Owner {
    Gpu(CudaSlice<u8>),
    /// Host memory from the emulator's allocator, given back on drop with the function the
    /// emulator handed over with it.
    Emu {
        free: fn(u64),
    },
    /// A range of a shared allocation, which it keeps alive (the parameter arena's tensors).
    View(Arc<DevMem>),
    /// Addresses without storage ([`super::record::Recorder`]), counted in its [`Usage`].
    Plan(Arc<Usage>),
}

/// Bytes of device memory held, and the most held at once since [`Usage::reset_peak`]: what a
/// run would need of a GPU, counted by the plan's layer, which has no memory to run out of.
#[derive(Debug, Default)]
pub struct Usage {
    held: AtomicU64,
    peak: AtomicU64,
}

impl Usage {
    fn take(&self, bytes: usize) {
        let held = self.held.fetch_add(bytes as u64, Ordering::SeqCst) + bytes as u64;
        self.peak.fetch_max(held, Ordering::SeqCst);
    }

    fn give(&self, bytes: usize) {
        self.held.fetch_sub(bytes as u64, Ordering::SeqCst);
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }

    /// The most bytes held at once.
    pub fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }

    /// Starts a new peak from what is held now.
    pub fn reset_peak(&self) {
        self.peak.store(self.held(), Ordering::SeqCst);
    }
}

impl DevMem {
    pub(super) fn gpu(ptr: u64, bytes: usize, slice: CudaSlice<u8>, ordinal: usize) -> DevMem {
        DevMem {
            ptr,
            bytes,
            owner: Owner::Gpu(slice),
            home: Home::Gpu(ordinal),
        }
    }

    /// # Safety
    /// `ptr` comes from the emulator's allocator, holds at least `bytes` bytes and is owned by
    /// nothing else; `free` gives it back to that allocator.
    pub(super) unsafe fn emu(ptr: u64, bytes: usize, free: fn(u64)) -> DevMem {
        DevMem {
            ptr,
            bytes,
            owner: Owner::Emu { free },
            home: Home::Emu,
        }
    }

    /// `bytes` at fake address `ptr`, for the plan layer, held in `usage` until dropped:
    /// nothing may read or write it.
    pub(super) fn plan(ptr: u64, bytes: usize, usage: &Arc<Usage>) -> DevMem {
        usage.take(bytes);
        DevMem {
            ptr,
            bytes,
            owner: Owner::Plan(Arc::clone(usage)),
            home: Home::Plan,
        }
    }

    /// The same memory, made shareable by [`DevMem::view`]s.
    pub fn into_shared(self) -> DevMem {
        let (ptr, bytes, home) = (self.ptr, self.bytes, self.home);
        DevMem {
            ptr,
            bytes,
            owner: Owner::View(Arc::new(self)),
            home,
        }
    }

    /// `bytes` bytes from byte `offset` of memory made by [`DevMem::into_shared`].
    pub fn view(&self, offset: usize, bytes: usize) -> Result<DevMem> {
        let Owner::View(root) = &self.owner else {
            bail!("a view of device memory that is not shared (an arena is made shared)");
        };
        if offset.checked_add(bytes).is_none_or(|end| end > self.bytes) {
            bail!(
                "a view of {bytes} bytes at {offset} past the end of {} bytes",
                self.bytes
            );
        }
        Ok(DevMem {
            ptr: self.ptr + offset as u64,
            bytes,
            owner: Owner::View(Arc::clone(root)),
            home: self.home,
        })
    }

    /// True when this is the range at byte `offset` of `base`, on the same device.
    pub fn is_at(&self, base: &DevMem, offset: usize) -> bool {
        self.home == base.home && self.ptr == base.ptr + offset as u64
    }

    /// True for a view (copies go through its raw address).
    pub(super) fn is_view(&self) -> bool {
        matches!(self.owner, Owner::View(_))
    }

    /// Its size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The address kernels get.
    pub(super) fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device this memory lives on.
    pub fn device(&self) -> Device {
        match self.home {
            Home::Gpu(_) => Device::Cuda,
            Home::Emu => Device::Emu,
            Home::Plan => Device::Plan,
        }
    }

    /// The device this memory lives on, GPUs by ordinal.
    pub fn home(&self) -> Home {
        self.home
    }

    /// "cuda" or "emu", for messages.
    pub fn place(&self) -> &'static str {
        self.device().name()
    }

    pub(super) fn gpu_slice(&self) -> Result<&CudaSlice<u8>> {
        match &self.owner {
            Owner::Gpu(s) => Ok(s),
            _ => bail!("an emulated buffer or a view was given to the GPU as an allocation"),
        }
    }

    pub(super) fn gpu_slice_mut(&mut self) -> Result<&mut CudaSlice<u8>> {
        match &mut self.owner {
            Owner::Gpu(s) => Ok(s),
            _ => bail!("an emulated buffer or a view was given to the GPU as an allocation"),
        }
    }

    /// True for emulated memory, an allocation or a view of one.
    fn on_emu(&self) -> bool {
        self.home == Home::Emu
    }

    /// The bytes of emulated device memory (it is host memory).
    pub(super) fn emu_bytes(&self) -> Result<&[u8]> {
        if !self.on_emu() {
            bail!("a GPU buffer was given to the emulator");
        }
        // SAFETY: emulated memory is a live host allocation of `bytes` bytes owned by self (or,
        // for a view, by the allocation it keeps alive).
        Ok(unsafe { std::slice::from_raw_parts(self.ptr as *const u8, self.bytes) })
    }

    pub(super) fn emu_bytes_mut(&mut self) -> Result<&mut [u8]> {
        if !self.on_emu() {
            bail!("a GPU buffer was given to the emulator");
        }
        // SAFETY: as above. Views of one arena never overlap, and the arena as a whole is only
        // touched by kernels and copies, never through a Rust slice alive at the same time.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr as *mut u8, self.bytes) })
    }
}

impl Drop for DevMem {
    fn drop(&mut self) {
        match &self.owner {
            Owner::Emu { free } => free(self.ptr),
            Owner::Plan(usage) => usage.give(self.bytes),
            Owner::Gpu(_) | Owner::View(_) => {}
        }
    }
}

/// Grid, block and dynamic shared memory of a launch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub smem: u32,
}

impl Launch {
    /// A 1-D launch of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32) -> Launch {
        Launch {
            grid: (blocks, 1, 1),
            block: (threads, 1, 1),
            smem: 0,
        }
    }

    /// A grid-stride launch over `total` elements: 256 threads a block, at most 65536 blocks
    /// (16M threads; a thread then handles a few elements of a larger tensor).
    pub fn grid_stride(total: usize) -> Launch {
        const THREADS: usize = 256;
        Launch::linear(
            total.div_ceil(THREADS).clamp(1, 1 << 16) as u32,
            THREADS as u32,
        )
    }

    /// One warp per item (a row), 8 warps per block; `items` fits the kernels' `int`.
    pub fn warp_per_item(items: usize) -> Launch {
        const WARPS: u32 = 8;
        Launch::linear((items as u32).div_ceil(WARPS), WARPS * 32)
    }
}

/// A kernel's arguments as `cuLaunchKernel` takes them: one 8-byte slot per parameter (every
/// parameter of our kernels is a pointer or a scalar of at most 8 bytes) and its size.
#[derive(Default)]
pub struct Args {
    slots: Vec<u64>,
    sizes: Vec<u32>,
    /// Where each pointer's memory lives, checked against the launching device.
    homes: Vec<Home>,
    /// The launch's minimum work, for the plan layer; no kernel sees it.
    work: Option<Work>,
}

impl Args {
    pub fn new() -> Args {
        Args::default()
    }

    fn push(mut self, bits: u64, size: u32) -> Args {
        self.slots.push(bits);
        self.sizes.push(size);
        self
    }

    /// A device pointer.
    pub fn ptr(self, m: &DevMem) -> Args {
        self.ptr_at(m, 0)
    }

    /// A device pointer `offset` bytes into `m` (panics past its end: a launcher bug).
    pub fn ptr_at(mut self, m: &DevMem, offset: usize) -> Args {
        assert!(
            offset <= m.bytes,
            "pointer offset {offset} past a {}-byte buffer",
            m.bytes
        );
        self.homes.push(m.home);
        self.push(m.ptr + offset as u64, 8)
    }

    /// A null pointer (an optional input left out).
    pub fn null(self) -> Args {
        self.push(0, 8)
    }

    /// An optional device pointer: null when absent.
    pub fn opt_ptr(self, m: Option<&DevMem>) -> Args {
        match m {
            Some(m) => self.ptr(m),
            None => self.null(),
        }
    }

    pub fn i32(self, v: i32) -> Args {
        self.push(v as u32 as u64, 4)
    }

    /// Each of `values` as an `int` argument, in order (the callers checked that they fit).
    pub fn i32s(self, values: impl IntoIterator<Item = i64>) -> Args {
        values.into_iter().fold(self, |a, v| a.i32(v as i32))
    }

    pub fn i64(self, v: i64) -> Args {
        self.push(v as u64, 8)
    }

    pub fn u32(self, v: u32) -> Args {
        self.push(v as u64, 4)
    }

    pub fn f32(self, v: f32) -> Args {
        self.push(v.to_bits() as u64, 4)
    }

    /// States what the launch must do at least (`insclr-cu plan` reads it; kernels never do).
    pub fn work(mut self, w: Work) -> Args {
        self.work = Some(w);
        self
    }

    /// One pointer per slot; a 4-byte value sits in the low half of its slot (little-endian).
    pub(super) fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect()
    }

    pub(super) fn sizes(&self) -> &[u32] {
        &self.sizes
    }

    /// Where each pointer's memory lives.
    pub(super) fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// The launch's stated work, taken (the plan layer records it once).
    pub(super) fn take_work(&mut self) -> Option<Work> {
        self.work.take()
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!(
    "Args packs 4-byte kernel arguments into the low half of 8-byte slots (little-endian)"
);

//! The device layer under the CUDA backend, chosen once per backend: a real GPU
//! ([`super::driver`]), the emulated one ([`super::emu`]), or none at all ([`super::record`],
//! which writes launches down for `insclr-cu plan`). Memory, copies and launches by kernel name
//! go to the one chosen, after the checks all three share (the device a buffer belongs to, copy
//! sizes, a GPU's launch limits). The launchers in `cuda/<family>.rs` run unchanged on all three.
//!
//! This file sits above the layers and their shared types ([`super::device`]); none of them
//! knows it.

use super::device::{Args, DevMem, Home, Launch};
use super::driver::Gpu;
use super::emu::Emu;
use super::occupancy::{self, SM90};
use super::record::{Event, Recorder};
use anyhow::{bail, Result};

/// Where the CUDA backend runs its kernels.
pub enum Layer {
    Gpu(Box<Gpu>),
    Emu(Emu),
    /// No device: launches are recorded, memory has no storage.
    Plan(Recorder),
}

impl Layer {
    /// The device this layer's memory and kernels are on.
    pub fn home(&self) -> Home {
        match self {
            Layer::Gpu(g) => Home::Gpu(g.info.ordinal),
            Layer::Emu(_) => Home::Emu,
            Layer::Plan(_) => Home::Plan,
        }
    }

    /// An error unless `m` is this layer's memory.
    pub fn check_home(&self, m: &DevMem) -> Result<()> {
        if m.home() != self.home() {
            bail!(
                "a buffer of {:?} was given to {:?}; a buffer belongs to the backend that made it",
                m.home(),
                self.home()
            );
        }
        Ok(())
    }

    pub fn alloc(&self, bytes: usize) -> Result<DevMem> {
        match self {
            Layer::Gpu(g) => g.alloc(bytes),
            Layer::Emu(e) => e.alloc(bytes),
            Layer::Plan(p) => Ok(p.alloc(bytes)),
        }
    }

    pub fn write(&self, src: &[u8], dst: &mut DevMem) -> Result<()> {
        self.check_home(dst)?;
        check_copy(src.len(), dst.bytes())?;
        match self {
            Layer::Gpu(g) => g.write(src, dst),
            Layer::Emu(_) => {
                dst.emu_bytes_mut()?.copy_from_slice(src);
                Ok(())
            }
            Layer::Plan(p) => {
                p.record(Event::Copy {
                    to_device: true,
                    bytes: src.len(),
                });
                Ok(())
            }
        }
    }

    pub fn read(&self, src: &DevMem, dst: &mut [u8]) -> Result<()> {
        self.check_home(src)?;
        check_copy(dst.len(), src.bytes())?;
        match self {
            Layer::Gpu(g) => g.read(src, dst),
            Layer::Emu(_) => {
                dst.copy_from_slice(src.emu_bytes()?);
                Ok(())
            }
            // Zeros: what a step reads back (a norm, a loss) only steers host decisions, and
            // the plan is of the step that such values give.
            Layer::Plan(p) => {
                p.record(Event::Copy {
                    to_device: false,
                    bytes: dst.len(),
                });
                dst.fill(0);
                Ok(())
            }
        }
    }

    pub fn zero(&self, dst: &mut DevMem) -> Result<()> {
        self.check_home(dst)?;
        match self {
            Layer::Gpu(g) => g.zero(dst),
            Layer::Emu(_) => {
                dst.emu_bytes_mut()?.fill(0);
                Ok(())
            }
            Layer::Plan(p) => {
                p.record(Event::Memset { bytes: dst.bytes() });
                Ok(())
            }
        }
    }

    pub fn synchronize(&self) -> Result<()> {
        match self {
            Layer::Gpu(g) => g.synchronize(),
            Layer::Emu(_) | Layer::Plan(_) => Ok(()),
        }
    }

    /// Launches `kernel`.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and type (the emulator checks
    /// number and sizes; a GPU checks nothing), and every pointer in it must address memory the
    /// kernel may access for this launch shape.
    pub unsafe fn launch(&self, kernel: &str, cfg: Launch, args: &mut Args) -> Result<()> {
        if let Some(h) = args.homes().iter().find(|&&h| h != self.home()) {
            bail!(
                "{kernel}: a buffer of {h:?} was given to a kernel on {:?}; a buffer belongs to \
                 the backend that made it",
                self.home()
            );
        }
        check_launch(kernel, &cfg)?;
        match self {
            Layer::Gpu(g) => g.launch(kernel, cfg, args),
            Layer::Emu(e) => e.launch(kernel, cfg, args),
            Layer::Plan(p) => {
                p.record(Event::Launch {
                    kernel: kernel.to_string(),
                    cfg,
                    work: args.take_work(),
                });
                Ok(())
            }
        }
    }
}

/// The launch limits of an sm_90 GPU, checked before any layer launches so the emulator and the
/// plan refuse what a GPU would: a grid over 2^31-1 x 65535 x 65535 blocks, a block of over
/// 1024 threads (or 64 deep), an empty grid or block, and shared memory over the 227 KiB a
/// block can opt in to (static, from the build's ptxas report, plus dynamic).
fn check_launch(kernel: &str, cfg: &Launch) -> Result<()> {
    let ((gx, gy, gz), (bx, by, bz)) = (cfg.grid, cfg.block);
    let threads = bx as u64 * by as u64 * bz as u64;
    if gx == 0 || gy == 0 || gz == 0 || threads == 0 {
        bail!(
            "{kernel}: empty launch (grid {:?}, block {:?})",
            cfg.grid,
            cfg.block
        );
    }
    if gx > i32::MAX as u32 || gy > 65_535 || gz > 65_535 {
        bail!(
            "{kernel}: grid {:?} is over the limit (2^31-1, 65535, 65535)",
            cfg.grid
        );
    }
    if threads > 1024 || bz > 64 {
        bail!(
            "{kernel}: block {:?} is over 1024 threads or 64 deep",
            cfg.block
        );
    }
    let static_smem = occupancy::resources(kernel).map_or(0, |r| r.static_smem);
    if static_smem as u64 + cfg.smem as u64 > SM90.smem_per_block as u64 {
        bail!(
            "{kernel}: {} bytes of dynamic shared memory (+ {static_smem} static) exceed the {} \
             bytes (227 KiB) a block can have on sm_90; use fewer pipeline stages or a smaller tile",
            cfg.smem,
            SM90.smem_per_block
        );
    }
    Ok(())
}

fn check_copy(host: usize, device: usize) -> Result<()> {
    if host != device {
        bail!("copy of {host} bytes to or from a device buffer of {device} bytes");
    }
    Ok(())
}

//! The device layer that runs nothing (`insclr-cu plan`): its memory is addresses without
//! storage, a copy or a memset moves no byte, a read back gives zeros, and a launch is written
//! down (kernel, grid, block, dynamic shared memory and the launcher's [`Work`]) after the same
//! checks a GPU launch passes. The launchers above it run unchanged, so a training step on it
//! records every launch the real step makes, shaped exactly as the launchers shape it.

use super::device::{DevMem, Launch, Usage};
use super::work::Work;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One device operation of a recorded run.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    Launch {
        kernel: String,
        cfg: Launch,
        /// `None` for a launcher that does not state its work yet.
        work: Option<Work>,
    },
    /// A copy between host and device (`to_device`: host to device).
    Copy {
        to_device: bool,
        bytes: usize,
    },
    Memset {
        bytes: usize,
    },
}

/// Fake device memory and a log of operations.
pub struct Recorder {
    next: AtomicU64,
    on: AtomicBool,
    log: Mutex<Vec<Event>>,
    usage: Arc<Usage>,
}

/// Where fake addresses start: far from zero, so a null pointer is never one of them.
const BASE: u64 = 1 << 40;
/// cudaMalloc's alignment.
const ALIGN: u64 = 256;

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            next: AtomicU64::new(BASE),
            on: AtomicBool::new(false),
            log: Mutex::new(Vec::new()),
            usage: Arc::default(),
        }
    }

    /// Starts (or stops) writing operations down; allocations are never recorded (a step
    /// allocates only on its first run, and the plan is of a later one).
    pub fn set_recording(&self, on: bool) {
        self.on.store(on, Ordering::SeqCst);
    }

    /// The operations recorded so far, leaving the log empty.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A range of distinct addresses of `bytes` bytes (at least one, as cudaMalloc maps).
    pub fn alloc(&self, bytes: usize) -> DevMem {
        let span = (bytes.max(1) as u64).div_ceil(ALIGN) * ALIGN;
        let ptr = self.next.fetch_add(span, Ordering::Relaxed);
        DevMem::plan(ptr, bytes, &self.usage)
    }

    /// The device memory its allocations hold, and the most they held at once.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    pub(super) fn record(&self, e: Event) {
        if self.on.load(Ordering::SeqCst) {
            self.log.lock().unwrap_or_else(|e| e.into_inner()).push(e);
        }
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

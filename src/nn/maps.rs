//! The maps of an eval-mode forward. With no backward to follow, nothing reads a layer's output
//! after the layers that consume it ran, so a backbone's eval forward (extraction, evaluation,
//! candidate pools) writes into a few reused [`Slot`]s instead of every layer's own buffers: a
//! ResNet-101 then holds about 80 values per input pixel of each image instead of about 640.

use super::empty;
use crate::backend::{Backend, Buf, DType, Device};
use anyhow::{bail, Result};

/// Where a layer writes its output: its own buffer (kept for the backward), or a [`Slot`].
pub(crate) trait Out {
    /// The output as a buffer of `len` elements of `dtype`, contents left as they were.
    fn sized(&mut self, be: &dyn Backend, dtype: DType, len: usize) -> Result<&mut Buf>;
}

impl Out for Buf {
    fn sized(&mut self, be: &dyn Backend, dtype: DType, len: usize) -> Result<&mut Buf> {
        be.ensure(self, dtype, len)?;
        Ok(self)
    }
}

/// One reused map. On a device it is one allocation (an arena) grown to its largest use and
/// handed out as an exact-length view, so that the differently sized maps of one forward share
/// it without a reallocation per layer; host memory is reused by `Backend::ensure` anyway.
pub(crate) struct Slot {
    arena: Buf,
    view: Buf,
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            arena: empty(),
            view: empty(),
        }
    }
}

impl Slot {
    /// The map it holds (what the last [`Out::sized`] handed out).
    pub fn buf(&self) -> &Buf {
        &self.view
    }
}

impl Out for Slot {
    fn sized(&mut self, be: &dyn Backend, dtype: DType, len: usize) -> Result<&mut Buf> {
        if be.device() == Device::Cpu {
            be.ensure(&mut self.view, dtype, len)?;
            return Ok(&mut self.view);
        }
        let same = |b: &Buf| b.dtype() == dtype && be.owns(b);
        if !(self.view.len() == len && same(&self.view)) {
            if !(self.arena.len() >= len && same(&self.arena)) {
                // The old arena goes before the new one comes: a larger image does not hold both.
                (self.view, self.arena) = (empty(), empty());
                self.arena = be.arena(dtype, len.max(1))?;
            }
            self.view = be.view(&self.arena, 0, len)?;
        }
        Ok(&mut self.view)
    }
}

/// Scratch maps of one block, free again when it ends.
#[derive(Default)]
pub(crate) struct Scratch {
    /// A convolution's output, before its BatchNorm.
    pub z: Slot,
    /// A block's inner maps (ResNet's first two units; Lite0's expansion and depthwise).
    pub a: Slot,
    pub b: Slot,
    /// A ResNet block's shortcut (its downsample's output).
    pub d: Slot,
}

/// Where [`EvalMaps::io`] keeps the last stride-16 stage's output (for local features).
pub(crate) const MID: usize = 2;

/// The slots of a backbone's eval forward: the blocks read one of `io` and write another in
/// turn, and the block that ends the stride-16 stages writes [`MID`], which the rest leave alone.
///
/// Once a training forward has allocated every layer's own buffers, eval forwards write into
/// those instead, as training forwards do, and the slots are given back: a training step's
/// eval forward (InsCLR's views without augmentation) then holds no memory of its own.
#[derive(Default)]
pub(crate) struct EvalMaps {
    pub scratch: Scratch,
    pub io: [Slot; 3],
    /// The slot of `io` holding the last eval forward's output; `None` after a forward
    /// through the layers' own buffers (the output is then the last layer's).
    pub out: Option<usize>,
    /// A training forward ran: forwards go through the layers' own buffers.
    layers: bool,
}

impl EvalMaps {
    /// True when a forward (`train` or not) runs through the slots.
    pub fn used(&self, train: bool) -> bool {
        !train && !self.layers
    }

    /// Before a forward through the layers' own buffers: the slots are given back, and every
    /// later forward goes through the layers (see the type's doc).
    pub fn use_layers(&mut self) {
        *self = EvalMaps {
            layers: true,
            ..EvalMaps::default()
        };
    }

    /// The slot a block writes after reading slot `from`: [`MID`] when it ends the stride-16
    /// stages (`keep`), else the io slot that is neither `from` nor `MID`.
    pub fn next(from: usize, keep: bool) -> usize {
        match (keep, from) {
            (true, _) => MID,
            (false, 0) => 1,
            (false, _) => 0,
        }
    }

    /// Slot `from` to read and slot `to` to write, with the scratch.
    pub fn pass(&mut self, from: usize, to: usize) -> Result<(&Buf, &mut Slot, &mut Scratch)> {
        if from == to || from.max(to) >= self.io.len() {
            bail!("an eval forward's block would read slot {from} and write slot {to}");
        }
        let (lo, hi) = self.io.split_at_mut(from.max(to));
        let (low, high) = (&mut lo[from.min(to)], &mut hi[0]);
        let (x, y) = if from < to { (low, high) } else { (high, low) };
        Ok((x.buf(), y, &mut self.scratch))
    }

    /// The output of the last forward when it was an eval forward.
    pub fn output(&self) -> Option<&Buf> {
        self.out.map(|i| self.io[i].buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_alternate_between_two_slots_and_leave_the_kept_one_alone() {
        let mut from = 0;
        let mut seen = Vec::new();
        for i in 0..6 {
            let to = EvalMaps::next(from, i == 2);
            assert_ne!(to, from);
            seen.push(to);
            from = to;
        }
        assert_eq!(seen, [1, 0, MID, 0, 1, 0]);
        let mut maps = EvalMaps::default();
        assert!(maps.pass(1, 1).is_err());
        assert!(maps.pass(0, 3).is_err());
        assert!(maps.pass(MID, 0).is_ok());
    }

    #[test]
    fn a_host_slot_takes_any_length_and_dtype() {
        let be = crate::backend::CpuBackend::new();
        let be: &dyn Backend = &be;
        let mut s = Slot::default();
        assert_eq!(s.sized(be, DType::F32, 10).unwrap().len(), 10);
        assert_eq!(s.sized(be, DType::BF16, 4).unwrap().len(), 4);
        assert_eq!(s.buf().dtype(), DType::BF16);
    }
}

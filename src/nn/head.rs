//! The retrieval head on pooled features (spec section 3, G16): `norm_linear_norm`
//! (L2 -> Linear without bias -> L2) or INSTRE's `linear_norm` (Linear with bias -> L2), or
//! no head at all (`MODEL.HEAD.ENABLE = false`, not in the paper: only the final L2).

use super::head_init::LinearInit;
use super::linear::Linear;
use super::{empty, ensure_len, Param};
use crate::backend::{Backend, Buf, L2Norm};
use crate::rng::Rng;
use anyhow::{anyhow, bail, Context, Result};

/// Which head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// L2 -> Linear(C -> D, no bias) -> L2 (GLDv2 configs).
    NormLinearNorm,
    /// Linear(C -> D, with bias) -> L2 (INSTRE configs).
    LinearNorm,
    /// No linear layer: the descriptor is the L2-normalised GeM vector (`MODEL.HEAD.ENABLE =
    /// false`), D = C.
    L2Only,
}

impl HeadKind {
    /// Parses the original config's names (`norm_linear_norm`, `linear_norm`).
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "norm_linear_norm" => Ok(HeadKind::NormLinearNorm),
            "linear_norm" => Ok(HeadKind::LinearNorm),
            _ => bail!("unknown head {s:?}; use norm_linear_norm or linear_norm"),
        }
    }
}

/// Row-wise L2 normalisation as a layer.
pub struct L2Normalize {
    shape: Option<L2Norm>,
    /// Output of the last forward.
    pub y: Buf,
    /// Input gradient of the last backward.
    pub dx: Buf,
}

impl L2Normalize {
    /// A normalisation with unallocated buffers.
    pub fn new() -> Self {
        L2Normalize {
            shape: None,
            y: empty(),
            dx: empty(),
        }
    }

    /// `y = x / max(||x||, 1e-12)` per row of `rows x cols`.
    pub fn forward(&mut self, be: &dyn Backend, x: &Buf, rows: usize, cols: usize) -> Result<()> {
        let s = L2Norm::new(rows, cols);
        ensure_len(be, &mut self.y, rows * cols)?;
        be.l2norm_fwd(x, &mut self.y, s).context("L2 forward")?;
        self.shape = Some(s);
        Ok(())
    }

    /// `dx` from the forward's input and `dy`.
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        let s = self
            .shape
            .ok_or_else(|| anyhow!("L2 backward before its forward"))?;
        ensure_len(be, &mut self.dx, s.rows * s.cols)?;
        be.l2norm_bwd(x, dy, &mut self.dx, s).context("L2 backward")
    }
}

impl Default for L2Normalize {
    fn default() -> Self {
        Self::new()
    }
}

/// The head, its linear layer named `head.fc` (none for [`HeadKind::L2Only`]).
pub struct Head {
    pub kind: HeadKind,
    pre: Option<L2Normalize>,
    pub fc: Option<Linear>,
    post: L2Normalize,
    /// Input width (pooled channels).
    c: usize,
}

impl Head {
    /// A head from `c` pooled channels to `d`-dimensional descriptors (`d` is unused by
    /// [`HeadKind::L2Only`], whose descriptors are `c`-dimensional).
    pub fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        kind: HeadKind,
        c: usize,
        d: usize,
    ) -> Result<Self> {
        let bias = kind == HeadKind::LinearNorm;
        let fc = match kind {
            HeadKind::L2Only => None,
            _ => Some(Linear::new(be, rng, "head.fc", c, d, bias)?),
        };
        Ok(Head {
            kind,
            pre: (kind == HeadKind::NormLinearNorm).then(L2Normalize::new),
            fc,
            post: L2Normalize::new(),
            c,
        })
    }

    /// Input width (pooled channels).
    pub fn in_dim(&self) -> usize {
        self.c
    }

    /// Descriptor length.
    pub fn out_dim(&self) -> usize {
        self.fc.as_ref().map_or(self.c, |fc| fc.d_out)
    }

    /// Descriptors of the last forward, `n x d`, unit rows.
    pub fn y(&self) -> &Buf {
        &self.post.y
    }

    /// Input gradient of the last backward.
    pub fn dx(&self) -> &Buf {
        match (&self.pre, &self.fc) {
            (Some(pre), _) => &pre.dx,
            (None, Some(fc)) => &fc.dx,
            (None, None) => &self.post.dx,
        }
    }

    /// `x` is `n x c` pooled features.
    pub fn forward(&mut self, be: &dyn Backend, x: &Buf, n: usize) -> Result<()> {
        let Some(fc) = self.fc.as_mut() else {
            return self.post.forward(be, x, n, self.c);
        };
        let fc_in = match self.pre.as_mut() {
            Some(pre) => {
                pre.forward(be, x, n, self.c)?;
                &pre.y
            }
            None => x,
        };
        fc.forward(be, fc_in, n)?;
        self.post.forward(be, &fc.y, n, fc.d_out)
    }

    /// Backward from the descriptors' gradient; `x` is the forward's input.
    pub fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        let Some(fc) = self.fc.as_mut() else {
            return self.post.backward(be, x, dy);
        };
        self.post.backward(be, &fc.y, dy)?;
        match self.pre.as_mut() {
            Some(pre) => {
                fc.backward(be, &pre.y, &self.post.dx)?;
                pre.backward(be, x, &fc.dx)
            }
            None => fc.backward(be, x, &self.post.dx),
        }
    }

    /// Replaces `head.fc`'s values by `init` (its bias is dropped when the head has none).
    pub fn set_fc(&mut self, be: &dyn Backend, init: &LinearInit) -> Result<()> {
        let fc = self
            .fc
            .as_mut()
            .ok_or_else(|| anyhow!("no head.fc to initialise (MODEL.HEAD.ENABLE = false)"))?;
        let (d, c) = (fc.d_out, fc.d_in);
        if init.weight.len() != d * c || init.bias.len() != d {
            bail!(
                "head init is {} weights and {} biases, head.fc is {d} x {c}",
                init.weight.len(),
                init.bias.len()
            );
        }
        fc.weight.value = be.upload(&init.weight)?;
        if let Some(b) = fc.bias.as_mut() {
            b.value = be.upload(&init.bias)?;
        }
        Ok(())
    }

    /// `head.fc.weight` (and `head.fc.bias`).
    pub fn params(&self) -> Vec<&Param> {
        self.fc.as_ref().map_or_else(Vec::new, |fc| fc.params())
    }

    /// Mutable twin of [`Head::params`].
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.fc.as_mut().map_or_else(Vec::new, |fc| fc.params_mut())
    }
}

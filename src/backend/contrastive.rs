//! InsCLR's contrastive loss (spec 4.6) over a similarity block: per-row loss sums and active
//! pair counts, and `dL/dS`, in one pass. `loss.rs` builds the similarities and the feature
//! gradients around it with `matmul`. Kernels in `kernels/contrastive.cu`.

use super::{check_dtypes, check_len, not_implemented, Backend, Buf, Checked, DType, Op};
use anyhow::{bail, Result};

/// Shape of one loss evaluation over an `n1 x n2` similarity block `S` with labels `y1` (rows)
/// and `y2` (columns). A row counts unless `memory` is set and its label is <= 0. A same-label
/// pair is an active positive when `S < pos_th`, a different-label pair an active negative
/// when `S > margin`; `inv_rows` is 1 / (rows that count), the gradient's magnitude.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Contrastive {
    pub n1: usize,
    pub n2: usize,
    pub margin: f32,
    pub pos_th: f32,
    pub memory: bool,
    pub inv_rows: f32,
}

impl Contrastive {
    fn check(
        self,
        s: &Buf,
        y1: &Buf,
        y2: &Buf,
        grad: Option<&Buf>,
        stats: &Buf,
    ) -> Result<Checked<Self>> {
        if !(self.margin.is_finite() && self.pos_th.is_finite() && self.inv_rows.is_finite()) {
            bail!("contrastive loss {self:?}: margin, threshold and 1/rows must be finite");
        }
        check_len(&self, self.n1 * self.n2, &[s])?;
        check_len(&self, self.n1, &[y1])?;
        check_len(&self, self.n2, &[y2])?;
        check_len(&self, 3 * self.n1, &[stats])?;
        check_dtypes(
            &self,
            &[
                (s, DType::F32),
                (y1, DType::I64),
                (y2, DType::I64),
                (stats, DType::F32),
            ],
        )?;
        if let Some(g) = grad {
            check_len(&self, self.n1 * self.n2, &[g])?;
            check_dtypes(&self, &[(g, DType::F32)])?;
        }
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait ContrastiveOps {
    /// See [`Contrastive`].
    fn contrastive(
        &self,
        _s: &Buf,
        _y1: &Buf,
        _y2: &Buf,
        _grad: Option<&mut Buf>,
        _stats: &mut Buf,
        _shape: Checked<Contrastive>,
    ) -> Result<()> {
        Err(not_implemented(Op::Contrastive))
    }
}

impl dyn Backend + '_ {
    /// The loss over similarity block `s`: per row `stats[3i..3i+3]` = (loss sum, active
    /// positives, active negatives), and `dL/dS` into `grad` when given (zero on rows that do
    /// not count).
    pub fn contrastive(
        &self,
        s: &Buf,
        y1: &Buf,
        y2: &Buf,
        grad: Option<&mut Buf>,
        stats: &mut Buf,
        shape: Contrastive,
    ) -> Result<()> {
        let shape = shape.check(s, y1, y2, grad.as_deref(), stats)?;
        self.require(Op::Contrastive, s.dtype())?;
        self.contrastive_ops()
            .contrastive(s, y1, y2, grad, stats, shape)
    }
}

//! Memory-bank row moves on the device: `dst[dst_idx[t]] = src[src_idx[t]]`, rows of `dim`.
//! Scatters (a batch into its dataset rows) and gathers (bank rows into a block) are both this
//! one op. Kernels in `kernels/bank.cu`.

use super::{not_implemented, same_dtype, Backend, Buf, Checked, Op};
use anyhow::{bail, Result};

/// Shape of a row move between a `src` of `src.len() / dim` rows and a `dst` of
/// `dst.len() / dim` rows, with index lists checked on the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyRows {
    pub dim: usize,
}

impl CopyRows {
    fn check(
        self,
        src: &Buf,
        dst: &Buf,
        src_idx: &[usize],
        dst_idx: &[usize],
    ) -> Result<Checked<Self>> {
        let d = self.dim;
        if d == 0 || src.len() % d != 0 || dst.len() % d != 0 {
            bail!(
                "row copy: buffers of {} and {} elements are not whole rows of {d}",
                src.len(),
                dst.len()
            );
        }
        same_dtype(&self, &[src, dst])?;
        if src_idx.len() != dst_idx.len() {
            bail!(
                "row copy: {} source rows for {} destinations",
                src_idx.len(),
                dst_idx.len()
            );
        }
        let (ns, nd) = (src.len() / d, dst.len() / d);
        if let Some(&i) = src_idx.iter().find(|&&i| i >= ns) {
            bail!("row copy: source row {i} outside the {ns} rows");
        }
        if let Some(&i) = dst_idx.iter().find(|&&i| i >= nd) {
            bail!("row copy: destination row {i} outside the {nd} rows");
        }
        let mut sorted = dst_idx.to_vec();
        sorted.sort_unstable();
        if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
            bail!(
                "row copy: destination row {} is written twice; keep one source for it",
                w[0]
            );
        }
        Ok(Checked(self))
    }
}

/// What a backend implements for this family.
pub trait BankOps {
    /// See [`CopyRows`].
    fn copy_rows(
        &self,
        _src: &Buf,
        _dst: &mut Buf,
        _src_idx: &[usize],
        _dst_idx: &[usize],
        _s: Checked<CopyRows>,
    ) -> Result<()> {
        Err(not_implemented(Op::CopyRows))
    }
}

impl dyn Backend + '_ {
    /// `dst[dst_idx[t]] = src[src_idx[t]]` for every t, rows of `s.dim`; destinations distinct.
    pub fn copy_rows(
        &self,
        src: &Buf,
        dst: &mut Buf,
        src_idx: &[usize],
        dst_idx: &[usize],
        s: CopyRows,
    ) -> Result<()> {
        let s = s.check(src, dst, src_idx, dst_idx)?;
        self.require(Op::CopyRows, src.dtype())?;
        self.bank_ops().copy_rows(src, dst, src_idx, dst_idx, s)
    }
}

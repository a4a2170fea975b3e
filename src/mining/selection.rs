//! Mini-batch selection (spec 4.5.1): each anchor keeps the neighbours whose no-DA feature is
//! similar enough to its own; rejected neighbours get the negated tuple label `-(a+1)` (they
//! stay in the batch loss, leave the memory loss and mining; trap G6).

use super::tuples::Batch;
use crate::backend::{Backend, BatchSelect, Buf, DType};
use anyhow::{bail, Result};

/// The original's `SELECTION.TYPE` with its `THRESH`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SelectionRule {
    /// Keep neighbour j when `s_j >= thresh` (shipped: 0.6).
    Fixed(f32),
    /// Keep neighbour j when `s_j / max_j s_j >= thresh` (as the original, no guard for a
    /// non-positive max: then the ratios flip sign and are compared as they are).
    Dynamic(f32),
}

/// Threshold of the shipped impr configs.
pub const SELECTION_THRESH: f32 = 0.6;

/// Applies `rule` to `batch` using the no-DA features `g` (`batch.indices.len() x d`, batch
/// order, on `be`; the similarities and keep decisions are `be.batch_select`). Rewrites rejected
/// neighbours' labels to `-(a+1)` and returns the keep flag of every neighbour, `B x K` in
/// batch order.
pub fn select_in_batch(
    be: &dyn Backend,
    batch: &mut Batch,
    g: &Buf,
    d: usize,
    rule: SelectionRule,
) -> Result<Vec<bool>> {
    let (b, k) = (batch.anchors.len(), batch.k);
    if g.len() != batch.indices.len() * d {
        bail!(
            "mini-batch selection: no-DA features hold {} values, expected {} images x {d}",
            g.len(),
            batch.indices.len()
        );
    }
    // Anchors take the batch's first positions.
    let anchor_pos: Vec<usize> = (0..b).collect();
    let neighbor_pos: Vec<usize> = (0..b)
        .flat_map(|a| (0..k).map(move |j| (a, j)))
        .map(|(a, j)| batch.neighbor_pos(a, j))
        .collect();
    let (dynamic, thresh) = match rule {
        SelectionRule::Fixed(t) => (false, t),
        SelectionRule::Dynamic(t) => (true, t),
    };
    let mut flags = be.zeros(DType::I32, b * k)?;
    let shape = BatchSelect {
        anchors: b,
        k,
        dim: d,
        dynamic,
        thresh,
    };
    be.batch_select(g, &anchor_pos, &neighbor_pos, &mut flags, shape)?;
    let keep: Vec<bool> = be
        .download::<i32>(&flags)?
        .iter()
        .map(|&f| f != 0)
        .collect();
    for (pair, &ok) in keep.iter().enumerate() {
        if !ok {
            let p = neighbor_pos[pair];
            batch.labels[p] = -batch.labels[pair / k];
        }
    }
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(deg: f32) -> [f32; 2] {
        let r = deg.to_radians();
        [r.cos(), r.sin()]
    }

    fn on_cpu(b: &mut Batch, g: &[f32], rule: SelectionRule) -> Vec<bool> {
        let be = crate::backend::cpu();
        select_in_batch(be, b, &be.upload(g).unwrap(), 2, rule).unwrap()
    }

    fn batch_with(angles: &[f32]) -> (Batch, Vec<f32>) {
        // One anchor (index 7) with three neighbours (indices 1, 2, 3).
        let b = Batch {
            anchors: vec![7],
            k: 3,
            indices: vec![7, 1, 2, 3],
            labels: vec![8; 4],
        };
        (b, angles.iter().flat_map(|&a| unit(a)).collect())
    }

    #[test]
    fn fixed_rule_rejects_below_thresh_with_negated_label() {
        // cos 40 = 0.766 keep, cos 60 = 0.5 reject, cos 50 = 0.643 keep.
        let (mut b, g) = batch_with(&[0.0, 40.0, 60.0, 50.0]);
        let keep = on_cpu(&mut b, &g, SelectionRule::Fixed(SELECTION_THRESH));
        assert_eq!(keep, vec![true, false, true]);
        assert_eq!(b.labels, vec![8, 8, -8, 8]);
    }

    #[test]
    fn dynamic_rule_is_relative_to_the_best_neighbour() {
        // sims 0.5, 0.3420, 0.1736; ratios 1, 0.684, 0.347 against 0.6.
        let (mut b, g) = batch_with(&[0.0, 60.0, 70.0, 80.0]);
        let keep = on_cpu(&mut b, &g, SelectionRule::Dynamic(0.6));
        assert_eq!(keep, vec![true, true, false]);
        assert_eq!(b.labels, vec![8, 8, 8, -8]);
    }
}

//! Mini-batch selection (spec 4.5.1): each anchor keeps the neighbours whose no-DA feature is
//! similar enough to its own; rejected neighbours get the negated tuple label `-(a+1)` (they
//! stay in the batch loss, leave the memory loss and mining; trap G6).

use super::tuples::Batch;
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
/// order). Rewrites rejected neighbours' labels to `-(a+1)` and returns the keep flag of every
/// neighbour, `B x K` in batch order.
pub fn select_in_batch(
    batch: &mut Batch,
    g: &[f32],
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
    let row = |p: usize| &g[p * d..(p + 1) * d];
    let mut keep = Vec::with_capacity(b * k);
    for a in 0..b {
        let s: Vec<f32> = (0..k)
            .map(|j| {
                row(a)
                    .iter()
                    .zip(row(batch.neighbor_pos(a, j)))
                    .map(|(x, y)| x * y)
                    .sum()
            })
            .collect();
        let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (j, &sj) in s.iter().enumerate() {
            let ok = match rule {
                SelectionRule::Fixed(t) => sj >= t,
                SelectionRule::Dynamic(t) => sj / max >= t,
            };
            if !ok {
                let p = batch.neighbor_pos(a, j);
                batch.labels[p] = -batch.labels[a];
            }
            keep.push(ok);
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
        let keep = select_in_batch(&mut b, &g, 2, SelectionRule::Fixed(SELECTION_THRESH)).unwrap();
        assert_eq!(keep, vec![true, false, true]);
        assert_eq!(b.labels, vec![8, 8, -8, 8]);
    }

    #[test]
    fn dynamic_rule_is_relative_to_the_best_neighbour() {
        // sims 0.5, 0.3420, 0.1736; ratios 1, 0.684, 0.347 against 0.6.
        let (mut b, g) = batch_with(&[0.0, 60.0, 70.0, 80.0]);
        let keep = select_in_batch(&mut b, &g, 2, SelectionRule::Dynamic(0.6)).unwrap();
        assert_eq!(keep, vec![true, true, false]);
        assert_eq!(b.labels, vec![8, 8, 8, -8]);
    }
}

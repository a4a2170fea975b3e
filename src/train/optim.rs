//! The original's optimiser and schedule (spec 4.7, G14): one parameter group per tensor,
//! biases and BN betas at `BASE_LR * BIAS_LR_FACTOR` with `WEIGHT_DECAY_BIAS`, everything else
//! (conv / FC weights, BN gammas) at `BASE_LR` with `WEIGHT_DECAY`; Adam (torch defaults,
//! betas 0.9 / 0.999, eps 1e-8) with *coupled* L2 decay (`g += wd * theta` before the moments,
//! not AdamW), or SGD with momentum; `clip_grad_norm_` over all gradients; `WarmupMultiStepLR`.
//!
//! The update runs on the host: on the CPU backend in place, on CUDA through a download and an
//! upload per tensor (correct, slow; `kernels/optim.cu` is the planned device version).

use super::config::Solver;
use crate::backend::Backend;
use crate::nn::Module;
use anyhow::{bail, Result};

/// Adam's first-moment decay (torch default).
pub const BETA1: f64 = 0.9;
/// Adam's second-moment decay (torch default).
pub const BETA2: f64 = 0.999;
/// Adam's denominator epsilon (torch default).
pub const EPS: f64 = 1e-8;

/// `WarmupMultiStepLR`: the factor applied to every group's base learning rate.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub milestones: Vec<usize>,
    pub gamma: f64,
    pub warmup_factor: f64,
    pub warmup_iters: usize,
    /// Linear warm-up (else constant).
    pub warmup_linear: bool,
}

impl Schedule {
    /// The schedule of a config's `SOLVER`.
    pub fn from_config(s: &Solver) -> Schedule {
        Schedule {
            milestones: s.steps.clone(),
            gamma: s.gamma,
            warmup_factor: s.warmup_factor,
            warmup_iters: s.warmup_step,
            warmup_linear: s.warmup_method == "linear",
        }
    }

    /// Factor for the update of iteration `step` (1-based). The original steps the scheduler
    /// after the optimiser, so iteration `step` runs with `last_epoch = step - 1`: a milestone
    /// M takes effect from iteration M + 1.
    pub fn factor(&self, step: usize) -> f64 {
        let e = step.saturating_sub(1);
        let mut f = 1.0;
        if e < self.warmup_iters {
            f = if self.warmup_linear {
                let a = e as f64 / self.warmup_iters as f64;
                self.warmup_factor * (1.0 - a) + a
            } else {
                self.warmup_factor
            };
        }
        // bisect_right: milestones <= e.
        let passed = self.milestones.iter().filter(|&&m| m <= e).count();
        f * self.gamma.powi(passed as i32)
    }
}

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// torch.optim.Adam with coupled weight decay.
    Adam,
    /// torch.optim.SGD with momentum (no dampening, no Nesterov).
    Sgd { momentum: f64 },
}

/// Per-tensor optimiser state, under the parameter's name.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    /// Adam `exp_avg`, or SGD's momentum buffer.
    pub m: Vec<f32>,
    /// Adam `exp_avg_sq` (empty for SGD).
    pub v: Vec<f32>,
}

/// The optimiser of one stage.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub rule: Rule,
    pub lr: f64,
    pub lr_bias: f64,
    pub wd: f64,
    pub wd_bias: f64,
    /// Updates done so far (Adam's bias-correction step).
    pub t: u64,
    /// One slot per trainable tensor, in the model's parameter order.
    pub slots: Vec<Slot>,
}

/// One Adam update of a tensor, as torch 1.x computes it (f32 tensors, f64 scalars).
#[allow(clippy::too_many_arguments)]
pub fn adam_update(
    p: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    lr: f64,
    wd: f64,
    t: u64,
) {
    let bc1 = 1.0 - BETA1.powi(t as i32);
    let bc2 = 1.0 - BETA2.powi(t as i32);
    let step = (lr / bc1) as f32;
    let sq = bc2.sqrt() as f32;
    let (b1, b2, wd, eps) = (BETA1 as f32, BETA2 as f32, wd as f32, EPS as f32);
    // torch forms 1 - beta in Python floats, then rounds to f32: (1 - 0.999f32) would be
    // off by 1.3e-5 relative.
    let (c1, c2) = ((1.0 - BETA1) as f32, (1.0 - BETA2) as f32);
    for i in 0..p.len() {
        let gi = g[i] + wd * p[i];
        m[i] = b1 * m[i] + c1 * gi;
        v[i] = b2 * v[i] + c2 * gi * gi;
        let denom = v[i].sqrt() / sq + eps;
        p[i] -= step * m[i] / denom;
    }
}

/// One SGD-with-momentum update of a tensor (coupled weight decay, as torch).
pub fn sgd_update(p: &mut [f32], g: &[f32], buf: &mut [f32], lr: f64, wd: f64, momentum: f64) {
    let (lr, wd, mo) = (lr as f32, wd as f32, momentum as f32);
    for i in 0..p.len() {
        let d = g[i] + wd * p[i];
        buf[i] = mo * buf[i] + d;
        p[i] -= lr * buf[i];
    }
}

impl Optimizer {
    /// The optimiser of `SOLVER` for `model`'s trainable tensors, with zero state.
    pub fn new(cfg: &Solver, model: &dyn Module) -> Result<Optimizer> {
        let rule = match cfg.name.as_str() {
            "adam" => Rule::Adam,
            "sgd" => Rule::Sgd {
                momentum: cfg.momentum,
            },
            other => bail!("SOLVER.NAME = {other:?}: use \"adam\" or \"sgd\""),
        };
        let slots = model
            .params()
            .into_iter()
            .filter(|p| p.kind.trainable())
            .map(|p| Slot {
                name: p.name.clone(),
                m: vec![0.0; p.numel()],
                v: if rule == Rule::Adam {
                    vec![0.0; p.numel()]
                } else {
                    Vec::new()
                },
            })
            .collect();
        Ok(Optimizer {
            rule,
            lr: cfg.base_lr,
            lr_bias: cfg.base_lr * cfg.bias_lr_factor,
            wd: cfg.weight_decay,
            wd_bias: cfg.weight_decay_bias,
            t: 0,
            slots,
        })
    }

    /// Applies one update to every trainable tensor of `model` with the learning rates scaled
    /// by `factor` (the schedule's). Gradients must be complete (after backward and clipping).
    pub fn step(&mut self, be: &dyn Backend, model: &mut dyn Module, factor: f64) -> Result<()> {
        self.t += 1;
        let mut params = model.params_mut();
        params.retain(|p| p.kind.trainable());
        if params.len() != self.slots.len() {
            bail!(
                "optimiser holds {} tensors but the model has {} trainable ones",
                self.slots.len(),
                params.len()
            );
        }
        for (p, s) in params.into_iter().zip(self.slots.iter_mut()) {
            if p.name != s.name {
                bail!(
                    "optimiser state {} does not match parameter {}",
                    s.name,
                    p.name
                );
            }
            let (lr, wd) = if p.kind.decays() {
                (self.lr, self.wd)
            } else {
                (self.lr_bias, self.wd_bias)
            };
            let lr = lr * factor;
            let Some(gbuf) = p.grad.as_ref() else {
                bail!("{} is trainable but has no gradient buffer", p.name);
            };
            let g = be.host_view::<f32>(gbuf)?;
            let t = self.t;
            let rule = self.rule;
            be.update_on_host(&mut p.value, |v: &mut [f32]| match rule {
                Rule::Adam => adam_update(v, &g, &mut s.m, &mut s.v, lr, wd, t),
                Rule::Sgd { momentum } => sgd_update(v, &g, &mut s.m, lr, wd, momentum),
            })?;
        }
        Ok(())
    }
}

/// `clip_grad_norm_(params, max_norm, 2)`: the total L2 norm of all gradients (returned), and
/// every gradient scaled by `max_norm / (norm + 1e-6)` when that is below 1.
pub fn clip_grad_norm(be: &dyn Backend, model: &mut dyn Module, max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for p in model.params() {
        if let Some(g) = p.grad.as_ref() {
            sq += be
                .host_view::<f32>(g)?
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>();
        }
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for p in model.params_mut() {
            if let Some(g) = p.grad.as_mut() {
                be.update_on_host(g, |v: &mut [f32]| {
                    v.iter_mut().for_each(|x| *x *= coef as f32)
                })?;
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{Param, ParamKind};

    struct Two(Vec<Param>);
    impl Module for Two {
        fn params(&self) -> Vec<&Param> {
            self.0.iter().collect()
        }
        fn params_mut(&mut self) -> Vec<&mut Param> {
            self.0.iter_mut().collect()
        }
    }

    fn model(be: &dyn crate::backend::Backend) -> Two {
        Two(vec![
            Param::new(be, "fc.weight", &[2], ParamKind::Weight, &[1.0, -2.0]).unwrap(),
            Param::new(be, "fc.bias", &[1], ParamKind::Bias, &[0.5]).unwrap(),
            Param::new(be, "bn.running_mean", &[1], ParamKind::Running, &[3.0]).unwrap(),
        ])
    }

    fn set_grads(m: &mut Two, g: &[&[f32]]) {
        for (p, gi) in m.0.iter_mut().zip(g) {
            p.grad = Some(crate::backend::cpu().upload(gi).unwrap());
        }
    }

    fn vals(m: &Two, i: usize) -> Vec<f32> {
        crate::backend::cpu()
            .download::<f32>(&m.0[i].value)
            .unwrap()
    }

    /// Two Adam steps against the formulas worked by hand in f64.
    #[test]
    fn adam_matches_a_hand_computation_with_coupled_decay() {
        let be = crate::backend::cpu();
        let mut m = model(be);
        let cfg = Solver {
            name: "adam".into(),
            base_lr: 0.1,
            weight_decay: 0.01,
            ..Solver::default()
        };
        let mut opt = Optimizer::new(&cfg, &m).unwrap();
        assert_eq!(opt.slots.len(), 2, "running stats are not optimised");
        set_grads(&mut m, &[&[0.5, 0.25], &[-1.0]]);
        opt.step(be, &mut m, 1.0).unwrap();
        // Step 1: m = 0.1 g', v = 0.001 g'^2, mhat = g', vhat = g'^2 -> p -= 0.1 * g'/(|g'| + eps).
        // weight: g' = g + 0.01 p = [0.51, 0.23] -> [0.9, -2.1]; bias (no decay): 0.5 + 0.1.
        let w = vals(&m, 0);
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] + 2.1).abs() < 1e-6,
            "{w:?}"
        );
        assert!((vals(&m, 1)[0] - 0.6).abs() < 1e-6);
        assert_eq!(vals(&m, 2), vec![3.0], "buffers are untouched");
        // Step 2 with g = [0.5, 0.25] again, by hand in f64:
        let (p0, g0) = (0.9f64, 0.5f64);
        let gp1 = 0.51f64;
        let gp2 = g0 + 0.01 * p0;
        let m2 = 0.9 * 0.1 * gp1 + 0.1 * gp2;
        let v2 = 0.999 * 0.001 * gp1 * gp1 + 0.001 * gp2 * gp2;
        let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.999f64.powi(2));
        let want = p0 - 0.1 / bc1 * m2 / (v2.sqrt() / bc2.sqrt() + 1e-8);
        // A schedule factor of 1 keeps the lr; check the factor is applied by a second model.
        set_grads(&mut m, &[&[0.5, 0.25], &[-1.0]]);
        opt.step(be, &mut m, 1.0).unwrap();
        assert!(
            (vals(&m, 0)[0] as f64 - want).abs() < 1e-6,
            "{} vs {want}",
            vals(&m, 0)[0]
        );
        assert_eq!(opt.t, 2);

        let mut m3 = model(be);
        let mut opt3 = Optimizer::new(&cfg, &m3).unwrap();
        set_grads(&mut m3, &[&[0.5, 0.25], &[-1.0]]);
        opt3.step(be, &mut m3, 0.1).unwrap();
        assert!((vals(&m3, 0)[0] - 0.99).abs() < 1e-6, "lr 0.01 moves 0.01");
    }

    #[test]
    fn sgd_momentum_and_bias_lr_factor() {
        let be = crate::backend::cpu();
        let mut m = model(be);
        let cfg = Solver {
            name: "sgd".into(),
            base_lr: 0.1,
            bias_lr_factor: 2.0,
            weight_decay: 0.0,
            momentum: 0.9,
            ..Solver::default()
        };
        let mut opt = Optimizer::new(&cfg, &m).unwrap();
        for _ in 0..2 {
            set_grads(&mut m, &[&[1.0, 0.0], &[1.0]]);
            opt.step(be, &mut m, 1.0).unwrap();
        }
        // buf = 1 then 1.9: weight 1 - 0.1 - 0.19; bias at lr 0.2: 0.5 - 0.2 - 0.38.
        assert!((vals(&m, 0)[0] - 0.71).abs() < 1e-6);
        assert!((vals(&m, 1)[0] - (-0.08)).abs() < 1e-6);
    }

    #[test]
    fn schedule_milestones_take_effect_one_step_late() {
        let s = Schedule::from_config(&Solver {
            steps: vec![40_000],
            warmup_step: 0,
            ..Solver::default()
        });
        assert_eq!(s.factor(1), 1.0);
        assert_eq!(s.factor(40_000), 1.0);
        assert!((s.factor(40_001) - 0.1).abs() < 1e-15);
        assert!((s.factor(60_000) - 0.1).abs() < 1e-15);
        let two = Schedule {
            milestones: vec![2, 4],
            ..s.clone()
        };
        let f: Vec<f64> = (1..=6).map(|t| two.factor(t)).collect();
        assert_eq!(f[..3], [1.0, 1.0, 0.1]);
        assert!((f[4] - 0.01).abs() < 1e-15 && (f[5] - 0.01).abs() < 1e-15);
        let warm = Schedule {
            milestones: vec![],
            warmup_iters: 4,
            warmup_factor: 1.0 / 3.0,
            ..s
        };
        assert!((warm.factor(1) - 1.0 / 3.0).abs() < 1e-12);
        assert!((warm.factor(3) - (1.0 / 3.0 * 0.5 + 0.5)).abs() < 1e-12);
        assert_eq!(warm.factor(5), 1.0);
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let be = crate::backend::cpu();
        let mut m = model(be);
        set_grads(&mut m, &[&[3.0, 0.0], &[4.0]]);
        let n = clip_grad_norm(be, &mut m, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let g = be.download::<f32>(m.0[0].grad.as_ref().unwrap()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5, "{g:?}");
        let n2 = clip_grad_norm(be, &mut m, 10.0).unwrap();
        assert!((n2 - 1.0).abs() < 1e-5, "below the max nothing changes");
    }
}

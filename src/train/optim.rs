//! The original's optimiser and schedule (spec 4.7, G14): one parameter group per tensor,
//! biases and BN betas at `BASE_LR * BIAS_LR_FACTOR` with `WEIGHT_DECAY_BIAS`, everything else
//! (conv / FC weights, BN gammas) at `BASE_LR` with `WEIGHT_DECAY`; Adam (torch defaults,
//! betas 0.9 / 0.999, eps 1e-8) with *coupled* L2 decay (`g += wd * theta` before the moments,
//! not AdamW), or SGD with momentum; `clip_grad_norm_` over all gradients; `WarmupMultiStepLR`.
//!
//! The state lives in an arena: the trainable tensors laid end to end, weights first, then
//! biases, so the two groups are two contiguous ranges. The moments are one buffer each over
//! that layout on every backend. On a device, [`Optimizer::new`] also moves the model's values
//! and gradients into two arenas (each tensor becomes a view of them), so a clip and an update
//! are a few launches whatever the number of tensors (`kernels/optim.cu`); on the CPU the same
//! twins run tensor by tensor in place.

use super::config::Solver;
use crate::backend::cpu::optim::{adam_f32, sgd_f32};
use crate::backend::{AdamScalars, Backend, Buf, DType, OptimStep};
use crate::nn::{zero_grads, Module, Param};
use anyhow::{bail, Result};

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

/// Where a trainable tensor lies in the arena.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    pub name: String,
    pub offset: usize,
    pub len: usize,
}

/// The model's values and gradients as two device arenas (the tensors are views of them).
struct ParamArena {
    values: Buf,
    grads: Buf,
}

/// The optimiser of one stage.
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
    /// Elements of the arena before it are weights (group 0), the rest biases (group 1).
    pub split: usize,
    /// Adam `exp_avg`, or SGD's momentum buffer, over the arena.
    pub m: Buf,
    /// Adam `exp_avg_sq` over the arena (empty for SGD).
    pub v: Buf,
    arena: Option<ParamArena>,
}

/// The tensors the optimiser updates: trainable kinds that have a gradient buffer (a frozen
/// backbone's tensors have none).
fn trainable(params: Vec<&mut Param>) -> Vec<&mut Param> {
    params
        .into_iter()
        .filter(|p| p.kind.trainable() && p.grad.is_some())
        .collect()
}

impl Optimizer {
    /// The optimiser of `SOLVER` for `model`'s trainable tensors, with zero state. On a device
    /// backend the model's tensors move into the arena (their values are kept).
    pub fn new(cfg: &Solver, be: &dyn Backend, model: &mut dyn Module) -> Result<Optimizer> {
        let rule = match cfg.name.as_str() {
            "adam" => Rule::Adam,
            "sgd" => Rule::Sgd {
                momentum: cfg.momentum,
            },
            other => bail!("SOLVER.NAME = {other:?}: use \"adam\" or \"sgd\""),
        };
        let mut params = trainable(model.params_mut());
        // Weights first, then biases, each in model order.
        let mut order: Vec<usize> = (0..params.len()).collect();
        order.sort_by_key(|&i| !params[i].kind.decays());
        let mut slots = vec![
            Slot {
                name: String::new(),
                offset: 0,
                len: 0
            };
            params.len()
        ];
        let (mut total, mut split) = (0, 0);
        for &i in &order {
            let p = &params[i];
            slots[i] = Slot {
                name: p.name.clone(),
                offset: total,
                len: p.numel(),
            };
            total += p.numel();
            if p.kind.decays() {
                split = total;
            }
        }
        let arena = if be.device() == crate::backend::Device::Cpu {
            None
        } else {
            let values = be.arena(DType::F32, total)?;
            let grads = be.arena(DType::F32, total)?;
            for (p, s) in params.iter_mut().zip(&slots) {
                let mut view = be.view(&values, s.offset, s.len)?;
                be.upload_into(&be.download::<f32>(&p.value)?, &mut view)?;
                p.value = view;
                p.grad = Some(be.view(&grads, s.offset, s.len)?);
            }
            Some(ParamArena { values, grads })
        };
        let v_len = if rule == Rule::Adam { total } else { 0 };
        Ok(Optimizer {
            rule,
            lr: cfg.base_lr,
            lr_bias: cfg.base_lr * cfg.bias_lr_factor,
            wd: cfg.weight_decay,
            wd_bias: cfg.weight_decay_bias,
            t: 0,
            slots,
            split,
            m: be.zeros(DType::F32, total)?,
            v: be.zeros(DType::F32, v_len)?,
            arena,
        })
    }

    /// The trainable tensors of `model`, checked against the slots (and, on a device, still
    /// views of the arena: a tensor replaced since [`Optimizer::new`] would silently stop
    /// training).
    fn checked<'a>(&self, model: &'a mut dyn Module) -> Result<Vec<&'a mut Param>> {
        let params = trainable(model.params_mut());
        if params.len() != self.slots.len() {
            bail!(
                "optimiser holds {} tensors but the model has {} trainable ones",
                self.slots.len(),
                params.len()
            );
        }
        for (p, s) in params.iter().zip(&self.slots) {
            if p.name != s.name || p.numel() != s.len {
                bail!(
                    "optimiser state {} ({} elements) does not match parameter {} ({})",
                    s.name,
                    s.len,
                    p.name,
                    p.numel()
                );
            }
            if let Some(a) = &self.arena {
                let in_arena = p.value.is_view_of(&a.values, s.offset)
                    && p.grad
                        .as_ref()
                        .is_some_and(|g| g.is_view_of(&a.grads, s.offset));
                if !in_arena {
                    bail!("{} was replaced after the optimiser was made; load weights into the existing tensors", p.name);
                }
            }
        }
        Ok(params)
    }

    /// Zeroes every gradient of `model` before a backward (which accumulates): on a device the
    /// arena that holds the trainable tensors' gradients in one memset (where one a tensor was
    /// 314 launches in ResNet-101's step), then any other gradient; on the CPU tensor by tensor.
    pub fn zero_grads(&mut self, be: &dyn Backend, model: &mut dyn Module) -> Result<()> {
        if self.arena.is_none() {
            return zero_grads(be, model);
        }
        self.checked(model)?;
        if let Some(a) = &mut self.arena {
            be.zero(&mut a.grads)?;
        }
        for p in model.params_mut() {
            if let (Some(g), false) = (p.grad.as_mut(), p.kind.trainable()) {
                be.zero(g)?;
            }
        }
        Ok(())
    }

    fn shape(&self, factor: f64) -> OptimStep {
        OptimStep {
            len: self.m.len(),
            split: self.split,
            lr: [self.lr * factor, self.lr_bias * factor],
            wd: [self.wd, self.wd_bias],
        }
    }

    /// Applies one update to every trainable tensor of `model` with the learning rates scaled
    /// by `factor` (the schedule's). Gradients must be complete (after backward and clipping).
    pub fn step(&mut self, be: &dyn Backend, model: &mut dyn Module, factor: f64) -> Result<()> {
        let params = self.checked(model)?;
        self.t += 1;
        let full = self.shape(factor);
        let (t, rule) = (self.t, self.rule);
        if let Some(a) = self.arena.as_mut() {
            let (m, v) = (&mut self.m, &mut self.v);
            return match rule {
                Rule::Adam => be.adam(&mut a.values, &a.grads, m, v, full, t),
                Rule::Sgd { momentum } => be.sgd(&mut a.values, &a.grads, m, full, momentum),
            };
        }
        // On the CPU: tensor by tensor in place, through the kernels' twins.
        let k = AdamScalars::new(&full, t);
        let (ms, vs) = (self.m.host_mut::<f32>()?, self.v.host_mut::<f32>()?);
        for (p, s) in params.into_iter().zip(&self.slots) {
            let Some(g) = p.grad.as_ref() else {
                bail!("{} is trainable but has no gradient buffer", p.name);
            };
            let (g, value) = (g.host::<f32>()?, p.value.host_mut::<f32>()?);
            // The whole tensor is in one group.
            let split = if full.group(s.offset) == 0 { s.len } else { 0 };
            let r = s.offset..s.offset + s.len;
            match rule {
                Rule::Adam => adam_f32(value, g, &mut ms[r.clone()], &mut vs[r], split, &k),
                Rule::Sgd { momentum } => sgd_f32(
                    value,
                    g,
                    &mut ms[r],
                    split,
                    full.lr.map(|x| x as f32),
                    full.wd.map(|x| x as f32),
                    momentum as f32,
                ),
            }
        }
        Ok(())
    }

    /// `clip_grad_norm_(params, max_norm, 2)`: the total L2 norm of all gradients (returned),
    /// and every gradient scaled by `max_norm / (norm + 1e-6)` when that is below 1.
    pub fn clip_grad_norm(
        &mut self,
        be: &dyn Backend,
        model: &mut dyn Module,
        max_norm: f64,
    ) -> Result<f64> {
        let mut params = self.checked(model)?;
        let grads: Vec<&mut Buf> = match self.arena.as_mut() {
            Some(a) => vec![&mut a.grads],
            None => params.iter_mut().filter_map(|p| p.grad.as_mut()).collect(),
        };
        let mut sq = 0f64;
        for g in &grads {
            sq += be.sum_squares(g)?;
        }
        let norm = sq.sqrt();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in grads {
                be.scale(g, coef as f32)?;
            }
        }
        Ok(norm)
    }
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
        let mut opt = Optimizer::new(&cfg, be, &mut m).unwrap();
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
        let mut opt3 = Optimizer::new(&cfg, be, &mut m3).unwrap();
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
        let mut opt = Optimizer::new(&cfg, be, &mut m).unwrap();
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
        let mut opt = Optimizer::new(&Solver::default(), be, &mut m).unwrap();
        set_grads(&mut m, &[&[3.0, 0.0], &[4.0]]);
        let n = opt.clip_grad_norm(be, &mut m, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let g = be.download::<f32>(m.0[0].grad.as_ref().unwrap()).unwrap();
        assert!((g[0] - 0.6).abs() < 1e-5, "{g:?}");
        let n2 = opt.clip_grad_norm(be, &mut m, 10.0).unwrap();
        assert!((n2 - 1.0).abs() < 1e-5, "below the max nothing changes");
    }
}

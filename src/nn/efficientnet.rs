//! EfficientNet-Lite0 (../shared/data.md): no squeeze-excitation, ReLU6 everywhere, BatchNorm
//! eps 1e-3, TensorFlow "SAME" padding, tensor names of the efficientnet-pytorch state_dict.

use super::act::add_into;
use super::backbone::{classify, Backbone};
use super::conv::ConvBn;
use super::linear::Linear;
use super::maps::{EvalMaps, Scratch, Slot, MID};
use super::pool::GemPool;
use super::{empty, Module, Param};
use crate::backend::{Act, Backend, Buf, Padding};
use crate::rng::Rng;
use anyhow::{anyhow, Result};

/// The Lite models' BatchNorm eps (TensorFlow's 1e-3).
const BN_EPS: f32 = 1e-3;
/// The running statistics' momentum of the package whose weights we load
/// (efficientnet-pytorch's `1 - batch_norm_momentum` with TF's 0.99), not PyTorch's default
/// 0.1: fine-tuning then moves the statistics as the original does.
pub const BN_MOMENTUM: f32 = 0.01;
const STEM: usize = 32;
const HEAD: usize = 1280;
/// Stages as (repeats, kernel, stride, expand ratio, in, out).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// Mobile inverted bottleneck: [1x1 expand + BN + ReLU6] -> depthwise kxk + BN + ReLU6 ->
/// 1x1 project + BN, plus the identity when stride 1 and in = out.
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub project: ConvBn,
    /// Identity shortcut, added inside the projection's BatchNorm.
    pub skip: bool,
    dx: Buf,
}

impl MbConv {
    fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        idx: usize,
        (k, stride, expand, c_in, c_out): (usize, usize, usize, usize, usize),
    ) -> Result<Self> {
        let p = format!("_blocks.{idx}");
        let mid = c_in * expand;
        let same = |k, s, g| (k, s, Padding::Same, g);
        let expand = if expand != 1 {
            Some(ConvBn::new(
                be,
                rng,
                (&format!("{p}._expand_conv"), &format!("{p}._bn0")),
                c_in,
                mid,
                same(1, 1, 1),
                BN_EPS,
                Act::Relu6,
            )?)
        } else {
            None
        };
        let depthwise = ConvBn::new(
            be,
            rng,
            (&format!("{p}._depthwise_conv"), &format!("{p}._bn1")),
            mid,
            mid,
            same(k, stride, mid),
            BN_EPS,
            Act::Relu6,
        )?;
        let project = ConvBn::new(
            be,
            rng,
            (&format!("{p}._project_conv"), &format!("{p}._bn2")),
            mid,
            c_out,
            same(1, 1, 1),
            BN_EPS,
            Act::Identity,
        )?;
        Ok(MbConv {
            expand,
            depthwise,
            project,
            skip: stride == 1 && c_in == c_out,
            dx: empty(),
        })
    }

    fn y(&self) -> &Buf {
        self.project.y()
    }

    fn dx(&self) -> &Buf {
        if self.skip {
            &self.dx
        } else {
            self.expand.as_ref().unwrap_or(&self.depthwise).dx()
        }
    }

    fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
        train: bool,
    ) -> Result<(usize, usize)> {
        let e = match self.expand.as_mut() {
            Some(e) => {
                e.forward(be, x, (n, h, w), train)?;
                e.y()
            }
            None => x,
        };
        let (oh, ow) = self.depthwise.forward(be, e, (n, h, w), train)?;
        self.project.forward_add(
            be,
            self.depthwise.y(),
            self.skip.then_some(x),
            (n, oh, ow),
            train,
        )?;
        Ok((oh, ow))
    }

    /// Eval-mode forward of `x` into `out` through `s`'s scratch maps.
    fn infer(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
        out: &mut Slot,
        s: &mut Scratch,
    ) -> Result<(usize, usize)> {
        let e = match self.expand.as_mut() {
            Some(e) => {
                e.infer(be, x, None, (n, h, w), (&mut s.z, &mut s.a))?;
                s.a.buf()
            }
            None => x,
        };
        let (oh, ow) = self
            .depthwise
            .infer(be, e, None, (n, h, w), (&mut s.z, &mut s.b))?;
        let skip = self.skip.then_some(x);
        self.project
            .infer(be, s.b.buf(), skip, (n, oh, ow), (&mut s.z, out))
    }

    fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        self.project.backward(be, self.depthwise.y(), dy, true)?;
        let e = self.expand.as_ref().map_or(x, |e| e.y());
        self.depthwise.backward(be, e, self.project.dx(), true)?;
        let inner = match self.expand.as_mut() {
            Some(ex) => {
                ex.backward(be, x, self.depthwise.dx(), true)?;
                ex.dx()
            }
            None => self.depthwise.dx(),
        };
        if self.skip {
            add_into(be, inner, dy, &mut self.dx)?;
        }
        Ok(())
    }

    fn units(&self) -> Vec<&ConvBn> {
        let mut v: Vec<&ConvBn> = self.expand.iter().collect();
        v.extend([&self.depthwise, &self.project]);
        v
    }

    fn units_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut v: Vec<&mut ConvBn> = self.expand.iter_mut().collect();
        v.extend([&mut self.depthwise, &mut self.project]);
        v
    }
}

/// EfficientNet-Lite0: stem, 16 MBConv blocks, 1x1 head conv to 1280 channels.
pub struct EfficientNetLite0 {
    pub stem: ConvBn,
    pub blocks: Vec<MbConv>,
    pub head: ConvBn,
    /// `_fc` (1280 -> 1000, with bias) of the classifier variant.
    pub fc: Option<Linear>,
    avg: GemPool,
    maps: EvalMaps,
}

impl EfficientNetLite0 {
    /// Randomly initialised (kaiming-normal fan_out convs, BN 1 / 0), with `_fc` when
    /// `classifier`.
    pub fn new(be: &dyn Backend, rng: &mut Rng, classifier: bool) -> Result<Self> {
        let stem = ConvBn::new(
            be,
            rng,
            ("_conv_stem", "_bn0"),
            3,
            STEM,
            (3, 2, Padding::Same, 1),
            BN_EPS,
            Act::Relu6,
        )?;
        let mut blocks = Vec::new();
        for &(repeats, k, stride, expand, c_in, c_out) in &STAGES {
            for r in 0..repeats {
                let (s, ci) = if r == 0 { (stride, c_in) } else { (1, c_out) };
                blocks.push(MbConv::new(
                    be,
                    rng,
                    blocks.len(),
                    (k, s, expand, ci, c_out),
                )?);
            }
        }
        let head = ConvBn::new(
            be,
            rng,
            ("_conv_head", "_bn1"),
            STAGES[STAGES.len() - 1].5,
            HEAD,
            (1, 1, Padding::Same, 1),
            BN_EPS,
            Act::Relu6,
        )?;
        let fc = if classifier {
            Some(Linear::new(be, rng, "_fc", HEAD, 1000, true)?)
        } else {
            None
        };
        let mut net = EfficientNetLite0 {
            stem,
            blocks,
            head,
            fc,
            avg: GemPool::avg(),
            maps: EvalMaps::default(),
        };
        for u in net.units_mut() {
            u.bn.momentum = BN_MOMENTUM;
        }
        Ok(net)
    }

    /// The blocks up to the end of the last stride-16 stage, and its channels; `None` when the
    /// stages never reach stride 16.
    fn mid_stage() -> Option<(usize, usize)> {
        // The stride-16 stages end where the first stride-2 stage after stride 16 begins.
        let (mut stride, mut end, mut channels) = (2, 0, 0);
        for &(repeats, _, s, _, _, c_out) in &STAGES {
            if stride * s > 16 {
                break;
            }
            stride *= s;
            end += repeats;
            channels = c_out;
        }
        (stride == 16 && end > 0).then_some((end, channels))
    }

    /// The eval-mode forward through [`EvalMaps`]: the stem into slot 0, then every block and
    /// the head from one slot into the next.
    fn infer(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
    ) -> Result<(usize, usize)> {
        let mid_end = Self::mid_stage().map_or(0, |(end, _)| end);
        let maps = &mut self.maps;
        maps.out = None;
        let (mut h, mut w) = self.stem.infer(
            be,
            x,
            None,
            (n, h, w),
            (&mut maps.scratch.z, &mut maps.io[0]),
        )?;
        let mut from = 0;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let to = EvalMaps::next(from, i + 1 == mid_end);
            let (x, out, scratch) = maps.pass(from, to)?;
            (h, w) = b.infer(be, x, (n, h, w), out, scratch)?;
            from = to;
        }
        let to = EvalMaps::next(from, false);
        let (x, out, scratch) = maps.pass(from, to)?;
        let hw = self
            .head
            .infer(be, x, None, (n, h, w), (&mut scratch.z, out))?;
        maps.out = Some(to);
        Ok(hw)
    }

    fn units(&self) -> Vec<&ConvBn> {
        let mut v = vec![&self.stem];
        for b in &self.blocks {
            v.extend(b.units());
        }
        v.push(&self.head);
        v
    }

    fn units_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut v = vec![&mut self.stem];
        for b in &mut self.blocks {
            v.extend(b.units_mut());
        }
        v.push(&mut self.head);
        v
    }
}

impl Module for EfficientNetLite0 {
    fn params(&self) -> Vec<&Param> {
        let mut v: Vec<&Param> = self.units().into_iter().flat_map(|u| u.params()).collect();
        if let Some(fc) = &self.fc {
            v.extend(fc.params());
        }
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.stem.params_mut();
        for b in &mut self.blocks {
            for u in b.units_mut() {
                v.extend(u.params_mut());
            }
        }
        v.extend(self.head.params_mut());
        if let Some(fc) = &mut self.fc {
            v.extend(fc.params_mut());
        }
        v
    }
}

impl Backbone for EfficientNetLite0 {
    fn name(&self) -> String {
        "efficientnet-lite0".to_string()
    }

    fn input_norm(&self) -> crate::data::image::PixelNorm {
        crate::data::image::PixelNorm::LITE
    }

    fn out_channels(&self) -> usize {
        HEAD
    }

    fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
        train: bool,
    ) -> Result<(usize, usize)> {
        if self.maps.used(train) {
            return self.infer(be, x, (n, h, w));
        }
        self.maps.use_layers();
        let (mut h, mut w) = self.stem.forward(be, x, (n, h, w), train)?;
        let mut prev = self.stem.y();
        for b in self.blocks.iter_mut() {
            (h, w) = b.forward(be, prev, (n, h, w), train)?;
            prev = b.y();
        }
        self.head.forward(be, prev, (n, h, w), train)
    }

    fn output(&self) -> &Buf {
        self.maps.output().unwrap_or(self.head.y())
    }

    fn mid_output(&self) -> Option<(&Buf, usize)> {
        let (end, channels) = Self::mid_stage()?;
        let map = match self.maps.out {
            Some(_) => self.maps.io[MID].buf(),
            None => self.blocks.get(end - 1)?.y(),
        };
        Some((map, channels))
    }

    fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        let last = self.blocks.last().map_or(self.stem.y(), |b| b.y());
        self.head.backward(be, last, dy, true)?;
        for i in (0..self.blocks.len()).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let (cur, after) = rest
                .split_first_mut()
                .ok_or_else(|| anyhow!("EfficientNet block {i} missing"))?;
            let input = before.last().map_or(self.stem.y(), |b| b.y());
            let grad = after.first().map_or(self.head.dx(), |b| b.dx());
            cur.backward(be, input, grad)?;
        }
        let d_stem = self.blocks.first().map_or(self.head.dx(), |b| b.dx());
        self.stem.backward(be, x, d_stem, false)
    }

    fn batchnorms_mut(&mut self) -> Vec<&mut super::batchnorm::BatchNorm2d> {
        self.units_mut().into_iter().map(|u| &mut u.bn).collect()
    }

    fn logits(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let (fh, fw) = Backbone::forward(self, be, x, (n, h, w), false)?;
        let fc = self
            .fc
            .as_mut()
            .ok_or_else(|| anyhow!("this EfficientNet was built without its _fc classifier"))?;
        let feat = self.maps.output().unwrap_or(self.head.y());
        classify(be, feat, (n, HEAD, fh, fw), &mut self.avg, fc)
    }

    fn summary(&self) -> Vec<String> {
        let mut v = vec![format!("_conv_stem 3x3/2 SAME 3->{STEM} + _bn0 + relu6")];
        let mut idx = 0;
        for &(repeats, k, stride, expand, c_in, c_out) in &STAGES {
            v.push(format!(
                "_blocks.{idx}..{} {repeats} x MBConv(expand {expand}, dw {k}x{k}/{stride} first, SAME) {c_in}->{c_out}",
                idx + repeats - 1
            ));
            idx += repeats;
        }
        v.push(format!("_conv_head 1x1 320->{HEAD} + _bn1 + relu6"));
        if self.fc.is_some() {
            v.push(format!("avgpool + _fc {HEAD}->1000"));
        }
        v
    }
}

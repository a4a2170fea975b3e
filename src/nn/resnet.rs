//! ResNet-50 / ResNet-101 in torchvision's v1.5 layout (stride in the 3x3 conv of a
//! Bottleneck), conv1 .. layer4, with torchvision's tensor names. The avgpool + fc classifier
//! exists only when asked for (loading / checking ImageNet weights); InsCLR pools with GeM.

use super::backbone::{classify, Backbone};
use super::batchnorm::ReduceTarget;
use super::conv::{ConvBn, Layout};
use super::linear::Linear;
use super::maps::{EvalMaps, Scratch, Slot, MID};
use super::pool::{GemPool, MaxPool2d};
use super::{empty, Module, Param};
use crate::backend::{Act, Backend, Buf, Padding};
use crate::rng::Rng;
use anyhow::{anyhow, bail, Result};

/// torchvision's BatchNorm eps.
const BN_EPS: f32 = 1e-5;
/// Bottleneck expansion: output channels = 4 x width.
const EXPANSION: usize = 4;

/// conv1x1 -> conv3x3 (stride) -> conv1x1, plus the shortcut, then ReLU (the last two fused
/// into bn3: `y = relu(bn3(conv3(.)) + shortcut)`).
pub struct Bottleneck {
    pub name: String,
    pub c1: ConvBn,
    pub c2: ConvBn,
    pub c3: ConvBn,
    pub downsample: Option<ConvBn>,
    dx: Buf,
    in_dims: (usize, usize, usize),
}

impl Bottleneck {
    fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        name: &str,
        c_in: usize,
        width: usize,
        stride: usize,
    ) -> Result<Self> {
        let c_out = width * EXPANSION;
        let cb = |rng: &mut Rng, i: usize, ci, co, k, s, p, act| {
            ConvBn::new(
                be,
                rng,
                (&format!("{name}.conv{i}"), &format!("{name}.bn{i}")),
                ci,
                co,
                (k, s, Padding::Sym(p), 1),
                BN_EPS,
                act,
            )
        };
        let c1 = cb(rng, 1, c_in, width, 1, 1, 0, Act::Relu)?;
        let c2 = cb(rng, 2, width, width, 3, stride, 1, Act::Relu)?;
        // The residual add and the block's ReLU are fused into bn3.
        let c3 = cb(rng, 3, width, c_out, 1, 1, 0, Act::Relu)?;
        let downsample = if stride != 1 || c_in != c_out {
            Some(ConvBn::new(
                be,
                rng,
                (
                    &format!("{name}.downsample.0"),
                    &format!("{name}.downsample.1"),
                ),
                c_in,
                c_out,
                (1, stride, Padding::Sym(0), 1),
                BN_EPS,
                Act::Identity,
            )?)
        } else {
            None
        };
        Ok(Bottleneck {
            name: name.to_string(),
            c1,
            c2,
            c3,
            downsample,
            dx: empty(),
            in_dims: (0, 0, 0),
        })
    }

    fn y(&self) -> &Buf {
        &self.c3.bn.y
    }

    fn forward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
        train: bool,
    ) -> Result<(usize, usize)> {
        self.in_dims = (n, h, w);
        // bn1's output feeds conv2 alone, bn2's conv3 alone: each channels-last where the
        // backend's convolution reads it so (the transposes before that convolution's forward
        // and its weight gradient are then gone; conv3 reads so where its maps' pixels are not
        // in 16-byte runs: 14 x 14 and 7 x 7 in bf16).
        let s1 = self.c1.conv.shape_for(n, h, w)?;
        let s2 = self.c2.conv.shape_for(n, s1.oh, s1.ow)?;
        let s3 = self.c3.conv.shape_for(n, s2.oh, s2.ow)?;
        let dt = x.dtype();
        let (y1, y2) = (be.conv_reads_nhwc(&s2, dt), be.conv_reads_nhwc(&s3, dt));
        let layout = |x_nhwc, y_nhwc| Layout { x_nhwc, y_nhwc };
        let (h1, w1) = self
            .c1
            .forward_layout(be, x, None, (n, h, w), train, layout(false, y1))?;
        let x2 = layout(self.c1.bn.y_nhwc(), y2);
        let (h2, w2) = self
            .c2
            .forward_layout(be, &self.c1.bn.y, None, (n, h1, w1), train, x2)?;
        let identity = match self.downsample.as_mut() {
            Some(d) => {
                d.forward(be, x, (n, h, w), train)?;
                &d.bn.y
            }
            None => x,
        };
        let x3 = layout(self.c2.bn.y_nhwc(), false);
        self.c3
            .forward_layout(be, &self.c2.bn.y, Some(identity), (n, h2, w2), train, x3)
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
        let (h1, w1) = self
            .c1
            .infer(be, x, None, (n, h, w), (&mut s.z, &mut s.a))?;
        let (h2, w2) = self
            .c2
            .infer(be, s.a.buf(), None, (n, h1, w1), (&mut s.z, &mut s.b))?;
        let identity = match self.downsample.as_mut() {
            Some(d) => {
                d.infer(be, x, None, (n, h, w), (&mut s.z, &mut s.d))?;
                s.d.buf()
            }
            None => x,
        };
        self.c3
            .infer(be, s.b.buf(), Some(identity), (n, h2, w2), (&mut s.z, out))
    }

    /// From `dy`, the gradient of [`Bottleneck::y`] (not read where this block's c3 holds dz
    /// already: the block after it took its reduce pass); `x` is the forward's input and `then`
    /// the block before's last BatchNorm, whose dy `dx` is.
    fn backward(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        dy: &Buf,
        then: Option<ReduceTarget>,
    ) -> Result<()> {
        // The block's input gradient is the identity path's (the sum's gradient, or the
        // downsample's input gradient) with c1's added onto it by c1's own kernels: the identity
        // path's buffer becomes `dx` (swapped, nothing copied; ResNet::backward gives it back
        // before the next backward, so that every buffer keeps its size and no step after the
        // first allocates). Where c1's kernel also takes the block before's BatchNorm's reduce
        // pass, it writes that BatchNorm's dz instead and `dx` keeps the identity path's gradient.
        // So do c3's for bn2 and c2's for bn1, whose outputs they alone read: their dx then
        // holds that BatchNorm's dz.
        let (y2, then2) = self.c2.output_and_reduce(be)?;
        self.c3.backward_then(be, y2, dy, None, then2)?;
        let (y1, then1) = self.c1.output_and_reduce(be)?;
        self.c2
            .backward_then(be, y1, &self.c3.conv.dx, None, then1)?;
        if let Some(d) = self.downsample.as_mut() {
            d.backward(be, x, &self.c3.bn.dres, true)?;
        }
        self.swap_identity_gradient();
        self.c1
            .backward_then(be, x, &self.c2.conv.dx, Some(&mut self.dx), then)
    }

    /// Trades `dx` with the buffer the identity path's gradient lands in.
    fn swap_identity_gradient(&mut self) {
        match self.downsample.as_mut() {
            Some(d) => std::mem::swap(&mut self.dx, &mut d.conv.dx),
            None => std::mem::swap(&mut self.dx, &mut self.c3.bn.dres),
        }
    }

    fn units(&self) -> Vec<&ConvBn> {
        let mut v = vec![&self.c1, &self.c2, &self.c3];
        v.extend(self.downsample.as_ref());
        v
    }

    fn units_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut v = vec![&mut self.c1, &mut self.c2, &mut self.c3];
        v.extend(self.downsample.as_mut());
        v
    }
}

/// A ResNet backbone (stem, max pool, four stages of Bottlenecks).
pub struct ResNet {
    /// 50 or 101; 0 for a [`ResNet::custom`] network.
    pub depth: usize,
    /// Stem width; stage `s` has width `base << s` and `4 * (base << s)` output channels.
    pub base: usize,
    pub stem: ConvBn,
    pub maxpool: MaxPool2d,
    pub blocks: Vec<Bottleneck>,
    /// `fc` (2048 -> 1000, with bias) of the classifier variant.
    pub fc: Option<Linear>,
    avg: GemPool,
    stage_sizes: [usize; 4],
    out_hw: (usize, usize),
    maps: EvalMaps,
}

impl ResNet {
    /// ResNet-50 or ResNet-101 (`depth`), randomly initialised as torchvision does, with the
    /// 1000-class `fc` when `classifier`.
    pub fn new(be: &dyn Backend, rng: &mut Rng, depth: usize, classifier: bool) -> Result<Self> {
        let stage_sizes = match depth {
            50 => [3, 4, 6, 3],
            101 => [3, 4, 23, 3],
            _ => bail!("ResNet-{depth} is not supported; use 50 or 101"),
        };
        let mut net = Self::custom(be, rng, stage_sizes, 64, classifier)?;
        net.depth = depth;
        Ok(net)
    }

    /// The same layout with other stage sizes and base width (torchvision's is 64): small
    /// networks for tests that run every code path of the real ones.
    pub fn custom(
        be: &dyn Backend,
        rng: &mut Rng,
        stage_sizes: [usize; 4],
        base: usize,
        classifier: bool,
    ) -> Result<Self> {
        if base == 0 {
            bail!("ResNet base width must be positive");
        }
        let stem = ConvBn::new(
            be,
            rng,
            ("conv1", "bn1"),
            3,
            base,
            (7, 2, Padding::Sym(3), 1),
            BN_EPS,
            Act::Relu,
        )?;
        let mut blocks = Vec::new();
        let mut c_in = base;
        for (stage, &count) in stage_sizes.iter().enumerate() {
            let width = base << stage;
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let name = format!("layer{}.{i}", stage + 1);
                blocks.push(Bottleneck::new(be, rng, &name, c_in, width, stride)?);
                c_in = width * EXPANSION;
            }
        }
        let fc = if classifier {
            Some(Linear::new(be, rng, "fc", c_in, 1000, true)?)
        } else {
            None
        };
        Ok(ResNet {
            depth: 0,
            base,
            stem,
            maxpool: MaxPool2d::new(3, 2, 1),
            blocks,
            fc,
            avg: GemPool::avg(),
            stage_sizes,
            out_hw: (0, 0),
            maps: EvalMaps::default(),
        })
    }

    fn output_ref(&self) -> &Buf {
        Self::output_of(&self.maps, &self.blocks, &self.maxpool)
    }

    /// The last forward's output: in the eval maps, or the last layer's own buffer.
    fn output_of<'a>(maps: &'a EvalMaps, blocks: &'a [Bottleneck], pool: &'a MaxPool2d) -> &'a Buf {
        match maps.output() {
            Some(y) => y,
            None => blocks.last().map_or(&pool.y, |b| b.y()),
        }
    }

    /// Blocks before the first stride-32 one (layer1 to layer3).
    fn mid_end(&self) -> usize {
        self.stage_sizes[..3].iter().sum()
    }

    /// The eval-mode forward through [`EvalMaps`]: the stem's BatchNorm into slot 1, the max
    /// pool into slot 0, then every block from one slot into the next.
    fn infer(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
    ) -> Result<(usize, usize)> {
        let mid_end = self.mid_end();
        let maps = &mut self.maps;
        maps.out = None;
        let (pooled, stem) = maps.io.split_at_mut(1);
        let (h, w) =
            self.stem
                .infer(be, x, None, (n, h, w), (&mut maps.scratch.z, &mut stem[0]))?;
        let (mut h, mut w) =
            self.maxpool
                .forward_into(be, stem[0].buf(), (n, self.base, h, w), &mut pooled[0])?;
        let mut from = 0;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let to = EvalMaps::next(from, i + 1 == mid_end);
            let (x, out, scratch) = maps.pass(from, to)?;
            (h, w) = b.infer(be, x, (n, h, w), out, scratch)?;
            from = to;
        }
        maps.out = Some(from);
        self.out_hw = (h, w);
        Ok((h, w))
    }
}

impl Module for ResNet {
    fn params(&self) -> Vec<&Param> {
        let mut v = self.stem.params();
        for b in &self.blocks {
            for u in b.units() {
                v.extend(u.params());
            }
        }
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
        if let Some(fc) = &mut self.fc {
            v.extend(fc.params_mut());
        }
        v
    }
}

impl Backbone for ResNet {
    fn name(&self) -> String {
        match self.depth {
            0 => format!("resnet-custom{:?}x{}", self.stage_sizes, self.base),
            d => format!("resnet{d}"),
        }
    }

    fn out_channels(&self) -> usize {
        (self.base << 3) * EXPANSION
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
        let (h, w) = self.stem.forward(be, x, (n, h, w), train)?;
        let c = self.base;
        let (mut h, mut w) = self.maxpool.forward(be, &self.stem.bn.y, (n, c, h, w))?;
        let mut prev = &self.maxpool.y;
        for b in self.blocks.iter_mut() {
            (h, w) = b.forward(be, prev, (n, h, w), train)?;
            prev = b.y();
        }
        self.out_hw = (h, w);
        Ok((h, w))
    }

    fn output(&self) -> &Buf {
        self.output_ref()
    }

    fn mid_output(&self) -> Option<(&Buf, usize)> {
        let end = self.mid_end();
        let map = match self.maps.out {
            Some(_) => self.maps.io[MID].buf(),
            None => self.blocks.get(end.checked_sub(1)?)?.y(),
        };
        (end > 0).then_some((map, (self.base << 2) * EXPANSION))
    }

    fn backward(&mut self, be: &dyn Backend, x: &Buf, dy: &Buf) -> Result<()> {
        // Each block's identity-path buffer back where its backward writes it, before any block
        // runs: a block's c1 may write the block before's dz (Bottleneck::backward).
        for b in &mut self.blocks {
            b.swap_identity_gradient();
        }
        for i in (0..self.blocks.len()).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let (cur, after) = rest
                .split_first_mut()
                .ok_or_else(|| anyhow!("ResNet block {i} missing"))?;
            let (input, then) = match before.last_mut() {
                Some(b) => b.c3.output_and_reduce(be)?,
                None => (&self.maxpool.y, None),
            };
            let grad = after.first().map_or(dy, |b| &b.dx);
            cur.backward(be, input, grad, then)?;
        }
        let d_pool = self.blocks.first().map_or(dy, |b| &b.dx);
        self.maxpool.backward(be, d_pool)?;
        self.stem.backward(be, x, &self.maxpool.dx, false)
    }

    fn batchnorms_mut(&mut self) -> Vec<&mut super::batchnorm::BatchNorm2d> {
        let mut v = vec![&mut self.stem.bn];
        for b in &mut self.blocks {
            v.extend(b.units_mut().into_iter().map(|u| &mut u.bn));
        }
        v
    }

    fn logits(
        &mut self,
        be: &dyn Backend,
        x: &Buf,
        (n, h, w): (usize, usize, usize),
    ) -> Result<Vec<f32>> {
        let (fh, fw) = Backbone::forward(self, be, x, (n, h, w), false)?;
        let c = self.out_channels();
        let feat = Self::output_of(&self.maps, &self.blocks, &self.maxpool);
        let fc = self
            .fc
            .as_mut()
            .ok_or_else(|| anyhow!("this ResNet was built without its fc classifier"))?;
        classify(be, feat, (n, c, fh, fw), &mut self.avg, fc)
    }

    fn summary(&self) -> Vec<String> {
        let base = self.base;
        let mut v = vec![
            format!("conv1 7x7/2 3->{base} + bn1 + relu"),
            "maxpool 3x3/2 pad 1".to_string(),
        ];
        let mut c_in = base;
        for (stage, &count) in self.stage_sizes.iter().enumerate() {
            let width = base << stage;
            v.push(format!(
                "layer{} {count} x Bottleneck(1x1 {width}, 3x3 {width}{}, 1x1 {}) {c_in}->{}",
                stage + 1,
                if stage > 0 { " /2 first" } else { "" },
                width * EXPANSION,
                width * EXPANSION
            ));
            c_in = width * EXPANSION;
        }
        if self.fc.is_some() {
            v.push(format!("avgpool + fc {c_in}->1000"));
        }
        v
    }
}

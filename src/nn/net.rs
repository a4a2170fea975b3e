//! The backbones this crate builds ([`Arch`]), and the retrieval network InsCLR trains:
//! backbone -> GeM (p = 3 fixed) -> head (spec section 3).

pub use super::backbone::Backbone;
use super::efficientnet::EfficientNetLite0;
use super::head::{Head, HeadKind};
use super::pool::GemPool;
use super::resnet::ResNet;
use super::{empty, ensure, ensure_len, DescriptorNet, LocalLayer, Module, Param};
use crate::backend::{Backend, Buf, DType, ImageToTensor};
use crate::rng::Rng;
use anyhow::{anyhow, bail, Context, Result};

/// The backbones this crate builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    ResNet50,
    ResNet101,
    EfficientNetLite0,
    /// [`ResNet::custom`] (the small networks `train` builds from `MODEL.BACKBONE.STAGES` and
    /// `BASE_WIDTH`). Parsed with `base == 0`, meaning "read the layout from the weights".
    ResNetCustom {
        stages: [usize; 4],
        base: usize,
    },
}

impl Arch {
    /// Parses `resnet50`, `resnet101`, `efficientnet-lite0`, `resnet-custom`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "resnet50" | "resnet-50" => Ok(Arch::ResNet50),
            "resnet101" | "resnet-101" => Ok(Arch::ResNet101),
            "efficientnet-lite0" => Ok(Arch::EfficientNetLite0),
            "resnet-custom" => Ok(Arch::ResNetCustom {
                stages: [0; 4],
                base: 0,
            }),
            _ => bail!(
                "unknown model {s:?}; use resnet50, resnet101, efficientnet-lite0 or resnet-custom"
            ),
        }
    }

    /// This architecture with a `resnet-custom` layout read from `tensors` (stem width from
    /// `conv1.weight`, blocks per stage from the `layerS.I.` names): a model `train` wrote
    /// records no layout, but its tensor names and shapes say it.
    pub fn with_layout_of(self, tensors: &[crate::io::tensor::Tensor]) -> Result<Self> {
        let Arch::ResNetCustom { base: 0, .. } = self else {
            return Ok(self);
        };
        let stem = tensors.iter().find(|t| t.name == "conv1.weight");
        let base = stem.and_then(|t| t.shape.first().copied()).unwrap_or(0);
        let mut stages = [0usize; 4];
        for t in tensors {
            let mut parts = t.name.split('.');
            let (Some(layer), Some(block)) = (parts.next(), parts.next()) else {
                continue;
            };
            let stage = layer
                .strip_prefix("layer")
                .and_then(|s| s.parse::<usize>().ok());
            if let (Some(s @ 1..=4), Ok(i)) = (stage, block.parse::<usize>()) {
                stages[s - 1] = stages[s - 1].max(i + 1);
            }
        }
        if base == 0 || stages.contains(&0) {
            bail!(
                "not a resnet-custom model: expected conv1.weight and layer1..layer4 blocks, found stem width {base} and blocks per stage {stages:?}"
            );
        }
        Ok(Arch::ResNetCustom { stages, base })
    }

    /// A randomly initialised backbone, with its ImageNet classifier when `classifier`.
    pub fn build(
        self,
        be: &dyn Backend,
        rng: &mut Rng,
        classifier: bool,
    ) -> Result<Box<dyn Backbone>> {
        Ok(match self {
            Arch::ResNet50 => Box::new(ResNet::new(be, rng, 50, classifier)?),
            Arch::ResNet101 => Box::new(ResNet::new(be, rng, 101, classifier)?),
            Arch::EfficientNetLite0 => Box::new(EfficientNetLite0::new(be, rng, classifier)?),
            Arch::ResNetCustom { stages, base } => {
                Box::new(ResNet::custom(be, rng, stages, base, classifier)?)
            }
        })
    }
}

/// A batch of `n` images of `h x w`, as a network takes it.
#[derive(Clone, Copy, Debug)]
pub enum Images<'a> {
    /// Normalised, `n x 3 x h x w` f32.
    Tensor(&'a [f32]),
    /// Decoded RGB bytes, `n x h x w x 3`, normalised on the backend with `mean` / `std` (a
    /// quarter of the upload).
    Rgb {
        bytes: &'a [u8],
        mean: [f32; 3],
        std: [f32; 3],
    },
}

/// Puts a batch on the backend as a network computing in `precision` takes it, `n x 3 x h x w`:
/// in `input` (f32) or, for a bf16 network, `input_lp` (what [`network_input`] returns). A tensor
/// is uploaded as is (f32) and cast; bytes go into `staging` and are converted there, straight
/// into the network's type.
fn load_images(
    be: &dyn Backend,
    (input, input_lp): (&mut Buf, &mut Buf),
    staging: &mut Buf,
    x: Images,
    (n, h, w): (usize, usize, usize),
    precision: DType,
) -> Result<()> {
    let want = n * 3 * h * w;
    let got = match x {
        Images::Tensor(v) => v.len(),
        Images::Rgb { bytes, .. } => bytes.len(),
    };
    if got != want {
        bail!("image batch holds {got} values, expected n*3*h*w = {n}*3*{h}*{w} = {want}");
    }
    match x {
        Images::Tensor(v) => {
            ensure_len(be, input, want)?;
            be.upload_into(v, input)?;
            be.cast_to(input, precision, input_lp).map(|_| ())
        }
        Images::Rgb { bytes, mean, std } => {
            ensure(be, staging, DType::U8, want)?;
            be.upload_into(bytes, staging)?;
            let out = if precision == DType::F32 {
                input
            } else {
                input_lp
            };
            ensure(be, out, precision, want)?;
            let s = ImageToTensor { n, h, w, mean, std };
            be.image_to_tensor(staging, out, s)
        }
    }
}

/// The batch [`load_images`] left for a network computing in `precision`.
fn network_input<'a>(precision: DType, input: &'a Buf, input_lp: &'a Buf) -> &'a Buf {
    match precision {
        DType::F32 => input,
        _ => input_lp,
    }
}

/// Runs backbone -> GeM on `input` (result in `pool.y`); returns the feature map's `(fh,
/// fw)`. Shared by [`RetrievalNet`] and [`GemNet`].
fn backbone_gem(
    be: &dyn Backend,
    backbone: &mut dyn Backbone,
    pool: &mut GemPool,
    input: &Buf,
    (n, h, w): (usize, usize, usize),
    train: bool,
) -> Result<(usize, usize)> {
    let (fh, fw) = backbone
        .forward(be, input, (n, h, w), train)
        .with_context(|| format!("{} forward", backbone.name()))?;
    pool.forward(be, backbone.output(), (n, backbone.out_channels(), fh, fw))?;
    Ok((fh, fw))
}

/// The backbone's `layer` map of the last forward (`n` images of `h x w` giving the output
/// `fh x fw`), as f32 on the host ([`DescriptorNet::feature_map`]). A bf16 map is downloaded as
/// is (half the transfer) and widened here, exactly.
fn download_map(
    be: &dyn Backend,
    backbone: &dyn Backbone,
    dims: Option<LastForward>,
    layer: LocalLayer,
) -> Result<Option<(Vec<f32>, [usize; 4])>> {
    let Some(LastForward { n, h, w, fh, fw }) = dims else {
        bail!("feature_map before any describe: there is no map yet");
    };
    let (y, c, fh, fw) = match layer {
        LocalLayer::Last => (backbone.output(), backbone.out_channels(), fh, fw),
        LocalLayer::Mid => match backbone.mid_output() {
            Some((y, c)) => (y, c, h.div_ceil(16), w.div_ceil(16)),
            None => bail!(
                "{} has no stride-16 stage; use the last layer",
                backbone.name()
            ),
        },
    };
    if y.len() != n * c * fh * fw {
        bail!(
            "{}'s {layer:?} map holds {} values, not the {n}x{c}x{fh}x{fw} map of the last forward",
            backbone.name(),
            y.len()
        );
    }
    let map = match y.dtype() {
        DType::F32 => be.download::<f32>(y)?,
        DType::BF16 => be
            .download::<half::bf16>(y)?
            .into_iter()
            .map(half::bf16::to_f32)
            .collect(),
        d => bail!("{}'s output is {d}, not f32 or bf16", backbone.name()),
    };
    Ok(Some((map, [n, c, fh, fw])))
}

/// The shape of a network's last forward: `n` images of `h x w`, output map `fh x fw`.
#[derive(Clone, Copy, Debug)]
struct LastForward {
    n: usize,
    h: usize,
    w: usize,
    fh: usize,
    fw: usize,
}

/// Backbone -> GeM -> head: the descriptor network InsCLR trains and evaluates.
pub struct RetrievalNet {
    pub backbone: Box<dyn Backbone>,
    pub pool: GemPool,
    pub head: Head,
    /// The type the backbone computes in: f32, or bf16 (`SOLVER.PRECISION`) with f32 master
    /// weights, f32 BatchNorm statistics and an f32 head.
    precision: DType,
    input: Buf,
    /// The input in `precision` when that is not f32.
    input_lp: Buf,
    /// GeM's output as f32 for the head, and the head's input gradient in `precision`, when
    /// `precision` is not f32.
    pooled: Buf,
    d_pooled: Buf,
    /// The last RGB batch's bytes on the backend.
    staging: Buf,
    /// The shape of the last forward.
    dims: Option<LastForward>,
    trained: bool,
    /// [`RetrievalNet::freeze_backbone`] was called.
    backbone_frozen: bool,
}

impl RetrievalNet {
    /// A network on `backbone` with a `kind` head to `out_dim`-dimensional descriptors.
    pub fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        backbone: Box<dyn Backbone>,
        kind: HeadKind,
        out_dim: usize,
    ) -> Result<Self> {
        let c = backbone.out_channels();
        let head = Head::new(be, rng, kind, c, out_dim)?;
        Ok(RetrievalNet {
            backbone,
            pool: GemPool::gem(),
            head,
            precision: DType::F32,
            input: empty(),
            input_lp: empty(),
            pooled: empty(),
            d_pooled: empty(),
            staging: Buf::empty(DType::U8),
            dims: None,
            trained: false,
            backbone_frozen: false,
        })
    }

    /// Runs the backbone and GeM in `dtype` (f32 or bf16) from now on, forwards and backward;
    /// the parameters, their gradients, BatchNorm's statistics and the head stay f32.
    pub fn set_precision(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            bail!("precision {dtype}: use f32 or bf16");
        }
        self.precision = dtype;
        Ok(())
    }

    /// Splits every BatchNorm's batch statistics into `groups` contiguous chunks (spec G13:
    /// reproduces the original's 4-GPU DataParallel statistics on one device).
    pub fn set_bn_ghost_groups(&mut self, groups: usize) {
        for bn in self.backbone.batchnorms_mut() {
            bn.ghost = groups;
        }
    }

    /// Freezes (or unfreezes) every backbone BatchNorm's statistics: training forwards then
    /// normalise with the running statistics and keep them (`MODEL.BACKBONE.FREEZE_BN`).
    pub fn set_bn_frozen(&mut self, frozen: bool) {
        for bn in self.backbone.batchnorms_mut() {
            bn.frozen = frozen;
        }
    }

    /// Trains the head only (`MODEL.BACKBONE.FROZEN`): the backbone always runs in eval mode
    /// and backward stops at the head. Its gradient buffers are dropped, which is what keeps
    /// its tensors out of the optimiser.
    pub fn freeze_backbone(&mut self) {
        self.backbone_frozen = true;
        for p in self.backbone.params_mut() {
            p.grad = None;
        }
    }

    fn run(
        &mut self,
        be: &dyn Backend,
        x: Images,
        (n, h, w): (usize, usize, usize),
        train: bool,
    ) -> Result<&Buf> {
        let inputs = (&mut self.input, &mut self.input_lp);
        load_images(be, inputs, &mut self.staging, x, (n, h, w), self.precision)?;
        let input = network_input(self.precision, &self.input, &self.input_lp);
        let (fh, fw) = backbone_gem(
            be,
            self.backbone.as_mut(),
            &mut self.pool,
            input,
            (n, h, w),
            train && !self.backbone_frozen,
        )?;
        let pooled = be.cast_to(&self.pool.y, DType::F32, &mut self.pooled)?;
        self.head.forward(be, pooled, n)?;
        self.dims = Some(LastForward { n, h, w, fh, fw });
        self.trained = train;
        Ok(self.head.y())
    }

    /// Training forward (BatchNorm with batch statistics, running averages updated): the
    /// `n x out_dim` descriptors on the backend, kept for [`RetrievalNet::backward`].
    pub fn forward_train(
        &mut self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<&Buf> {
        self.run(be, Images::Tensor(x), (n, h, w), true)
    }

    /// [`RetrievalNet::forward_train`] of a batch in either form (decoded RGB bytes are
    /// converted and normalised on the backend).
    pub fn forward_train_images(
        &mut self,
        be: &dyn Backend,
        x: Images,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<&Buf> {
        self.run(be, x, (n, h, w), true)
    }

    /// Eval-mode descriptors (on the host) of a batch in either form.
    pub fn describe_images(
        &mut self,
        be: &dyn Backend,
        x: Images,
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>> {
        let y = self.run(be, x, (n, h, w), false)?;
        be.download::<f32>(y)
    }

    /// Backward from the descriptors' gradient (`n x out_dim`): accumulates every parameter's
    /// gradient (zero them first with [`super::zero_grads`]).
    pub fn backward(&mut self, be: &dyn Backend, d_desc: &Buf) -> Result<()> {
        if !self.trained {
            bail!("RetrievalNet::backward needs a forward_train first");
        }
        let n = self
            .dims
            .ok_or_else(|| anyhow!("backward before forward"))?
            .n;
        if d_desc.len() != n * self.head.out_dim() {
            bail!(
                "descriptor gradient holds {} values, expected {n} x {}",
                d_desc.len(),
                self.head.out_dim()
            );
        }
        let pooled = match self.pool.y.dtype() {
            DType::F32 => &self.pool.y,
            _ => &self.pooled,
        };
        self.head.backward(be, pooled, d_desc)?;
        if self.backbone_frozen {
            return Ok(());
        }
        let d_pooled = be.cast_to(self.head.dx(), self.precision, &mut self.d_pooled)?;
        self.pool.backward(be, self.backbone.output(), d_pooled)?;
        let input = network_input(self.precision, &self.input, &self.input_lp);
        self.backbone
            .backward(be, input, &self.pool.dx)
            .with_context(|| format!("{} backward", self.backbone.name()))
    }

    /// Layer summary, parameter count and output dimension, for `insclr-cu info --model`.
    pub fn summary(&self) -> Vec<String> {
        let mut v = self.backbone.summary();
        v.push(format!(
            "GeM p={} (fixed) -> {} channels",
            self.pool.p,
            self.backbone.out_channels()
        ));
        let (c, d) = (self.head.in_dim(), self.head.out_dim());
        v.push(match self.head.kind {
            HeadKind::NormLinearNorm => {
                format!("head norm_linear_norm: L2 -> head.fc {c}->{d} (no bias) -> L2")
            }
            HeadKind::LinearNorm => format!("head linear_norm: head.fc {c}->{d} (bias) -> L2"),
            HeadKind::L2Only => format!("no head (MODEL.HEAD.ENABLE = false): L2 of the {c}-d GeM"),
        });
        v
    }
}

impl Module for RetrievalNet {
    fn params(&self) -> Vec<&Param> {
        let mut v = self.backbone.params();
        v.extend(self.head.params());
        v
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut v = self.backbone.params_mut();
        v.extend(self.head.params_mut());
        v
    }
}

impl DescriptorNet for RetrievalNet {
    fn out_dim(&self) -> usize {
        self.head.out_dim()
    }

    fn input_norm(&self) -> crate::data::image::PixelNorm {
        self.backbone.input_norm()
    }

    fn describe(
        &mut self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>> {
        self.describe_images(be, Images::Tensor(x), n, h, w)
    }

    fn feature_map(
        &self,
        be: &dyn Backend,
        layer: LocalLayer,
    ) -> Result<Option<(Vec<f32>, [usize; 4])>> {
        download_map(be, self.backbone.as_ref(), self.dims, layer)
    }
}

/// Backbone -> GeM with no head: the raw GeM vector, the original's stage-0 descriptor of an
/// ImageNet model (spec G2: head replaced by identity).
pub struct GemNet {
    pub backbone: Box<dyn Backbone>,
    pub pool: GemPool,
    input: Buf,
    /// What the backbone and GeM compute in (f32 or bf16), the input in it when that is not
    /// f32, and GeM's output as f32.
    precision: DType,
    input_lp: Buf,
    pooled: Buf,
    /// The shape of the last forward.
    dims: Option<LastForward>,
}

impl GemNet {
    /// GeM (p = 3) over `backbone`'s output map.
    pub fn new(backbone: Box<dyn Backbone>) -> Self {
        GemNet {
            backbone,
            pool: GemPool::gem(),
            input: empty(),
            precision: DType::F32,
            input_lp: empty(),
            pooled: empty(),
            dims: None,
        }
    }

    /// Runs the backbone and GeM in `dtype` (f32 or bf16), as [`RetrievalNet::set_precision`].
    pub fn set_precision(&mut self, dtype: DType) -> Result<()> {
        if !matches!(dtype, DType::F32 | DType::BF16) {
            bail!("precision {dtype}: use f32 or bf16");
        }
        self.precision = dtype;
        Ok(())
    }
}

impl Module for GemNet {
    fn params(&self) -> Vec<&Param> {
        self.backbone.params()
    }

    fn params_mut(&mut self) -> Vec<&mut Param> {
        self.backbone.params_mut()
    }
}

impl DescriptorNet for GemNet {
    fn out_dim(&self) -> usize {
        self.backbone.out_channels()
    }

    fn input_norm(&self) -> crate::data::image::PixelNorm {
        self.backbone.input_norm()
    }

    fn describe(
        &mut self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>> {
        load_images(
            be,
            (&mut self.input, &mut self.input_lp),
            &mut Buf::empty(DType::U8),
            Images::Tensor(x),
            (n, h, w),
            self.precision,
        )?;
        let input = network_input(self.precision, &self.input, &self.input_lp);
        let (fh, fw) = backbone_gem(
            be,
            self.backbone.as_mut(),
            &mut self.pool,
            input,
            (n, h, w),
            false,
        )?;
        self.dims = Some(LastForward { n, h, w, fh, fw });
        be.download::<f32>(be.cast_to(&self.pool.y, DType::F32, &mut self.pooled)?)
    }

    fn feature_map(
        &self,
        be: &dyn Backend,
        layer: LocalLayer,
    ) -> Result<Option<(Vec<f32>, [usize; 4])>> {
        download_map(be, self.backbone.as_ref(), self.dims, layer)
    }
}

/// Which descriptor to build from a weight file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DescriptorChoice {
    /// The file's head when it has one, else raw GeM.
    #[default]
    Auto,
    /// The trained head; an error for a file without one.
    Head,
    /// The backbone's raw GeM, ignoring any head in the file.
    Gem,
}

/// How to turn a weight file into a descriptor network, beyond its architecture.
#[derive(Clone, Copy, Debug)]
pub struct LoadChoice {
    /// Head or raw GeM.
    pub descriptor: DescriptorChoice,
    /// What the backbone and GeM compute in: f32, or bf16 (tensor cores on a GPU; the head
    /// stays f32).
    pub precision: DType,
    /// Pixel normalisation that replaces the one the file records (or the backbone's
    /// default); a difference from the recorded one is warned about.
    pub pixel_norm: Option<crate::data::image::PixelNorm>,
}

impl Default for LoadChoice {
    /// The file's head when it has one, its recorded normalisation, f32.
    fn default() -> Self {
        LoadChoice {
            descriptor: DescriptorChoice::Auto,
            precision: DType::F32,
            pixel_norm: None,
        }
    }
}

/// A descriptor network with its input normalisation chosen at load time.
struct Normed {
    net: Box<dyn DescriptorNet>,
    norm: crate::data::image::PixelNorm,
}

impl DescriptorNet for Normed {
    fn out_dim(&self) -> usize {
        self.net.out_dim()
    }

    fn input_norm(&self) -> crate::data::image::PixelNorm {
        self.norm
    }

    fn describe(
        &mut self,
        be: &dyn Backend,
        x: &[f32],
        n: usize,
        h: usize,
        w: usize,
    ) -> Result<Vec<f32>> {
        self.net.describe(be, x, n, h, w)
    }

    fn feature_map(
        &self,
        be: &dyn Backend,
        layer: LocalLayer,
    ) -> Result<Option<(Vec<f32>, [usize; 4])>> {
        self.net.feature_map(be, layer)
    }
}

impl Arch {
    /// The name the built backbone reports ([`Backbone::name`]); `resnet-custom` before its
    /// layout is known is just `resnet-custom`.
    pub fn name(self) -> String {
        match self {
            Arch::ResNet50 => "resnet50".into(),
            Arch::ResNet101 => "resnet101".into(),
            Arch::EfficientNetLite0 => "efficientnet-lite0".into(),
            Arch::ResNetCustom { base: 0, .. } => "resnet-custom".into(),
            Arch::ResNetCustom { stages, base } => format!("resnet-custom{stages:?}x{base}"),
        }
    }

    /// The architecture of a recorded backbone name (`resnet-custom[1, 1, 1, 1]x8` gives
    /// `resnet-custom`, whose layout is then read from the tensors).
    pub fn parse_recorded(name: &str) -> Result<Self> {
        let family = name.split('[').next().unwrap_or(name);
        Arch::parse(family)
    }
}

/// Tensors of a training checkpoint that are not the model: the optimiser's state.
const OPTIMIZER_PREFIX: &str = "optimizer.";

/// A descriptor network of architecture `arch` with the weights of `path` (`.safetensors` or
/// `.pth`). A file holding `head.fc.weight` (an insclr-cu checkpoint) gives the full
/// [`RetrievalNet`] with that head, loaded strictly; any other file (torchvision / ImageNet
/// weights) gives a [`GemNet`] whose classifier tensors are ignored. The string says what was
/// built and loaded. See [`load_descriptor_net_with`] for the choices.
pub fn load_descriptor_net(
    be: &dyn Backend,
    arch: Arch,
    path: &std::path::Path,
) -> Result<(Box<dyn DescriptorNet>, String)> {
    load_descriptor_net_with(be, Some(arch), path, LoadChoice::default())
}

/// [`load_descriptor_net`] that follows what the file records ([`super::meta`]): `arch` None
/// takes the recorded backbone, and a given one must agree with it; the recorded pixel
/// normalisation replaces the backbone's default unless `choice` sets one; `choice` picks the
/// head or the raw GeM. A training checkpoint's optimiser tensors are skipped.
pub fn load_descriptor_net_with(
    be: &dyn Backend,
    arch: Option<Arch>,
    path: &std::path::Path,
    choice: LoadChoice,
) -> Result<(Box<dyn DescriptorNet>, String)> {
    use super::meta::{pixel_norm_text, ModelMeta};
    use super::weights::{load_into, read_any, LoadOptions};
    let meta = ModelMeta::read(path)?;
    let arch = match (arch, &meta.backbone) {
        (Some(a), _) => a,
        (None, Some(rec)) => Arch::parse_recorded(rec)
            .with_context(|| format!("{} records backbone {rec:?}", path.display()))?,
        (None, None) => bail!(
            "{} records no backbone (not written by insclr-cu train); name it with --model",
            path.display()
        ),
    };
    let tensors = read_any(path)?;
    let given = arch.name();
    let arch = arch
        .with_layout_of(&tensors)
        .with_context(|| format!("{}", path.display()))?;
    if let Some(rec) = &meta.backbone {
        if *rec != arch.name() {
            bail!(
                "--model {given} does not match {}: the file records backbone {rec}; use --model {} (or leave --model out)",
                path.display(),
                Arch::parse_recorded(rec).map(Arch::name).unwrap_or_else(|_| rec.clone())
            );
        }
    }
    let find = |suffix: &str| tensors.iter().find(|t| t.name.ends_with(suffix));
    let has_head = find("head.fc.weight").is_some();
    let use_head = match choice.descriptor {
        DescriptorChoice::Auto => has_head,
        DescriptorChoice::Head if !has_head => bail!(
            "--descriptor head: {} has no head (no head.fc.weight); use --descriptor gem for its raw GeM descriptors",
            path.display()
        ),
        DescriptorChoice::Head => true,
        DescriptorChoice::Gem => false,
    };
    let mut rng = Rng::new(0);
    let backbone = arch.build(be, &mut rng, false)?;
    let arch = backbone.name();
    let mut norm = backbone.input_norm();
    let mut norm_from = "the backbone's default";
    if let Some(rec) = meta.pixel_norm {
        norm = rec;
        norm_from = "recorded in the file";
    }
    if let Some(flag) = choice.pixel_norm {
        if let Some(rec) = meta.pixel_norm.filter(|r| *r != flag) {
            eprintln!(
                "warning: --pixel-norm {} differs from the normalisation {} was trained with ({}); descriptors will not match the training inputs",
                pixel_norm_text(&flag),
                path.display(),
                pixel_norm_text(&rec)
            );
        }
        norm = flag;
        norm_from = "--pixel-norm";
    }
    let (net, what, report): (Box<dyn DescriptorNet>, String, _) = if use_head {
        let fc = find("head.fc.weight")
            .ok_or_else(|| anyhow!("{}: no head.fc.weight", path.display()))?;
        let (kind, kind_name) = match find("head.fc.bias") {
            Some(_) => (HeadKind::LinearNorm, "linear_norm"),
            None => (HeadKind::NormLinearNorm, "norm_linear_norm"),
        };
        let dim = *fc
            .shape
            .first()
            .ok_or_else(|| anyhow!("{}: head.fc.weight has no shape", path.display()))?;
        let mut net = RetrievalNet::new(be, &mut rng, backbone, kind, dim)?;
        net.set_precision(choice.precision)?;
        let opts = LoadOptions {
            strict: true,
            skip_prefixes: vec![OPTIMIZER_PREFIX.into()],
        };
        let report = load_into(&mut net, be, &tensors, &opts)
            .with_context(|| format!("loading {}", path.display()))?;
        let what = format!("{arch} + GeM + {kind_name} head ({dim}-d)");
        super::drop_grads(&mut net);
        (Box::new(net), what, report)
    } else {
        let mut net = GemNet::new(backbone);
        net.set_precision(choice.precision)?;
        // A file written by train holds exactly the backbone besides its head; an ImageNet file
        // also holds a classifier.
        let ours = has_head || meta.backbone.is_some();
        let opts = if ours {
            LoadOptions {
                strict: true,
                skip_prefixes: vec![OPTIMIZER_PREFIX.into(), "head.".into()],
            }
        } else {
            let mut o = LoadOptions::backbone();
            o.skip_prefixes.push(OPTIMIZER_PREFIX.into());
            o
        };
        let report = load_into(&mut net, be, &tensors, &opts)
            .with_context(|| format!("loading {}", path.display()))?;
        if !report.missing.is_empty() {
            bail!(
                "{}: {} backbone tensors missing (first: {}); is this a {arch} file?",
                path.display(),
                report.missing.len(),
                report.missing[0]
            );
        }
        let what = if has_head {
            format!("{arch} + GeM (raw; the file's head ignored)")
        } else {
            format!("{arch} + GeM (raw, no head)")
        };
        super::drop_grads(&mut net);
        (Box::new(net), what, report)
    };
    let n_opt = report
        .skipped
        .iter()
        .filter(|n| n.starts_with(OPTIMIZER_PREFIX))
        .count();
    let mut what = format!(
        "{what} from {} ({} tensors",
        path.display(),
        report.loaded.len()
    );
    if n_opt > 0 {
        what.push_str(&format!(
            "; {n_opt} optimiser tensors of the training checkpoint skipped"
        ));
    }
    what.push_str(&format!(
        "), pixel normalisation {} ({norm_from})",
        pixel_norm_text(&norm)
    ));
    if choice.precision != DType::F32 {
        what.push_str(&format!(", backbone in {}", choice.precision));
    }
    Ok((Box::new(Normed { net, norm }), what))
}

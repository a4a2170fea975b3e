//! The launch plan of a training step (`insclr-cu plan`): the step runs through the ordinary
//! model and optimiser code on a CUDA backend whose device layer records launches and runs none
//! ([`crate::backend::cuda::record`]), so every launch is listed exactly as the launchers shape
//! it. Each one then gets what the hardware makes of it, by model: blocks per multiprocessor
//! from the build's ptxas report, waves on an H100 and an H200, and a roofline floor from the
//! work its launcher states. The floors' sum is the step's speed of light, printed beside the
//! last time measured on a GPU. Nothing here runs on or measures a GPU.

pub mod gpus;
pub mod measured;

use crate::backend::cuda::device::Launch;
use crate::backend::cuda::occupancy::{self, Occupancy, Resources, SM90};
use crate::backend::cuda::record::Event;
use crate::backend::cuda::work::{Unit, Work};
use crate::backend::{Backend, Buf, CudaBackend, DType};
use crate::data::image::{IMAGENET_MEAN, IMAGENET_STD};
use crate::nn::head::HeadKind;
use crate::nn::{Arch, Images, RetrievalNet};
use crate::rng::Rng;
use crate::train::config::Solver;
use crate::train::optim::Optimizer;
use anyhow::{bail, Context, Result};
use gpus::{GpuSpec, MODELLED};

/// Descriptor size of the benchmarked step (the GLDv2 recipe's head).
pub const DESC_DIM: usize = 2048;

/// The backbone's training step as `benches/train_step.rs` times it (and so as the measured
/// step times in `bench_results/` were taken): the training forward of a batch of images, their
/// upload included; zeroed gradients; the backward of a descriptor gradient; the gradient clip
/// at norm 10; one Adam update over the parameter arena. The method's own work (loss, memory
/// banks, selection, mining) is not in it.
pub struct BackboneStep {
    pub net: RetrievalNet,
    pub opt: Optimizer,
    pub batch: usize,
    pub px: usize,
}

impl BackboneStep {
    /// A randomly initialised `arch` with a norm-linear-norm head to [`DESC_DIM`], computing in
    /// `precision`, and its Adam optimiser, on `be`.
    pub fn new(
        be: &dyn Backend,
        rng: &mut Rng,
        arch: Arch,
        precision: DType,
        batch: usize,
        px: usize,
    ) -> Result<BackboneStep> {
        let mut net = Self::network(be, rng, arch, precision)?;
        let solver = Solver {
            name: "adam".into(),
            base_lr: 1e-6,
            grad_max_norm: 10.0,
            ..Solver::default()
        };
        let opt = Optimizer::new(&solver, be, &mut net)?;
        Ok(BackboneStep {
            net,
            opt,
            batch,
            px,
        })
    }

    /// A randomly initialised `arch` with a norm-linear-norm head to [`DESC_DIM`], computing in
    /// `precision`.
    pub fn network(
        be: &dyn Backend,
        rng: &mut Rng,
        arch: Arch,
        precision: DType,
    ) -> Result<RetrievalNet> {
        let backbone = arch.build(be, rng, false)?;
        let mut net = RetrievalNet::new(be, rng, backbone, HeadKind::NormLinearNorm, DESC_DIM)?;
        net.set_precision(precision)?;
        Ok(net)
    }

    /// One step on `batch` images `x` of `px x px` (decoded RGB bytes, as `train` uploads
    /// them, or a normalised tensor) with descriptor gradient `d_desc` (`batch x DESC_DIM` on
    /// `be`).
    pub fn run(&mut self, be: &dyn Backend, x: Images, d_desc: &Buf) -> Result<()> {
        let (n, px) = (self.batch, self.px);
        self.net.forward_train_images(be, x, n, px, px)?;
        self.opt.zero_grads(be, &mut self.net)?;
        self.net.backward(be, d_desc)?;
        self.opt.clip_grad_norm(be, &mut self.net, 10.0)?;
        self.opt.step(be, &mut self.net, 1.0)
    }
}

/// What run to plan.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    pub arch: Arch,
    pub px: usize,
    pub batch: usize,
    pub precision: DType,
    /// f32's convolutions on TF32 tensor cores ([`Backend::set_tf32`], `SOLVER.TF32`).
    pub tf32: bool,
    pub job: Job,
}

/// The run a plan records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Job {
    /// One training step ([`BackboneStep`]).
    #[default]
    Step,
    /// One extraction call: the eval forward of a batch to descriptors, as `extract` describes
    /// one scale of a batch of images of one size.
    Extract,
}

/// What kind of device operation a planned entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    CopyToDevice,
    CopyToHost,
    Memset,
}

/// What bounds an entry's floor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Compute,
    Memory,
    Pcie,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Compute => "compute",
            Bound::Memory => "memory",
            Bound::Pcie => "pcie",
        }
    }
}

/// One entry on one modelled GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OnGpu {
    /// Blocks over the blocks the GPU holds at once (0 for copies and memsets).
    pub waves: f64,
    /// The roofline floor in seconds.
    pub floor: f64,
    /// The floor with the multiply-adds of partial tiles' empty parts counted ([`Work::fill`]).
    pub tiled: f64,
    pub bound: Bound,
}

impl OnGpu {
    /// The share of the last wave's slots in use, averaged over the waves: waves / ceil(waves).
    pub fn wave_efficiency(&self) -> f64 {
        if self.waves <= 0.0 {
            1.0
        } else {
            self.waves / self.waves.ceil()
        }
    }

    /// The floor when a partly filled last wave takes as long as a full one, and a partial
    /// tile as long as a whole one.
    pub fn quantised_floor(&self) -> f64 {
        self.tiled / self.wave_efficiency()
    }
}

/// One recorded device operation with its model.
#[derive(Clone, Debug)]
pub struct Planned {
    pub kind: Kind,
    /// The kernel, or "memcpy HtoD" / "memcpy DtoH" / "memset".
    pub name: String,
    pub cfg: Option<Launch>,
    pub resources: Option<Resources>,
    pub occupancy: Option<Occupancy>,
    pub blocks: u64,
    pub work: Work,
    /// Per GPU of [`gpus::MODELLED`].
    pub on: Vec<OnGpu>,
    /// The kernel's time at this shape in the last measured call, microseconds.
    pub measured_us: Option<f64>,
}

/// Every device operation of one step, in order, with its model.
#[derive(Clone, Debug)]
pub struct StepPlan {
    pub options: PlanOptions,
    pub entries: Vec<Planned>,
    pub gpus: Vec<GpuSpec>,
    /// The most device memory held at once during the two runs (parameters, a step's gradients
    /// and optimiser state, activations, scratch).
    pub peak_bytes: u64,
}

/// One kernel's entries summed.
#[derive(Clone, Debug)]
pub struct KernelSum {
    pub name: String,
    pub count: usize,
    pub flops: f64,
    pub bytes: f64,
    /// Per GPU: summed floor and summed quantised floor, seconds.
    pub floor: Vec<f64>,
    pub quantised: Vec<f64>,
    /// Summed measured times where every entry has one.
    pub measured_us: Option<f64>,
}

impl StepPlan {
    /// The step's floor on GPU `g` (index into `gpus`): the sum of its entries' floors.
    pub fn floor(&self, g: usize) -> f64 {
        self.entries.iter().map(|e| e.on[g].floor).sum()
    }

    /// [`StepPlan::floor`] with every kernel's last wave and partial tiles counted as full.
    pub fn quantised_floor(&self, g: usize) -> f64 {
        self.entries.iter().map(|e| e.on[g].quantised_floor()).sum()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.entries.iter().filter(|e| e.kind == kind).count()
    }

    /// Entries summed by name, the largest floor on the last GPU first.
    pub fn by_kernel(&self) -> Vec<KernelSum> {
        let mut sums: Vec<KernelSum> = Vec::new();
        for e in &self.entries {
            let i = match sums.iter().position(|s| s.name == e.name) {
                Some(i) => i,
                None => {
                    sums.push(KernelSum {
                        name: e.name.clone(),
                        count: 0,
                        flops: 0.0,
                        bytes: 0.0,
                        floor: vec![0.0; self.gpus.len()],
                        quantised: vec![0.0; self.gpus.len()],
                        measured_us: Some(0.0),
                    });
                    sums.len() - 1
                }
            };
            let s = &mut sums[i];
            s.count += 1;
            s.flops += e.work.flops;
            s.bytes += e.work.bytes;
            for (g, on) in e.on.iter().enumerate() {
                s.floor[g] += on.floor;
                s.quantised[g] += on.quantised_floor();
            }
            s.measured_us = match (s.measured_us, e.measured_us) {
                (Some(a), Some(b)) => Some(a + b),
                _ => None,
            };
        }
        let last = self.gpus.len() - 1;
        sums.sort_by(|a, b| b.floor[last].total_cmp(&a.floor[last]));
        sums
    }
}

/// Records one step (or extraction call) of `o` on the plan backend and models every operation
/// of it. It runs twice and the second is planned: the first allocates (as a real first step
/// does) and the benchmark's timing skips it too.
pub fn plan_step(o: &PlanOptions) -> Result<StepPlan> {
    if o.batch == 0 || o.px == 0 {
        bail!(
            "plan: batch ({}) and image size ({}) must be positive",
            o.batch,
            o.px
        );
    }
    let cuda = CudaBackend::plan();
    let be: &dyn Backend = &cuda;
    be.set_tf32(o.tf32);
    let rec = cuda.recorder().context("the plan backend has a recorder")?;
    let mut rng = Rng::new(3);
    // Values do not matter to a run that computes nothing; zeros cost no time to make. The
    // batch is bytes, as `train` uploads it.
    let bytes = vec![0u8; o.batch * o.px * o.px * 3];
    let x = Images::Rgb {
        bytes: &bytes,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    let mut run: Box<dyn FnMut() -> Result<()>> = match o.job {
        Job::Step => {
            let mut step = BackboneStep::new(be, &mut rng, o.arch, o.precision, o.batch, o.px)?;
            let d_desc = be.upload(&vec![0f32; o.batch * DESC_DIM])?;
            Box::new(move || step.run(be, x, &d_desc))
        }
        Job::Extract => {
            let mut net = BackboneStep::network(be, &mut rng, o.arch, o.precision)?;
            crate::nn::drop_grads(&mut net);
            Box::new(move || net.describe_images(be, x, o.batch, o.px, o.px).map(drop))
        }
    };
    // The peak of the runs, not of building the network (which allocates every parameter's
    // gradient, then given back for an extraction).
    rec.usage().reset_peak();
    run()?;
    rec.set_recording(true);
    let ran = run();
    rec.set_recording(false);
    ran?;
    let peak_bytes = rec.usage().peak();
    let gpus = MODELLED.to_vec();
    let entries = rec
        .take()
        .into_iter()
        .map(|e| model(e, &gpus))
        .collect::<Result<_>>()?;
    Ok(StepPlan {
        options: *o,
        entries,
        gpus,
        peak_bytes,
    })
}

/// One recorded operation on each GPU of `gpus`.
fn model(e: Event, gpus: &[GpuSpec]) -> Result<Planned> {
    let (kind, name, bytes) = match &e {
        Event::Launch { .. } => (Kind::Kernel, String::new(), 0),
        Event::Copy { to_device, bytes } => {
            let (kind, name) = if *to_device {
                (Kind::CopyToDevice, "memcpy HtoD")
            } else {
                (Kind::CopyToHost, "memcpy DtoH")
            };
            (kind, name.to_string(), *bytes)
        }
        Event::Memset { bytes } => (Kind::Memset, "memset".to_string(), *bytes),
    };
    let Event::Launch { kernel, cfg, work } = e else {
        let bound = if kind == Kind::Memset {
            Bound::Memory
        } else {
            Bound::Pcie
        };
        let on = gpus
            .iter()
            .map(|g| {
                let floor = bytes as f64
                    / match bound {
                        Bound::Pcie => g.pcie,
                        _ => g.dram,
                    };
                OnGpu {
                    waves: 0.0,
                    floor,
                    tiled: floor,
                    bound,
                }
            })
            .collect();
        return Ok(Planned {
            kind,
            name,
            cfg: None,
            resources: None,
            occupancy: None,
            blocks: 0,
            work: Work::traffic(bytes, format!("{bytes} bytes")),
            on,
            measured_us: None,
        });
    };
    let Some(work) = work else {
        bail!(
            "{kernel}: its launcher states no work (Args::work), so the plan has no floor for it; \
             add one in src/backend/cuda/"
        );
    };
    let threads = cfg.block.0 * cfg.block.1 * cfg.block.2;
    let blocks = cfg.grid.0 as u64 * cfg.grid.1 as u64 * cfg.grid.2 as u64;
    let resources = occupancy::resources(&kernel);
    let occ = occupancy::blocks_per_sm(&SM90, resources, threads, cfg.smem);
    if occ.blocks == 0 {
        bail!(
            "{kernel}: a block of {threads} threads with {} bytes of dynamic shared memory does \
             not fit on an sm_90 multiprocessor ({})",
            cfg.smem,
            occ.limiter.name()
        );
    }
    let on = gpus
        .iter()
        .map(|g| {
            let peak = match work.unit {
                Unit::TensorBf16 => g.bf16_tensor,
                Unit::TensorTf32 => g.tf32_tensor,
                Unit::Fp32 => g.fp32,
            };
            let (compute, memory) = (work.flops / peak, work.bytes / g.dram);
            OnGpu {
                waves: blocks as f64 / (occ.blocks as f64 * g.sms as f64),
                floor: compute.max(memory),
                tiled: (compute / work.fill).max(memory),
                bound: if compute > memory {
                    Bound::Compute
                } else {
                    Bound::Memory
                },
            }
        })
        .collect();
    let measured_us = measured::get().kernel_us(&kernel, &work.shape);
    Ok(Planned {
        kind: Kind::Kernel,
        name: kernel,
        cfg: Some(cfg),
        resources,
        occupancy: Some(occ),
        blocks,
        work,
        on,
        measured_us,
    })
}

//! `insclr-cu plan`: every launch of one training step (or, with `--extract`, of one extraction
//! call) with its occupancy, waves and roofline floor on an H100 and an H200 (model output), the
//! floors summed by kernel and over the run, the device memory it holds, and the step's last
//! measured time beside them. Runs nothing on a GPU; needs none.

use anyhow::Result;
use insclr::backend::DType;
use insclr::nn::Arch;
use insclr::plan::{self, measured, Job, Kind, PlanOptions, Planned, StepPlan};

/// Arguments of `insclr-cu plan`.
#[derive(clap::Args)]
pub struct Args {
    /// Backbone: resnet50, resnet101 or efficientnet-lite0.
    #[arg(long, default_value = "resnet101")]
    model: String,
    /// Square image side, pixels.
    #[arg(long, default_value_t = 448)]
    img_size: usize,
    /// Images per step (or extraction call).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Plan one extraction call (the eval forward of a batch to descriptors, as `extract` runs
    /// each scale of a batch of one size) instead of a training step.
    #[arg(long)]
    extract: bool,
    /// What the backbone computes in: f32 or bf16 (SOLVER.PRECISION).
    #[arg(long, default_value = "f32", value_parser = super::parse_precision)]
    precision: DType,
    /// In f32, the convolutions on TF32 tensor cores (SOLVER.TF32, extract's --tf32; the
    /// default, as PyTorch's); false: exact f32 SIMT kernels.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tf32: bool,
    /// Rows of the table by kernel (the rest summed into one).
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// Only the table by kernel and the totals, not every launch.
    #[arg(long)]
    summary: bool,
}

pub fn run(args: Args) -> Result<()> {
    let o = PlanOptions {
        arch: Arch::parse(&args.model)?,
        px: args.img_size,
        batch: args.batch,
        precision: args.precision,
        tf32: args.tf32,
        job: if args.extract {
            Job::Extract
        } else {
            Job::Step
        },
    };
    let p = plan::plan_step(&o)?;
    header(&p);
    if !args.summary {
        launches(&p);
    }
    by_kernel(&p, args.top);
    totals(&p);
    Ok(())
}

fn header(p: &StepPlan) {
    let o = &p.options;
    let what = match o.job {
        Job::Step => "one training step as benches/train_step.rs times it",
        Job::Extract => "one extraction call",
    };
    let math = if o.precision == DType::F32 && o.tf32 {
        " (TF32 convolutions)"
    } else {
        ""
    };
    println!(
        "insclr-cu plan: {} at {} px, batch {}, {}{math} — {what}",
        o.arch.name(),
        o.px,
        o.batch,
        o.precision
    );
    match o.job {
        Job::Step => {
            println!(
                "  included: the batch's upload, the training forward, zeroed gradients, the \
                 backward of a descriptor gradient, the gradient clip, Adam"
            );
            println!(
                "  not included: the method's kernels around it in a real stage (loss, memory \
                 banks, selection, mining); the clip's rescale, which runs only when the norm \
                 passes 10 (the plan reads back zeros)"
            );
        }
        Job::Extract => println!(
            "  included: the batch's upload, the eval forward (running statistics, reused maps), \
             GeM, the head, the descriptors' download; not included: decoding and resizing on \
             the CPU, the multi-scale average"
        ),
    }
    println!(
        "  every launch is the launchers' own, recorded by a device layer that runs nothing; \
         occupancy, waves, FLOPs, bytes and floors are model output, not measurements"
    );
    for g in &p.gpus {
        println!(
            "  {}: {} SMs, {:.0} TFLOP/s bf16 tensor, {:.0} TF32 tensor (dense), {:.0} TFLOP/s FP32, \
             {:.2} TB/s DRAM, {:.0} GB/s PCIe each way (published peaks)",
            g.name,
            g.sms,
            g.bf16_tensor / 1e12,
            g.tf32_tensor / 1e12,
            g.fp32 / 1e12,
            g.dram / 1e12,
            g.pcie / 1e9
        );
    }
    let regs = if p
        .entries
        .iter()
        .any(|e| e.kind == Kind::Kernel && e.resources.is_none())
    {
        "some kernels have no ptxas report (a build without nvcc): their occupancy ignores registers"
    } else {
        "registers and static shared memory from this build's ptxas report (sm_90)"
    };
    println!("  {regs}");
    println!(
        "  floor = max(FLOPs / the unit's peak (bf16 or TF32 mma: tensor cores, else FP32), bytes / DRAM \
         bandwidth); bytes = each input read once, each output written once; copies at PCIe; \
         w.eff = waves / ceil(waves)"
    );
    println!(
        "  last waves counted full: each launch's floor, with the multiply-adds of its partial \
         tiles' empty rows and columns (the convolutions' forwards and data gradients), over w.eff"
    );
    println!(
        "  meas. us = the kernel at this shape in {}'s kernel table, where it has the shape \
         (conv2d_bwd_weight: with its reduce, split as it was then)",
        measured::FILE
    );
}

fn dims((x, y, z): (u32, u32, u32)) -> String {
    match (y, z) {
        (1, 1) => x.to_string(),
        (_, 1) => format!("{x}x{y}"),
        _ => format!("{x}x{y}x{z}"),
    }
}

fn smem(bytes: u32) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{}K", bytes / 1024)
    } else {
        bytes.to_string()
    }
}

/// "2.00" when every GPU agrees, else "2.00/2.10".
fn per_gpu(e: &Planned, f: impl Fn(&plan::OnGpu) -> f64, digits: usize) -> String {
    let v: Vec<String> =
        e.on.iter()
            .map(|o| format!("{:.*}", digits, f(o)))
            .collect();
    if v.iter().all(|s| *s == v[0]) {
        v[0].clone()
    } else {
        v.join("/")
    }
}

fn launches(p: &StepPlan) {
    let names: Vec<&str> = p.gpus.iter().map(|g| g.name).collect();
    println!();
    println!(
        "{:>5}  {:<30} {:>14} {:>5} {:>5} {:>4} {:>7} {:>8} {:>5} {:>9} {:>9} {:>11} {:>11} {:>7} {:>9}  shape",
        "#",
        "kernel",
        "grid",
        "block",
        "dsmem",
        "regs",
        "blk/SM",
        "waves",
        "w.eff",
        "GFLOP",
        "MB",
        format!("{} us", names[0]),
        format!("{} us", names[names.len() - 1]),
        "bound",
        "meas. us"
    );
    let last = p.gpus.len() - 1;
    for (i, e) in p.entries.iter().enumerate() {
        let (grid, block, dsmem) = match e.cfg {
            Some(c) => (dims(c.grid), dims(c.block), smem(c.smem)),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let regs = match (e.kind, e.resources) {
            (Kind::Kernel, Some(r)) => r.registers.to_string(),
            (Kind::Kernel, None) => "?".into(),
            _ => "-".into(),
        };
        let (occ, waves, eff) = match e.occupancy {
            Some(o) => (
                format!("{} {}", o.blocks, &o.limiter.name()[..3]),
                per_gpu(e, |g| g.waves, 2),
                per_gpu(e, |g| g.wave_efficiency(), 2),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let measured = e.measured_us.map_or("-".into(), |us| format!("{us:.1}"));
        println!(
            "{:>5}  {:<30} {:>14} {:>5} {:>5} {:>4} {:>7} {:>8} {:>5} {:>9.2} {:>9.2} {:>11.1} {:>11.1} {:>7} {:>9}  {}",
            i + 1,
            e.name,
            grid,
            block,
            dsmem,
            regs,
            occ,
            waves,
            eff,
            e.work.flops / 1e9,
            e.work.bytes / 1e6,
            e.on[0].floor * 1e6,
            e.on[last].floor * 1e6,
            e.on[last].bound.name(),
            measured,
            e.work.shape
        );
    }
}

fn by_kernel(p: &StepPlan, top: usize) {
    let sums = p.by_kernel();
    let last = p.gpus.len() - 1;
    let (h0, hl) = (p.gpus[0].name, p.gpus[last].name);
    let total = p.floor(last);
    println!();
    println!(
        "by kernel, largest {hl} floor first (measured: {}, where the last kernel benchmark has \
         every launch's shape):",
        measured::FILE
    );
    println!(
        "  {:<30} {:>8} {:>9} {:>9} {:>14} {:>14} {:>6} {:>18} {:>12}",
        "kernel",
        "launches",
        "TFLOP",
        "GB",
        format!("floor {h0} ms"),
        format!("floor {hl} ms"),
        "share",
        format!("wave-quant. {hl} ms"),
        "measured ms"
    );
    let row = |name: &str,
               count: usize,
               flops: f64,
               bytes: f64,
               f0: f64,
               fl: f64,
               q: f64,
               m: Option<f64>| {
        println!(
            "  {:<30} {:>8} {:>9.3} {:>9.3} {:>14.3} {:>14.3} {:>5.1}% {:>18.3} {:>12}",
            name,
            count,
            flops / 1e12,
            bytes / 1e9,
            f0 * 1e3,
            fl * 1e3,
            100.0 * fl / total.max(f64::MIN_POSITIVE),
            q * 1e3,
            m.map_or("-".into(), |us| format!("{:.3}", us / 1e3))
        );
    };
    for s in sums.iter().take(top) {
        row(
            &s.name,
            s.count,
            s.flops,
            s.bytes,
            s.floor[0],
            s.floor[last],
            s.quantised[last],
            s.measured_us,
        );
    }
    let rest = &sums[top.min(sums.len())..];
    if !rest.is_empty() {
        row(
            &format!("({} others)", rest.len()),
            rest.iter().map(|s| s.count).sum(),
            rest.iter().map(|s| s.flops).sum(),
            rest.iter().map(|s| s.bytes).sum(),
            rest.iter().map(|s| s.floor[0]).sum(),
            rest.iter().map(|s| s.floor[last]).sum(),
            rest.iter().map(|s| s.quantised[last]).sum(),
            None,
        );
    }
}

fn totals(p: &StepPlan) {
    let o = &p.options;
    let flops: f64 = p.entries.iter().map(|e| e.work.flops).sum();
    let bytes: f64 = p.entries.iter().map(|e| e.work.bytes).sum();
    let run = match o.job {
        Job::Step => "step",
        Job::Extract => "call",
    };
    println!();
    println!(
        "{run}: {} operations ({} kernel launches, {} memsets, {} copies to the GPU, {} back); \
         {:.2} TFLOP, {:.2} GB of compulsory traffic",
        p.entries.len(),
        p.count(Kind::Kernel),
        p.count(Kind::Memset),
        p.count(Kind::CopyToDevice),
        p.count(Kind::CopyToHost),
        flops / 1e12,
        bytes / 1e9
    );
    let fmt = |f: &dyn Fn(usize) -> f64| {
        p.gpus
            .iter()
            .enumerate()
            .map(|(g, spec)| format!("{} {:.1} ms", spec.name, f(g) * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "floor of the {run} (sum of the launches' floors, its speed of light; model): {}",
        fmt(&|g| p.floor(g))
    );
    println!(
        "  with each kernel's last wave and partial tiles counted as full (model): {}",
        fmt(&|g| p.quantised_floor(g))
    );
    println!(
        "device memory: {:.2} GiB held at most (parameters{}, activations, scratch; counted from \
         the plan's allocations, without the CUDA context)",
        p.peak_bytes as f64 / (1u64 << 30) as f64,
        if o.job == Job::Step {
            ", their gradients, Adam's moments"
        } else {
            ""
        }
    );
    if o.job == Job::Extract {
        return;
    }
    let m = measured::get();
    let model = o.arch.name();
    let last = p.gpus.len() - 1;
    match m.step_ms(&model, o.precision, o.batch, o.px) {
        Some(ms) => {
            let floor_ms = p.floor(last) * 1e3;
            println!(
                "last measured: {ms:.1} ms per step ({}, benches/train_step.rs; {}) = {:.1}x the \
                 {} floor ({:.1}% of the time is the floor)",
                measured::FILE,
                m.source,
                ms / floor_ms,
                p.gpus[last].name,
                100.0 * floor_ms / ms
            );
            if let Some(t) = m.torch_step_ms(&model, o.precision, o.batch, o.px) {
                println!(
                    "  PyTorch on the same GPU (scripts/torch-baseline.py, same file): {t:.1} ms \
                     = {:.1}x the floor",
                    t / floor_ms
                );
                if o.precision == DType::F32 && !o.tf32 {
                    println!(
                        "  (PyTorch's f32 convolutions run on TF32 tensor cores, its default; with \
                         --tf32 false ours, and so this floor, use FP32 SIMT)"
                    );
                }
            }
        }
        None => println!(
            "last measured: none for {model} {} at batch {} and {} px in {}",
            o.precision,
            o.batch,
            o.px,
            measured::FILE
        ),
    }
}

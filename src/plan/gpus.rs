//! The GPUs the launch plan models, with their published peaks. Floors taken against these are
//! model output: nothing here was measured by us.

/// One GPU's published peaks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuSpec {
    pub name: &'static str,
    pub sms: u32,
    /// Dense bf16 tensor-core FLOP/s (f32 accumulation), without sparsity.
    pub bf16_tensor: f64,
    /// Dense TF32 tensor-core FLOP/s (f32 accumulation), without sparsity.
    pub tf32_tensor: f64,
    /// FP32 (non-tensor) FLOP/s.
    pub fp32: f64,
    /// DRAM bytes/s.
    pub dram: f64,
    /// Host <-> device bytes/s in one direction.
    pub pcie: f64,
}

/// H100 SXM5, from NVIDIA's H100 datasheet (SXM column): "BF16 Tensor Core 1,979 teraFLOPS"
/// with sparsity, so 989 dense; "TF32 Tensor Core 989 teraFLOPS" with sparsity, so 495 dense
/// (half of bf16's, as on every tensor-core generation since Ampere); "FP32 67 teraFLOPS"; "GPU memory bandwidth 3.35TB/s"; "PCIe
/// Gen5: 128GB/s", both directions together; 132 SMs (the Hopper whitepaper). Reproduced at
/// archive-lib.hpctech.co.jp/gpuproduct/nvidia-h100.html and, dense (989.4 bf16, 66.9 FP32), at
/// glennklockwood.com/garden/processors/h100.
pub const H100_SXM: GpuSpec = GpuSpec {
    name: "H100 SXM",
    sms: 132,
    bf16_tensor: 989e12,
    tf32_tensor: 495e12,
    fp32: 67e12,
    dram: 3.35e12,
    pcie: 64e9,
};

/// H200 SXM: the same GH100 compute (132 SMs, the same peaks) with 141 GB of HBM3e at 4.8 TB/s
/// (NVIDIA's H200 product page; aiwiki.ai/wiki/nvidia_h200 compares the two). The H200 we ran
/// on reported 4814 GB/s from its device attributes (bench_results/2026-11-30-h200.md).
pub const H200: GpuSpec = GpuSpec {
    name: "H200",
    sms: 132,
    bf16_tensor: 989e12,
    tf32_tensor: 495e12,
    fp32: 67e12,
    dram: 4.8e12,
    pcie: 64e9,
};

/// The GPUs every plan is evaluated on, in column order.
pub const MODELLED: [GpuSpec; 2] = [H100_SXM, H200];

//! What a launch must do at least, attached by its launcher for the launch plan (`insclr-cu
//! plan`): the arithmetic, the compulsory DRAM traffic (each input read once, each output
//! written once, at the buffer's element size) and the unit the arithmetic runs on. Only the
//! launcher knows both the op's shape and how it split the work into kernels (a weight
//! gradient's partial sums are traffic of their own), so the cost lives beside the launch.

use crate::backend::{Conv, DType};

/// The unit a kernel's arithmetic runs on, which decides the peak its floor is taken against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// bf16 inputs on the tensor cores (`mma.sync` through kernels/arch.cuh), f32 accumulation.
    TensorBf16,
    /// f32 inputs rounded to TF32 on the tensor cores (the f32 mode's convolutions), f32
    /// accumulation.
    TensorTf32,
    /// Plain FP32 (SIMT) instructions.
    Fp32,
}

impl Unit {
    /// FLOPs this unit does in the time DRAM moves one byte, from an H200's published peaks
    /// (989 TFLOP/s bf16 and 495 TF32 on the tensor cores, 67 FP32, 4.8 TB/s), rounded: what a
    /// launcher weighs extra traffic against extra arithmetic with when it picks a launch shape.
    pub fn flops_per_dram_byte(self) -> usize {
        match self {
            Unit::TensorBf16 => 200,
            Unit::TensorTf32 => 100,
            Unit::Fp32 => 14,
        }
    }
}

/// A launch's minimum work: `flops` on `unit` and `bytes` of DRAM traffic. `shape` names the
/// op's shape the way `benches/kernels.rs` labels it, so measured times can be found by it.
#[derive(Clone, Debug, PartialEq)]
pub struct Work {
    pub flops: f64,
    pub bytes: f64,
    pub unit: Unit,
    pub shape: String,
    /// The share of the kernel's block tiles that its outputs fill (1 where the launcher states
    /// none): the rest are partial tiles' empty rows and columns, whose multiply-adds the tensor
    /// cores do all the same. The floor counts `flops`; the plan's wave model `flops / fill`.
    pub fill: f64,
}

impl Work {
    /// A kernel whose floor is its traffic alone (element-wise, normalisation, reductions,
    /// the optimiser): arithmetic is a few operations per element, far below the FP32 roof at
    /// these bytes per element, so it is not counted.
    pub fn traffic(bytes: usize, shape: String) -> Work {
        Work {
            flops: 0.0,
            bytes: bytes as f64,
            unit: Unit::Fp32,
            shape,
            fill: 1.0,
        }
    }

    /// The unit of a product or convolution whose operands are `dtype`.
    pub fn unit_of(dtype: DType) -> Unit {
        match dtype {
            DType::BF16 => Unit::TensorBf16,
            _ => Unit::Fp32,
        }
    }

    /// A convolution pass (forward, data or weight gradient: the same multiply-adds): two flops
    /// per multiply-add, `bytes` as the launcher counts them.
    pub fn conv(s: &Conv, dtype: DType, bytes: usize) -> Work {
        Work::conv_on(s, Work::unit_of(dtype), bytes)
    }

    /// The same on a given unit (TF32 kernels take f32 operands).
    pub fn conv_on(s: &Conv, unit: Unit, bytes: usize) -> Work {
        let macs = s.n * s.oh * s.ow * s.c_out * (s.c_in / s.groups) * s.kh * s.kw;
        Work {
            flops: 2.0 * macs as f64,
            bytes: bytes as f64,
            unit,
            shape: conv_shape(s),
            fill: 1.0,
        }
    }

    /// `self` computed in block tiles that its outputs fill to `fill` ([`Work::fill`]).
    pub fn in_tiles(self, fill: f64) -> Work {
        Work { fill, ..self }
    }
}

/// A convolution's shape as `benches/kernels.rs` labels it: `NxCxHxW -> K kR sS` (and `dw` for
/// depthwise).
pub fn conv_shape(s: &Conv) -> String {
    if s.is_depthwise() && s.groups > 1 {
        format!(
            "dw {}x{}x{}x{} k{} s{}",
            s.n, s.c_in, s.h, s.w, s.kh, s.stride
        )
    } else {
        format!(
            "{}x{}x{}x{} -> {} k{} s{}",
            s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.stride
        )
    }
}

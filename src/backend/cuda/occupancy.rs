//! How many blocks of a kernel one multiprocessor holds at once, by the rules of the CUDA
//! occupancy calculator (`cuda_occupancy.h`: registers allocated per warp in units of 256 and
//! per sub-partition, shared memory in units of 128 bytes with 1 KiB reserved per block), for
//! sm_90, from the registers and static shared memory ptxas reported for the kernel. A real GPU
//! asks its driver instead; the emulated GPU and the launch plan use this, so that what depends
//! on occupancy (the weight gradient's split) is the same there as on an H100 or H200.

use super::embedded;
use std::collections::HashMap;
use std::sync::OnceLock;

/// One multiprocessor's limits.
#[derive(Clone, Copy, Debug)]
pub struct SmLimits {
    pub threads: u32,
    pub blocks: u32,
    pub registers: u32,
    /// Register file partitions; a warp's registers come from one of them.
    pub sub_partitions: u32,
    /// Registers are given to a warp in multiples of this.
    pub register_unit: u32,
    pub max_registers_per_thread: u32,
    /// Shared memory of the multiprocessor at the largest carveout.
    pub smem: u32,
    /// The most shared memory (static + dynamic) one block may have, after opting in.
    pub smem_per_block: u32,
    /// What the driver keeps per block on top of the kernel's own.
    pub smem_reserved_per_block: u32,
    /// Shared memory is given to a block in multiples of this.
    pub smem_unit: u32,
}

/// sm_90 (H100, H200): the CUDA C++ Programming Guide's table of limits per compute capability
/// (2048 threads, 32 blocks, 64K registers, 228 KiB of shared memory per SM, 227 KiB per block)
/// and `cuda_occupancy.h`'s granularities.
pub const SM90: SmLimits = SmLimits {
    threads: 2048,
    blocks: 32,
    registers: 65_536,
    sub_partitions: 4,
    register_unit: 256,
    max_registers_per_thread: 255,
    smem: 228 * 1024,
    smem_per_block: 227 * 1024,
    smem_reserved_per_block: 1024,
    smem_unit: 128,
};

/// Multiprocessors of the GPU the emulator and the launch plan model: an H100 SXM and an H200
/// both have 132, so a split sized by them on the emulator is the one those GPUs get.
pub const MODEL_SMS: u32 = 132;

/// What ptxas reported for one kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resources {
    pub registers: u32,
    pub static_smem: u32,
}

/// The sm_90 resources of `kernel` from this build's ptxas report, or `None` when the build had
/// no nvcc (or the kernel is not in the report). A row for `90a` stands in when there is no
/// plain `90` row: the same multiprocessor.
pub fn resources(kernel: &str) -> Option<Resources> {
    static TABLE: OnceLock<HashMap<String, Resources>> = OnceLock::new();
    TABLE
        .get_or_init(|| parse_report(embedded::RESOURCES_TSV))
        .get(kernel)
        .copied()
}

/// The report's sm_90 rows by kernel (columns: family, kernel, arch, registers, smem_bytes, ...).
fn parse_report(tsv: &str) -> HashMap<String, Resources> {
    let mut plain = HashMap::new();
    let mut arch_a = HashMap::new();
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [_, kernel, arch, regs, smem, ..] = cols[..] else {
            continue;
        };
        let (Ok(registers), Ok(static_smem)) = (regs.parse(), smem.parse()) else {
            continue;
        };
        let r = Resources {
            registers,
            static_smem,
        };
        match arch {
            "90" => plain.insert(kernel.to_string(), r),
            "90a" => arch_a.insert(kernel.to_string(), r),
            _ => None,
        };
    }
    for (k, r) in arch_a {
        plain.entry(k).or_insert(r);
    }
    plain
}

/// What stops a multiprocessor from holding more blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limiter {
    Threads,
    Blocks,
    Registers,
    SharedMemory,
}

impl Limiter {
    pub fn name(self) -> &'static str {
        match self {
            Limiter::Threads => "threads",
            Limiter::Blocks => "blocks",
            Limiter::Registers => "registers",
            Limiter::SharedMemory => "smem",
        }
    }
}

/// Resident blocks per multiprocessor and what limits them. `blocks == 0` means the block does
/// not fit at all (too many registers or too much shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Occupancy {
    pub blocks: u32,
    pub limiter: Limiter,
}

/// Blocks of `threads` threads with `dyn_smem` bytes of dynamic shared memory that fit on one
/// multiprocessor. Without `res` (a build without nvcc) registers do not limit and static shared
/// memory counts as zero.
pub fn blocks_per_sm(
    sm: &SmLimits,
    res: Option<Resources>,
    threads: u32,
    dyn_smem: u32,
) -> Occupancy {
    let warps = threads.div_ceil(32).max(1);
    let mut best = Occupancy {
        blocks: sm.blocks,
        limiter: Limiter::Blocks,
    };
    let mut limit = |blocks: u32, limiter: Limiter| {
        if blocks < best.blocks {
            best = Occupancy { blocks, limiter };
        }
    };
    limit(sm.threads / 32 / warps, Limiter::Threads);
    if let Some(r) = res {
        let per_warp = (r.registers * 32).div_ceil(sm.register_unit) * sm.register_unit;
        if r.registers > sm.max_registers_per_thread {
            limit(0, Limiter::Registers);
        } else if let Some(per_partition) = (sm.registers / sm.sub_partitions).checked_div(per_warp)
        {
            // A kernel of no registers (none is) leaves this limit out.
            limit(
                per_partition * sm.sub_partitions / warps,
                Limiter::Registers,
            );
        }
    }
    let static_smem = res.map_or(0, |r| r.static_smem);
    let used = static_smem as u64 + dyn_smem as u64 + sm.smem_reserved_per_block as u64;
    let per_block = used.div_ceil(sm.smem_unit as u64) * sm.smem_unit as u64;
    if per_block > (sm.smem_per_block + sm.smem_reserved_per_block) as u64 {
        limit(0, Limiter::SharedMemory);
    } else {
        limit((sm.smem as u64 / per_block) as u32, Limiter::SharedMemory);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(registers: u32, static_smem: u32) -> Option<Resources> {
        Some(Resources {
            registers,
            static_smem,
        })
    }

    #[test]
    fn matches_what_nsight_compute_reported_on_the_h200() {
        // bench_results/2026-11-30-h200.md: the bf16 conv (126 registers, 23 KiB static, 256
        // threads) ran two blocks per multiprocessor, matmul_bf16 (97 registers) 25% theoretical
        // occupancy (16 of 64 warps), the f32 conv (47 registers) five.
        let two = blocks_per_sm(&SM90, res(126, 23_552), 256, 0);
        assert_eq!(
            two,
            Occupancy {
                blocks: 2,
                limiter: Limiter::Registers
            }
        );
        assert_eq!(blocks_per_sm(&SM90, res(97, 20_480), 256, 0).blocks, 2);
        assert_eq!(blocks_per_sm(&SM90, res(47, 10_240), 256, 0).blocks, 5);
    }

    #[test]
    fn each_limit_can_be_the_one_that_binds() {
        // 32 blocks at most, however small.
        let tiny = blocks_per_sm(&SM90, res(16, 0), 32, 0);
        assert_eq!(
            tiny,
            Occupancy {
                blocks: 32,
                limiter: Limiter::Blocks
            }
        );
        // 2048 threads.
        let wide = blocks_per_sm(&SM90, res(32, 0), 1024, 0);
        assert_eq!(
            wide,
            Occupancy {
                blocks: 2,
                limiter: Limiter::Threads
            }
        );
        // 100 KiB of dynamic shared memory (+1 KiB reserved each): two fit in 228 KiB.
        let big = blocks_per_sm(&SM90, res(32, 0), 256, 100 * 1024);
        assert_eq!(
            big,
            Occupancy {
                blocks: 2,
                limiter: Limiter::SharedMemory
            }
        );
        // Exactly the per-block maximum fits once; one byte more does not fit.
        assert_eq!(blocks_per_sm(&SM90, res(32, 0), 256, 227 * 1024).blocks, 1);
        assert_eq!(blocks_per_sm(&SM90, res(32, 1), 256, 227 * 1024).blocks, 0);
        // Over 255 registers cannot launch.
        assert_eq!(blocks_per_sm(&SM90, res(256, 0), 32, 0).blocks, 0);
        // No report: registers do not limit.
        assert_eq!(blocks_per_sm(&SM90, None, 256, 0).blocks, 8);
    }

    #[test]
    fn the_report_parser_takes_sm_90_and_falls_back_to_90a() {
        let tsv = "family\tkernel\tarch\tregisters\tsmem_bytes\tstack_bytes\tspill_store_bytes\tspill_load_bytes\n\
                   conv\ta\t80\t10\t0\t0\t0\t0\n\
                   conv\ta\t90\t40\t128\t0\t0\t0\n\
                   conv\ta\t90a\t50\t256\t0\t0\t0\n\
                   conv\tb\t90a\t60\t512\t0\t0\t0\n";
        let t = parse_report(tsv);
        assert_eq!(
            t["a"],
            Resources {
                registers: 40,
                static_smem: 128
            }
        );
        assert_eq!(
            t["b"],
            Resources {
                registers: 60,
                static_smem: 512
            }
        );
    }
}

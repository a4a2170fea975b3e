// The emulated device: CUDA's cuda_bf16.h is kernels/emu/emu.cuh, forced in first by build.rs.
#pragma once

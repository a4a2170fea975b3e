// The emulated device: CUDA's cuda_fp16.h is kernels/emu/emu.cuh, forced in first by build.rs.
#pragma once

// The emulated device: CUDA's cuda.h is kernels/emu/emu.cuh, forced in first by build.rs.
#pragma once

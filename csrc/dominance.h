// Raw-pointer interface between the dominance operator's front end
// (csrc/dominance.cpp) and its CPU / CUDA kernels.
#pragma once

#include <cstdint>

#include <torch/headeronly/core/ScalarType.h>

#include "streaming.h"

namespace clear_native {

struct DominanceArgs : StreamingArgs {
  // Responses viewed as (N, C, S) with element strides; S = product of spatial dims.
  const void* responses = nullptr;
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Float;
  int64_t N = 0, C = 0, S = 0;
  int64_t stride_n = 0, stride_c = 0, stride_s = 0;
};

// The CPU kernel: cpu::dominance_kernel_dispatch (csrc/cpu/cpu_dispatch.h).
namespace cuda {  // defined only in CUDA builds
// Launches on `stream` (a cudaStream_t).
void dominance_kernel(const DominanceArgs& args, void* stream);
}  // namespace cuda

}  // namespace clear_native

// Raw-pointer interface between the dominance operator's front end
// (csrc/dominance.cpp) and its CPU / CUDA kernels.
#pragma once

#include <cstdint>

#include <torch/headeronly/core/ScalarType.h>

namespace clear_native {

struct DominanceArgs {
  // Responses viewed as (N, C, S) with element strides; S = product of spatial dims.
  const void* responses = nullptr;
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Float;
  int64_t N = 0, C = 0, S = 0;
  int64_t stride_n = 0, stride_c = 0, stride_s = 0;
  // Global index of this chunk's first class (streaming over class chunks).
  int64_t class_offset = 0;
  // (N,) int64 target classes, contiguous; null when no target.
  const int64_t* target = nullptr;
  // Previous state (contiguous (4, N, S) accumulation-type values and (3, N, S)
  // int64 indices); null for a first call.
  const void* state_values = nullptr;
  const int64_t* state_indices = nullptr;
  // Outputs, same layout as the state.
  void* out_values = nullptr;
  int64_t* out_indices = nullptr;
  // Every class of this chunk is above every class already in the state (see
  // dominance_element.h: kOrdered).
  bool ordered = true;
  bool runner_up = true;
  bool weakest = true;
};

namespace cpu {
void dominance_kernel(const DominanceArgs& args);
}  // namespace cpu

#ifdef CLEAR_NATIVE_WITH_CUDA
namespace cuda {
// Launches on `stream` (a cudaStream_t).
void dominance_kernel(const DominanceArgs& args, void* stream);
}  // namespace cuda
#endif

}  // namespace clear_native

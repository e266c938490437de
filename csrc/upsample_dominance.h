// Raw-pointer interface between the upsample_dominance front end
// (csrc/upsample_dominance.cpp) and its CPU / CUDA kernels.
#pragma once

#include <cstdint>

#include <torch/headeronly/core/ScalarType.h>

#include "upsample_dominance_element.h"
#include "streaming.h"

namespace clear_native {

// Streaming state, target and outputs (StreamingArgs) at the output size (H, W).
struct UpsampleDominanceArgs : StreamingArgs {
  // Low-resolution class maps (N, C, h, w), float or double, with element
  // strides (any layout on CPU; contiguous for the CUDA kernel).
  const void* maps = nullptr;
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Float;
  int64_t N = 0, C = 0, h = 0, w = 0, H = 0, W = 0;
  int64_t stride_n = 0, stride_c = 0, stride_h = 0, stride_w = 0;
  InterpMode mode = InterpMode::kBilinear;
  bool align_corners = false;
  // Per output row / column: source indices and weights (bilinear), or the
  // source index in *0 (nearest). Host or device memory as the kernel needs.
  const int64_t* row0 = nullptr;
  const int64_t* row1 = nullptr;
  const int64_t* col0 = nullptr;
  const int64_t* col1 = nullptr;
  const void* row_l0 = nullptr;  // (H,) in the maps' dtype
  const void* row_l1 = nullptr;
  const void* col_w0 = nullptr;  // (W,)
  const void* col_w1 = nullptr;
  // Cells: maximal runs of output rows / columns sharing their source indices.
  // row_block_start has num_row_blocks + 1 entries (last = H); same for columns.
  const int64_t* row_block_start = nullptr;
  const int64_t* col_block_start = nullptr;
  int64_t num_row_blocks = 0, num_col_blocks = 0;
  // 0: every class at every pixel (the exact ground truth for tests);
  // 1: pick per call (CPU: dense rows for few classes or small cells, pruned
  //    cells otherwise; CUDA: prune); 2: prune per cell wherever it can.
  int64_t prune = 1;
};

// The CPU kernel: cpu::upsample_dominance_kernel_dispatch (csrc/cpu/cpu_dispatch.h).
namespace cuda {  // defined only in CUDA builds
void upsample_dominance_kernel(const UpsampleDominanceArgs& args, void* stream);
}  // namespace cuda

}  // namespace clear_native

// Raw-pointer interface between the unpool_deconv operator's front end
// (csrc/unpool_deconv.cpp) and its CPU / CUDA kernels.
#pragma once

#include <cstdint>

#include <torch/headeronly/core/ScalarType.h>

namespace clear_native {

struct UnpoolDeconvArgs {
  int64_t N = 0, C = 0, P = 0;  // images, pooled channels (the conv's outputs), pooled positions
  int64_t Cin = 0, kh = 0, kw = 0;  // the conv's input channels and kernel
  int64_t sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;  // the conv's stride, padding, dilation
  int64_t Hin = 0, Win = 0;  // the conv's input plane (the output's plane)
  int64_t Ho = 0, Wo = 0;    // the conv's output plane (where the switches point)
  int rule = 1;              // UnpoolDeconvRule (unpool_deconv_element.h)
  bool rectify = false;      // clamp the output at 0 (the deconvnet rule of a ReLU below)
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Float;
  // (N, C, P) contiguous: the signal at the pooled output, the switches (flat
  // indices into Ho * Wo, as max_pool2d_with_indices returns them) and the pooled
  // output itself (null for the deconvnet rule, which does not look at it).
  const void* grad = nullptr;
  const int64_t* indices = nullptr;
  const void* pooled = nullptr;
  // (C, kh, kw, Cin) contiguous: the conv weight with the input channels last.
  const void* weight = nullptr;
  // (N, Cin, Hin, Win) contiguous output.
  void* out = nullptr;
};

namespace cuda {  // defined only in CUDA builds
// Launches on `stream` (a cudaStream_t); invalid switches are skipped.
void unpool_deconv_kernel(const UnpoolDeconvArgs& args, void* stream);
}  // namespace cuda

}  // namespace clear_native

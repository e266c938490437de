// Raw-pointer interface between the render operator's front end
// (csrc/render.cpp) and its CPU / CUDA kernels.
#pragma once

#include <cstdint>

#include <torch/headeronly/core/ScalarType.h>

namespace clear_native {

struct RenderArgs {
  int64_t N = 0, S = 0;  // images, pixels per image (H * W)
  // Dominant class (N, S) int64 and dominant response (N, S) of `dtype`, with
  // element strides.
  const int64_t* classes = nullptr;
  int64_t cls_stride_n = 0, cls_stride_s = 0;
  const void* responses = nullptr;
  torch::headeronly::ScalarType dtype = torch::headeronly::ScalarType::Float;
  int64_t resp_stride_n = 0, resp_stride_s = 0;
  // (N,) float32 normaliser per image, contiguous: V = response / scale[n].
  const float* scale = nullptr;
  // (P, 3) uint8 palette, contiguous.
  const uint8_t* palette = nullptr;
  int64_t P = 0;
  // Optional image (N, image_channels, S) with element strides, uint8 (0..255)
  // or float32 (0..1); null without an image.
  const void* image = nullptr;
  bool image_is_uint8 = false;
  int64_t image_channels = 0;  // 1 or 3
  int64_t img_stride_n = 0, img_stride_c = 0, img_stride_s = 0;
  // Composition (see render_element.h).
  float alpha = 1.0f;
  float threshold = 0.0f;
  float brightness = 1.0f;
  bool grey = true;
  bool transparent = false;
  // Output (N, S, 3) uint8, contiguous.
  uint8_t* out = nullptr;
};

// The CPU kernel: cpu::render_kernel_dispatch (csrc/cpu/cpu_dispatch.h).
namespace cuda {  // defined only in CUDA builds
// Launches on `stream` (a cudaStream_t).
void render_kernel(const RenderArgs& args, void* stream);
}  // namespace cuda

}  // namespace clear_native

// CUDA kernel of the render operator: one thread per pixel, the per-pixel math
// shared with the CPU kernel (render_element.h). Threads of a warp read
// consecutive pixels (coalesced for contiguous maps and NCHW images).
#include <cstdint>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "cuda/launch.cuh"
#include "render.h"
#include "render_element.h"

namespace clear_native::cuda {
namespace {

enum class ImageKind { None, Byte, Float };

template <typename T, ImageKind kImage>
__global__ void render_cuda_kernel(RenderArgs a) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.N * a.S) return;
  const int64_t n = idx / a.S, p = idx % a.S;
  const RenderPixelParams prm{a.alpha, a.threshold, a.brightness, a.grey, a.transparent};
  float base[3] = {0.0f, 0.0f, 0.0f};
  if constexpr (kImage != ImageKind::None) {
    float rgb[3] = {0.0f, 0.0f, 0.0f};
    const int64_t off = n * a.img_stride_n + p * a.img_stride_s;
    for (int64_t k = 0; k < a.image_channels; ++k) {
      if constexpr (kImage == ImageKind::Byte)
        rgb[k] = static_cast<float>(static_cast<const uint8_t*>(a.image)[off + k * a.img_stride_c]);
      else
        rgb[k] = static_cast<const float*>(a.image)[off + k * a.img_stride_c] * 255.0f;
    }
    render_base(rgb, a.image_channels, prm, base);
  }
  const T r = static_cast<const T*>(a.responses)[n * a.resp_stride_n + p * a.resp_stride_s];
  const float v = render_value(static_cast<float>(r), a.scale[n]);
  const int64_t c = a.classes[n * a.cls_stride_n + p * a.cls_stride_s];
  render_pixel(c, v, a.palette, a.P, base, prm, a.out + idx * 3);
}

template <typename T, ImageKind K>
void launch(const RenderArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = a.N * a.S;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  render_cuda_kernel<T, K><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
}

template <typename T>
void launch_typed(const RenderArgs& a, cudaStream_t stream) {
  if (a.image == nullptr) return launch<T, ImageKind::None>(a, stream);
  if (a.image_is_uint8) return launch<T, ImageKind::Byte>(a, stream);
  return launch<T, ImageKind::Float>(a, stream);
}

}  // namespace

void render_kernel(const RenderArgs& a, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  dispatch_response_dtype(a.dtype, "render", [&](auto t) { launch_typed<decltype(t)>(a, stream); });
  check_launch("render");
}

}  // namespace clear_native::cuda

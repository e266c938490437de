// CPU kernel of the render operator. Compiled once per CPU capability (see
// CMakeLists.txt); cpu_dispatch.h picks the body at run time.
//
// Pixels of the (N, S) maps are split into chunks of one image, run in
// parallel; each pixel is one call of the shared per-pixel functions
// (render_element.h), with the loop specialised on the response dtype and the
// image's presence / dtype, so the contiguous case is a straight loop the
// compiler vectorises.
#include <algorithm>
#include <cstdint>

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "cpu/cpu_dispatch.h"
#include "render.h"
#include "render_element.h"

#ifndef CLEAR_NATIVE_CPU_CAPABILITY
#error "CLEAR_NATIVE_CPU_CAPABILITY must be defined by the build"
#endif

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

constexpr int64_t kGrainPixels = 16384;

enum class ImageKind { None, Byte, Float };

template <typename T, ImageKind kImage>
void render_range(const RenderArgs& a, int64_t n, int64_t p0, int64_t p1) {
  const RenderPixelParams prm{a.alpha, a.threshold, a.brightness, a.grey, a.transparent};
  const int64_t* __restrict__ cls = a.classes + n * a.cls_stride_n;
  const T* __restrict__ resp = static_cast<const T*>(a.responses) + n * a.resp_stride_n;
  const int64_t cs = a.cls_stride_s, rs = a.resp_stride_s;
  const float scale = a.scale[n];
  uint8_t* __restrict__ out = a.out + (n * a.S) * 3;
  const int64_t ch = a.image_channels;
  for (int64_t p = p0; p < p1; ++p) {
    float base[3] = {0.0f, 0.0f, 0.0f};
    if constexpr (kImage != ImageKind::None) {
      float rgb[3];
      const int64_t off = n * a.img_stride_n + p * a.img_stride_s;
      for (int64_t k = 0; k < ch; ++k) {
        if constexpr (kImage == ImageKind::Byte)
          rgb[k] = static_cast<float>(static_cast<const uint8_t*>(a.image)[off + k * a.img_stride_c]);
        else
          rgb[k] = static_cast<const float*>(a.image)[off + k * a.img_stride_c] * 255.0f;
      }
      render_base(rgb, ch, prm, base);
    }
    const float v = render_value(static_cast<float>(resp[p * rs]), scale);
    render_pixel(cls[p * cs], v, a.palette, a.P, base, prm, out + p * 3);
  }
}

template <typename T, ImageKind kImage>
void render_typed(const RenderArgs& a) {
  const int64_t chunks_per_image = (a.S + kGrainPixels - 1) / kGrainPixels;
  torch::stable::parallel_for(0, a.N * chunks_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / chunks_per_image, p0 = (t % chunks_per_image) * kGrainPixels;
      render_range<T, kImage>(a, n, p0, std::min(a.S, p0 + kGrainPixels));
    }
  });
}

template <typename T>
void render_image_kind(const RenderArgs& a) {
  if (a.image == nullptr) return render_typed<T, ImageKind::None>(a);
  if (a.image_is_uint8) return render_typed<T, ImageKind::Byte>(a);
  return render_typed<T, ImageKind::Float>(a);
}

}  // namespace

void render_kernel(const RenderArgs& a) {
  THO_DISPATCH_V2(
      a.dtype, "clear_native::render", AT_WRAP([&] { render_image_kind<scalar_t>(a); }),
      AT_FLOATING_TYPES, torch::headeronly::ScalarType::Half,
      torch::headeronly::ScalarType::BFloat16);
}

}  // namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY

// CPU kernel of the render operator. Compiled once per CPU capability (see
// CMakeLists.txt); cpu_dispatch.h picks the body at run time.
//
// Pixels of the (N, S) maps are split into chunks of one image, run in
// parallel. Each chunk is processed in blocks of kBlock pixels in three simple
// loops over small arrays, so that no step branches per pixel (class maps are
// noisy: a branch per pixel mispredicts) and the compiler vectorises the
// arithmetic: (1) value, visibility and blend weights (render_value,
// render_visible, render_weights) and the image's base colour (render_base);
// (2) the palette lookup and blend; (3) rounding to uint8 (render_store).
// The per-pixel functions are those of the CUDA kernel (render_element.h).
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "cpu/cpu_dispatch.h"
#include "cpu/simd_kernel.h"
#include "render.h"
#include "render_element.h"

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

constexpr int64_t kGrainPixels = 16384;
constexpr int64_t kBlock = 256;

enum class ImageKind { None, Byte, Float };

template <typename T, ImageKind kImage>
void render_range(const RenderArgs& a, const float* __restrict__ pal, int64_t n, int64_t p0,
                  int64_t p1) {
  const RenderPixelParams prm{a.alpha, a.threshold, a.brightness, a.grey, a.transparent};
  const int64_t* __restrict__ cls = a.classes + n * a.cls_stride_n;
  const T* __restrict__ resp = static_cast<const T*>(a.responses) + n * a.resp_stride_n;
  const int64_t cs = a.cls_stride_s, rs = a.resp_stride_s;
  const int64_t ch = a.image_channels, ic = a.img_stride_c, is = a.img_stride_s;
  const float scale = a.scale[n];
  const int64_t P = a.P;
  alignas(64) float keep[kBlock], paint[kBlock], b0[kBlock], b1[kBlock], b2[kBlock];
  alignas(64) float mix[3 * kBlock];
  alignas(64) int32_t idx[kBlock];
  for (int64_t q = p0; q < p1; q += kBlock) {
    const int64_t len = std::min(kBlock, p1 - q);
    for (int64_t i = 0; i < len; ++i) {
      const float v = render_value(static_cast<float>(resp[(q + i) * rs]), scale);
      const int64_t c = cls[(q + i) * cs];
      const bool visible = render_visible(c, P, v, prm.threshold);
      render_weights(visible, v, prm, keep[i], paint[i]);
      idx[i] = visible ? static_cast<int32_t>(c) * 3 : 0;
    }
    if constexpr (kImage == ImageKind::None) {
      for (int64_t i = 0; i < len; ++i) b0[i] = b1[i] = b2[i] = 0.0f;
    } else {
      using I = std::conditional_t<kImage == ImageKind::Byte, uint8_t, float>;
      const float unit = kImage == ImageKind::Byte ? 1.0f : 255.0f;
      const I* __restrict__ img = static_cast<const I*>(a.image) + n * a.img_stride_n + q * is;
      const I* __restrict__ img1 = img + (ch == 3 ? ic : 0);
      const I* __restrict__ img2 = img + (ch == 3 ? 2 * ic : 0);
      for (int64_t i = 0; i < len; ++i) {
        const float rgb[3] = {static_cast<float>(img[i * is]) * unit,
                              static_cast<float>(img1[i * is]) * unit,
                              static_cast<float>(img2[i * is]) * unit};
        float base[3];
        render_base(rgb, ch, prm, base);
        b0[i] = base[0], b1[i] = base[1], b2[i] = base[2];
      }
    }
    for (int64_t i = 0; i < len; ++i) {
      const float* colour = pal + idx[i];
      mix[3 * i + 0] = keep[i] * b0[i] + colour[0] * paint[i];
      mix[3 * i + 1] = keep[i] * b1[i] + colour[1] * paint[i];
      mix[3 * i + 2] = keep[i] * b2[i] + colour[2] * paint[i];
    }
    uint8_t* __restrict__ out = a.out + (n * a.S + q) * 3;
    for (int64_t j = 0; j < 3 * len; ++j) out[j] = render_store(mix[j]);
  }
}

template <typename T, ImageKind kImage>
void render_typed(const RenderArgs& a) {
  // The palette as floats; entry 0 is also read (times a zero weight) by
  // hidden pixels, so an empty palette gets one black entry.
  std::vector<float> pal(std::max<int64_t>(a.P, 1) * 3, 0.0f);
  for (int64_t j = 0; j < a.P * 3; ++j) pal[j] = static_cast<float>(a.palette[j]);
  const int64_t chunks_per_image = (a.S + kGrainPixels - 1) / kGrainPixels;
  torch::stable::parallel_for(0, a.N * chunks_per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / chunks_per_image, p0 = (t % chunks_per_image) * kGrainPixels;
      render_range<T, kImage>(a, pal.data(), n, p0, std::min(a.S, p0 + kGrainPixels));
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

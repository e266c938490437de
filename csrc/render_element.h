// Per-pixel logic of the CLEAR map renderer (paper eq. 6), shared verbatim by
// the CPU kernel (csrc/cpu/simd/render_kernel.cpp) and the CUDA kernel
// (csrc/cuda/render_kernel.cu), so the CPU tests exercise the code the GPU runs.
//
// Eq. 6 is an HSV image: H = F(class), S = 1, V = normalised response. The
// palette stores F(class) as the RGB colour of that hue at S = 1, V = 1. For a
// fixed hue and S = 1, HSV -> RGB is linear in V (every channel is V times a
// constant that depends on the hue only), so the map's pixel is simply
// palette[class] * V: no HSV conversion is needed per pixel, and a palette
// colour that is not fully saturated is scaled the same way.
//
// One pixel, all arithmetic in float32 (the output has 8 bits):
//   V       = clamp(response / scale, 0, 1)       (NaN stays NaN)
//   visible = 0 <= class < P  and  V > threshold   (NaN, class -1: not visible)
//   base    = image pixel in [0, 255] (luminance 0.299 R + 0.587 G + 0.114 B,
//             replicated, when grey; a 1-channel image is replicated), times
//             brightness; 0 without an image
//   out     = (1 - alpha) * base + alpha * palette[class] * V   if visible
//           = base                                             if hidden and transparent
//           = (1 - alpha) * base                               if hidden (drawn black)
//   stored  = floor(clamp(out, 0, 255) + 0.5) as uint8
// Without an image the front end passes alpha = 1: the bare CLEAR map on black.
#pragma once

#include <cstdint>

#include "macros.h"

namespace clear_native {

struct RenderPixelParams {
  float alpha, threshold, brightness;
  bool grey, transparent;
};

// Normalised response V in [0, 1]; NaN for a NaN response. (The comparisons
// are written so that NaN falls through both clamps.)
CN_INLINE float render_value(float response, float scale) {
  float v = response / scale;
  v = v < 0.0f ? 0.0f : v;
  v = v > 1.0f ? 1.0f : v;
  return v;
}

// True when the pixel's class is drawn: a class inside the palette and a
// normalised response above the threshold (false for NaN and class -1).
CN_INLINE bool render_visible(int64_t cls, int64_t num_colours, float v, float threshold) {
  return cls >= 0 && cls < num_colours && v > threshold;
}

// Grey level of an RGB pixel (ITU-R BT.601 luma weights).
CN_INLINE float render_luma(float r, float g, float b) {
  return 0.299f * r + 0.587f * g + 0.114f * b;
}

CN_INLINE uint8_t render_store(float x) {
  x = x > 0.0f ? x : 0.0f;  // NaN -> 0
  x = x < 255.0f ? x : 255.0f;
  return static_cast<uint8_t>(static_cast<int>(x + 0.5f));
}

// Base image pixel in [0, 255]: rgb holds the image's channels already scaled
// to [0, 255] (channels = 1 or 3); the result is written to base[3].
CN_INLINE void render_base(const float* rgb, int64_t channels, const RenderPixelParams& p,
                           float* base) {
  if (channels == 1) {
    const float g = rgb[0] * p.brightness;
    base[0] = base[1] = base[2] = g;
  } else if (p.grey) {
    const float g = render_luma(rgb[0], rgb[1], rgb[2]) * p.brightness;
    base[0] = base[1] = base[2] = g;
  } else {
    base[0] = rgb[0] * p.brightness;
    base[1] = rgb[1] * p.brightness;
    base[2] = rgb[2] * p.brightness;
  }
}

// Blend weights of one pixel: out = keep * base + paint * colour, where colour
// is the palette entry of a visible pixel (written as selects, no branches, so
// the CPU loops vectorise).
CN_INLINE void render_weights(bool visible, float v, const RenderPixelParams& p, float& keep,
                              float& paint) {
  const float hidden_keep = p.transparent ? 1.0f : 1.0f - p.alpha;
  keep = visible ? 1.0f - p.alpha : hidden_keep;
  paint = visible ? p.alpha * v : 0.0f;
}

// One output pixel from its class, normalised value, palette and base.
CN_INLINE void render_pixel(int64_t cls, float v, const uint8_t* palette, int64_t num_colours,
                            const float* base, const RenderPixelParams& p, uint8_t* out) {
  const bool visible = render_visible(cls, num_colours, v, p.threshold);
  float keep, paint;
  render_weights(visible, v, p, keep, paint);
  const uint8_t* colour = palette + (visible ? cls : 0) * 3;
  for (int k = 0; k < 3; ++k) {
    const float c = visible ? static_cast<float>(colour[k]) : 0.0f;
    out[k] = render_store(keep * base[k] + c * paint);
  }
}

}  // namespace clear_native

// Per-switch logic of the unpool_deconv operator (one deconvnet layer: un-pool,
// ReLU rule, transposed convolution), shared by the CPU kernel
// (csrc/cpu/simd/unpool_deconv_kernel.cpp: unpool_rule, rectify_value, switch_row;
// its AVX2 body evaluates the same selects 8 lanes at a time and reaches the taps
// through a zero-padded accumulator instead of for_each_tap's bounds checks) and the
// CUDA kernel (csrc/cuda/unpool_deconv_kernel.cu).
//
// For conv -> ReLU -> max-pool with disjoint pooling windows, the backward signal
// g at a pooled output reaches exactly one conv output (its switch), passes the
// ReLU's rule there, and is spread by the transposed convolution over the kh x kw
// input positions that fed that conv output. So the whole layer costs one
// kh x kw x Cin update per non-zero pooled signal, instead of a dense transposed
// convolution over an un-pooled map that is at least 3/4 zeros.
#pragma once

#include <cstdint>

#include "macros.h"
#include "unpool_deconv.h"

namespace clear_native {

enum UnpoolDeconvRule : int { kRuleGradient = 0, kRuleDeconvnet = 1, kRuleGuided = 2 };

// The output's rectification (rectify_output=True): torch.clamp(min=0) exactly
// (NaN and -0.0 pass).
template <typename T>
CN_INLINE T rectify_value(T v) {
  return v < T(0) ? T(0) : v;
}

// The signal the ReLU between convolution and pooling passes back at a switch,
// given the signal g at the pooled output p = relu(x) (x: the conv output there):
//   gradient: g * (x > 0);  deconvnet: relu(g);  guided: relu(g) * (x > 0).
// x > 0 exactly when p > 0 (p = max(x, 0); NaN > 0 is false), so the pooled output
// stands in for x. relu is torch.clamp(min=0): a NaN signal passes (and -0.0, a zero
// signal like +0.0: it adds nothing). Written as selects, without branches.
template <typename T>
CN_INLINE T unpool_rule(int rule, T g, T p) {
  const T r = rule == kRuleGradient ? g : rectify_value(g);
  return rule == kRuleDeconvnet || p > T(0) ? r : T(0);
}

// Input coordinate (one axis) reached by kernel tap k from the conv output
// coordinate y; the caller skips taps outside [0, size).
CN_INLINE int64_t tap_coord(int64_t y, int64_t k, int64_t stride, int64_t pad, int64_t dilation) {
  return y * stride - pad + k * dilation;
}

// Calls fn(tap, input pixel) -- tap = ky * kw + kx, pixel = iy * Win + ix -- for every
// kernel tap of the switch at conv output (y, x) whose input pixel lies in the plane.
template <typename Fn>
CN_INLINE void for_each_tap(const UnpoolDeconvArgs& a, int64_t y, int64_t x, Fn&& fn) {
  for (int64_t ky = 0; ky < a.kh; ++ky) {
    const int64_t iy = tap_coord(y, ky, a.sh, a.ph, a.dh);
    if (iy < 0 || iy >= a.Hin) continue;
    for (int64_t kx = 0; kx < a.kw; ++kx) {
      const int64_t ix = tap_coord(x, kx, a.sw, a.pw, a.dw);
      if (ix < 0 || ix >= a.Win) continue;
      fn(ky * a.kw + kx, iy * a.Win + ix);
    }
  }
}

// Conv output row of a flat switch f (< 2^31 in practice: a 32-bit division,
// about half the cost of a 64-bit one).
CN_INLINE int64_t switch_row(int64_t f, int64_t width) {
  return f < (int64_t{1} << 31) ? static_cast<int64_t>(static_cast<int32_t>(f) / static_cast<int32_t>(width))
                                : f / width;
}

}  // namespace clear_native

// Per-element logic of the fused upsample + dominance operator
// (clear_native::upsample_dominance, behind clear_native.project_dominance),
// shared by the CPU (cpu/simd/project_kernel.cpp) and CUDA
// (cuda/project_kernel.cu) kernels.
//
// Coordinates follow F.interpolate exactly (ATen's area_pixel_compute_scale /
// area_pixel_compute_source_index / nearest_idx, float math, sizes given):
//   bilinear: scale = align_corners ? (in-1)/(out-1) : in/out
//             src = align_corners ? scale*dst : max(scale*(dst+0.5)-0.5, 0)
//             i0 = (int)src, i1 = i0 + (i0 < in-1), l1 = src - i0, l0 = 1 - l1
//             value = (x[i0][j0]*w0 + x[i0][j1]*w1)*l0 + (x[i1][j0]*w0 + x[i1][j1]*w1)*l1
//   nearest:  src = out == in ? dst : out == 2*in ? dst/2 : min((int)floorf(dst*in/out), in-1)
//
// Pruning (exact): inside one cell of the low-resolution grid (fixed i0, i1,
// j0, j1) every class's value is a convex combination of its 4 corner values,
// with the same weights for every class. Two tests follow:
//  - interval: a class lies in [min corner, max corner], so a class whose max
//    corner is below the second-largest min corner of the cell is beaten at
//    every pixel by two classes;
//  - champions: the difference of two classes is the same convex combination
//    of their 4 corner differences, so a class below a champion (the classes
//    with the two largest min corners) at all 4 corners is below it at every
//    pixel of the cell. Much tighter on smooth maps.
// A class beaten everywhere by two classes is neither best nor runner-up
// there, and is skipped. Mirrored for the weakest class (one class suffices).
// A margin of a few ulps covers the rounding of the interpolation; NaN or
// infinite corners are never pruned and never prune.
#pragma once

#include <cstdint>
#include <limits>

#include "macros.h"

namespace clear_native {

enum class InterpMode : int { kBilinear = 0, kNearest = 1 };

// Source coordinate of output index `dst` along one axis (bilinear).
template <typename A>
CN_INLINE void bilinear_source(int64_t dst, int64_t in, int64_t out, bool align_corners,
                               int64_t& i0, int64_t& i1, A& l0, A& l1) {
  A scale;
  if (align_corners) scale = out > 1 ? static_cast<A>(in - 1) / static_cast<A>(out - 1) : A(0);
  else scale = static_cast<A>(in) / static_cast<A>(out);
  A src;
  if (align_corners) {
    src = scale * static_cast<A>(dst);
  } else {
    src = scale * (static_cast<A>(dst) + A(0.5)) - A(0.5);
    src = src < A(0) ? A(0) : src;
  }
  i0 = static_cast<int64_t>(src);
  i1 = i0 + (i0 < in - 1 ? 1 : 0);
  l1 = src - static_cast<A>(i0);
  l0 = A(1) - l1;
}

// Source index of output index `dst` along one axis (nearest).
CN_INLINE int64_t nearest_source(int64_t dst, int64_t in, int64_t out) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  const int64_t s = static_cast<int64_t>(floorf(static_cast<float>(dst) * scale));
  return s < in - 1 ? s : in - 1;
}

// The bilinear value from the 4 corners (a = [i0][j0], b = [i0][j1],
// c = [i1][j0], d = [i1][j1]); works for scalars and SIMD registers.
template <typename V>
CN_INLINE V bilerp(V a, V b, V c, V d, V w0, V w1, V l0, V l1) {
  return (a * w0 + b * w1) * l0 + (c * w0 + d * w1) * l1;
}

template <typename A>
CN_INLINE A abs_(A x) {
  return x < A(0) ? -x : x;
}

// Rounding margin for comparing interpolated values against corner bounds.
template <typename A>
CN_INLINE A prune_margin(A x, A y) {
  return A(16) * std::numeric_limits<A>::epsilon() * (abs_(x) + abs_(y)) +
         std::numeric_limits<A>::min();
}

// True when a class with this max corner cannot reach `threshold` (the
// second-largest, or largest, min corner of the cell) anywhere in the cell.
template <typename A>
CN_INLINE bool below_everywhere(A max_corner, A threshold) {
  return max_corner < threshold - prune_margin(max_corner, threshold);
}

// Mirrored: a class with this min corner stays above `threshold` (the smallest
// max corner of the cell) everywhere in the cell.
template <typename A>
CN_INLINE bool above_everywhere(A min_corner, A threshold) {
  return min_corner > threshold + prune_margin(min_corner, threshold);
}

// Keeps the two largest values seen (t1 >= t2), NaN ignored.
template <typename A>
CN_INLINE void keep_top2(A v, A& t1, A& t2) {
  if (!(v == v)) return;
  if (v > t1) {
    t2 = t1;
    t1 = v;
  } else if (v > t2) {
    t2 = v;
  }
}

// keep_top2 that also tracks the classes (c1, c2; -1 while empty).
template <typename A>
CN_INLINE void keep_top2_arg(A v, int64_t c, A& t1, int64_t& c1, A& t2, int64_t& c2) {
  if (!(v == v)) return;
  if (v > t1) {
    t2 = t1, c2 = c1;
    t1 = v, c1 = c;
  } else if (v > t2) {
    t2 = v, c2 = c;
  }
}

// Largest |corner| from the corner bounds: infinite when a corner is NaN or infinite.
template <typename A>
CN_INLINE A corner_abs(A lo, A hi) {
  const A a = abs_(lo), b = abs_(hi);
  return a > b ? a : b;
}

// True when the class with corners x (largest |corner| x_abs) is below the
// class with corners y at every pixel of the cell: every corner difference
// exceeds the rounding margin. False for any non-finite corner (the margin is
// then infinite or NaN).
template <typename A>
CN_INLINE bool below_at_every_corner(A x0, A x1, A x2, A x3, A x_abs, A y0, A y1, A y2, A y3, A y_abs) {
  const A m = prune_margin(x_abs, y_abs);
  return (y0 - x0 > m) && (y1 - x1 > m) && (y2 - x2 > m) && (y3 - x3 > m);
}

template <typename A>
CN_INLINE void corner_bounds(A a, A b, A c, A d, A& lo, A& hi) {
  if (!(a == a && b == b && c == c && d == d)) {  // NaN corner: unbounded
    lo = -std::numeric_limits<A>::infinity();
    hi = std::numeric_limits<A>::infinity();
    return;
  }
  lo = a < b ? a : b;
  lo = lo < c ? lo : c;
  lo = lo < d ? lo : d;
  hi = a > b ? a : b;
  hi = hi > c ? hi : c;
  hi = hi > d ? hi : d;
}

}  // namespace clear_native

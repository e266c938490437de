// Per-element logic of the fused upsample + dominance operator
// (clear_native::upsample_dominance, behind clear_native.project_dominance),
// shared by the CPU (cpu/simd/upsample_dominance_kernel.cpp) and CUDA
// (cuda/upsample_dominance_kernel.cu) kernels.
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

// Keeps the two largest values seen (t1 >= t2) and their classes (c1, c2;
// -1 while empty), NaN ignored.
template <typename A, typename I>
CN_INLINE void keep_top2(A v, I c, A& t1, I& c1, A& t2, I& c2) {
  if (!(v == v)) return;
  if (v > t1) {
    t2 = t1, c2 = c1;
    t1 = v, c1 = c;
  } else if (v > t2) {
    t2 = v, c2 = c;
  }
}

// One class's 4 corners in a cell (a = [i0][j0], b = [i0][j1], c = [i1][j0],
// d = [i1][j1]) and their bounds; NaN corners give infinite bounds.
template <typename A>
struct CellCorners {
  A v[4];
  A lo, hi;
  // Largest |corner|: infinite when a corner is NaN or infinite.
  CN_INLINE A abs() const {
    const A a = abs_(lo), b = abs_(hi);
    return a > b ? a : b;
  }
};

template <typename A>
CN_INLINE CellCorners<A> corners_of(A a, A b, A c, A d) {
  CellCorners<A> r{{a, b, c, d}, A(0), A(0)};
  const A* v = r.v;
  if (!(v[0] == v[0] && v[1] == v[1] && v[2] == v[2] && v[3] == v[3])) {  // NaN corner: unbounded
    r.lo = -std::numeric_limits<A>::infinity();
    r.hi = std::numeric_limits<A>::infinity();
    return r;
  }
  r.lo = v[0] < v[1] ? v[0] : v[1];
  r.lo = r.lo < v[2] ? r.lo : v[2];
  r.lo = r.lo < v[3] ? r.lo : v[3];
  r.hi = v[0] > v[1] ? v[0] : v[1];
  r.hi = r.hi > v[2] ? r.hi : v[2];
  r.hi = r.hi > v[3] ? r.hi : v[3];
  return r;
}

template <typename A>
CN_INLINE CellCorners<A> cell_corners(const A* mc, int64_t k00, int64_t k01, int64_t k10, int64_t k11) {
  return corners_of(mc[k00], mc[k01], mc[k10], mc[k11]);
}

// The corners of champion class `c` of a cell; a missing champion (-1) is
// unbounded, so it never prunes.
template <typename A>
CN_INLINE CellCorners<A> champion_corners(const A* m, int64_t hw, int64_t c, int64_t k00, int64_t k01,
                                          int64_t k10, int64_t k11) {
  if (c >= 0) return cell_corners(m + c * hw, k00, k01, k10, k11);
  return CellCorners<A>{{A(0), A(0), A(0), A(0)}, -std::numeric_limits<A>::infinity(),
                        std::numeric_limits<A>::infinity()};
}

// True when class x is below class y at every pixel of the cell: every corner
// difference exceeds the rounding margin. False for any non-finite corner (the
// margin is then infinite or NaN).
template <typename A>
CN_INLINE bool below_in_cell(const CellCorners<A>& x, const CellCorners<A>& y) {
  const A m = prune_margin(x.abs(), y.abs());
  return (y.v[0] - x.v[0] > m) && (y.v[1] - x.v[1] > m) && (y.v[2] - x.v[2] > m) &&
         (y.v[3] - x.v[3] > m);
}

// First pass over a cell's classes: the two largest min corners and the
// smallest max corner, with their classes (the champions). Trivial type (no
// constructor) so that CUDA can keep one per thread in shared memory.
template <typename A>
struct CellBounds {
  A t1, t2, bmin;
  int32_t c1, c2, e;

  CN_INLINE static CellBounds empty() {
    const A inf = std::numeric_limits<A>::infinity();
    return CellBounds{-inf, -inf, inf, -1, -1, -1};
  }
  CN_INLINE void add(int32_t c, A lo, A hi) {
    keep_top2(lo, c, t1, c1, t2, c2);
    if (hi < bmin) bmin = hi, e = c;
  }
  CN_INLINE void merge(const CellBounds& o) {
    keep_top2(o.t1, o.c1, t1, c1, t2, c2);
    keep_top2(o.t2, o.c2, t1, c1, t2, c2);
    if (o.bmin < bmin) bmin = o.bmin, e = o.e;
  }
};

// Second pass, class c with corners x: true when it can be skipped for the best
// (and runner-up) slots: one (two) other classes beat it everywhere in the cell
// (interval test, then the champion test with champions d1, d2).
template <bool kRunnerUp, typename A>
CN_INLINE bool beaten_in_cell(const CellBounds<A>& b, int64_t c, const CellCorners<A>& x,
                              const CellCorners<A>& d1, const CellCorners<A>& d2) {
  if (below_everywhere(x.hi, kRunnerUp ? b.t2 : b.t1)) return true;
  if (c == b.c1 || !below_in_cell(x, d1)) return false;
  return !kRunnerUp || (c != b.c2 && below_in_cell(x, d2));
}

// Mirrored for the weakest slot: some other class (the champion de) is below
// class c everywhere in the cell.
template <typename A>
CN_INLINE bool above_in_cell(const CellBounds<A>& b, int64_t c, const CellCorners<A>& x,
                             const CellCorners<A>& de) {
  return above_everywhere(x.lo, b.bmin) || (c != b.e && below_in_cell(de, x));
}

}  // namespace clear_native

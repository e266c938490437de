// Per-element logic of the CLEAR dominance operator (paper eq. 4-5), shared
// verbatim by the CPU kernels (csrc/cpu) and the CUDA kernels (csrc/cuda), so the
// CPU tests exercise the code the GPU runs.
//
// Ordering of (value, class) candidates -- the one documented policy:
//   * a larger value wins; equal values resolve to the LOWER class index
//     (torch.argmax's rule), whatever order the classes arrive in;
//   * NaN never wins (it is skipped); a slot that has seen no non-NaN value
//     has class -1 and value NaN;
//   * +-inf are ordinary values.
// "weakest" (argmin/min) uses the mirrored ordering: smaller value wins, ties to
// the lower index, NaN skipped.
//
// Every function is written once for two kinds of operands: scalars (float,
// double; int32_t classes; bool masks), as used by the CUDA kernel and the
// scalar CPU loops, and the CPU's SIMD register types (cpu/vec_avx2.h), which
// provide the same operators and a select() overload. Comparisons yield masks;
// `select(m, a, b)` is a lane-wise `m ? a : b`. No branches.
//
// Two modes, chosen per call:
//   kOrdered = true: every class folded in has a higher index than every class
//     already in the slot (one call, or streamed chunks in increasing order).
//     Ties then never replace the holder, and an empty slot is simply a NaN
//     value: `v > bv || bv is NaN`. Cheapest.
//   kOrdered = false: chunks in any order. Ties compare class indices; an
//     empty slot holds -inf (max) / +inf (min) with class kNoClass.
#pragma once

#include <cstdint>
#include <limits>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "macros.h"

namespace clear_native {

// Planes of the packed dominance state. Values are kept in the accumulation
// type (float for half types), indices as int64 in memory, int32 inside kernels.
enum ValuePlane : int { kTop1Value = 0, kTop2Value = 1, kMinValue = 2, kTargetValue = 3, kNumValuePlanes = 4 };
enum IndexPlane : int { kTop1Index = 0, kTop2Index = 1, kMinIndex = 2, kNumIndexPlanes = 3 };

// Accumulation (comparison) type of a response type: float for the half types.
template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<torch::headeronly::Half> {
  using type = float;
};
template <>
struct AccType<torch::headeronly::BFloat16> {
  using type = float;
};

// Class of an empty slot inside kernels (stored as -1 outside).
constexpr int32_t kNoClass = 0x7fffffff;

template <typename T>
CN_INLINE T select(bool m, T a, T b) {
  return m ? a : b;
}

// Value of an empty max (kMax) or min slot in the given mode.
template <bool kOrdered, bool kMax, typename T>
CN_INLINE T empty_value() {
  if constexpr (kOrdered) return std::numeric_limits<T>::quiet_NaN();
  else if constexpr (kMax) return -std::numeric_limits<T>::infinity();
  else return std::numeric_limits<T>::infinity();
}

// True when candidate (v, c) beats the holder (bv, bi) for the maximum: larger
// value, or equal value and lower class. Never true for a NaN candidate
// against a non-empty holder.
template <bool kOrdered, typename V, typename I>
CN_INLINE auto beats_max(V v, I c, V bv, I bi) {
  if constexpr (kOrdered) return (v > bv) | (bv != bv);
  else return (v > bv) | ((v == bv) & (c < bi));
}

// True when candidate (v, c) beats the holder (bv, bi) for the minimum.
template <bool kOrdered, typename V, typename I>
CN_INLINE auto beats_min(V v, I c, V bv, I bi) {
  if constexpr (kOrdered) return (v < bv) | (bv != bv);
  else return (v < bv) | ((v == bv) & (c < bi));
}

// Folds candidate (v, c) into the running best / runner-up / weakest of one
// pixel (or one SIMD register of pixels).
template <bool kOrdered, bool kRunnerUp = true, bool kWeakest = true, typename V, typename I>
CN_INLINE void dominance_update(V& v1, I& i1, V& v2, I& i2, V& vm, I& im, V v, I c) {
  const auto b1 = beats_max<kOrdered>(v, c, v1, i1);
  if constexpr (kRunnerUp) {
    // New runner-up: the old best if v takes first place, else v if it beats
    // the old runner-up, else unchanged.
    const auto b2 = beats_max<kOrdered>(v, c, v2, i2);
    v2 = select(b1, v1, select(b2, v, v2));
    i2 = select(b1, i1, select(b2, c, i2));
  }
  v1 = select(b1, v, v1);
  i1 = select(b1, c, i1);
  if constexpr (kWeakest) {
    const auto bm = beats_min<kOrdered>(v, c, vm, im);
    vm = select(bm, v, vm);
    im = select(bm, c, im);
  }
}

// `a > b ? a : b` and `a < b ? a : b`: the second operand on ties and whenever
// a NaN is involved (x86's maxps / minps; SIMD overloads in cpu/vec_avx2.h).
template <typename T>
CN_INLINE T max_of(T a, T b) {
  return a > b ? a : b;
}
template <typename T>
CN_INLINE T min_of(T a, T b) {
  return a < b ? a : b;
}

// select(m, c, i) for a class c above the class i >= 0 held (SIMD: a max
// instead of a blend).
template <typename I>
CN_INLINE I take_class(bool m, I c, I i) {
  return m ? c : i;
}

// Exchanges a and b where m is set.
template <typename M, typename I>
CN_INLINE void swap_where(M m, I& a, I& b) {
  const I t = a;
  a = select(m, b, a);
  b = select(m, t, b);
}

// dominance_update<kOrdered = true> for slots that all hold a class (none
// empty, so no NaN value) and a candidate class c above every class held: the
// same result bit for bit, with max / min instead of compare-and-select for the
// values. NaN candidates need no test: every comparison with them is false,
// and max_of / min_of then keep the holder. The runner-up: if v beats the best
// (v > v1 >= v2), max_of(v, v2) = v and min_of keeps v1; otherwise
// max_of(v, v2) <= v1 and min_of keeps it (ties and signed zeros included).
template <bool kRunnerUp = true, bool kWeakest = true, typename V, typename I>
CN_INLINE void dominance_update_filled(V& v1, I& i1, V& v2, I& i2, V& vm, I& im, V v, I c) {
  const auto b1 = v > v1;
  if constexpr (kRunnerUp) {
    // c where v beats the runner-up (so wherever it beats the best), then
    // exchanged with the best's class where v beats the best.
    i2 = take_class(v > v2, c, i2);
    swap_where(b1, i1, i2);
    v2 = min_of(v1, max_of(v, v2));
  } else {
    i1 = take_class(b1, c, i1);
  }
  v1 = max_of(v, v1);
  if constexpr (kWeakest) {
    im = take_class(v < vm, c, im);
    vm = min_of(v, vm);
  }
}

// The slots after the first two candidates (x0, c0), (x1, c1), c0 < c1, of
// empty slots in order: dominance_update<true> twice, without its NaN tests,
// for x0 not NaN (x1 may be: it then leaves the runner-up empty).
template <bool kRunnerUp = true, bool kWeakest = true, typename V, typename I>
CN_INLINE void dominance_first2(V& v1, I& i1, V& v2, I& i2, V& vm, I& im, V x0, I c0, V x1, I c1) {
  const auto b = x1 > x0;
  if constexpr (kRunnerUp) {
    v2 = min_of(x0, x1);
    i2 = select(b, c0, c1);
  }
  v1 = max_of(x1, x0);
  i1 = select(b, c1, c0);
  if constexpr (kWeakest) {
    const auto bm = x1 < x0;
    vm = min_of(x1, x0);
    im = select(bm, c1, c0);
  }
}

// Stored form (outputs and streaming state: -1 / NaN when empty) -> kernel slot.
template <bool kOrdered, bool kMax, typename T>
CN_INLINE void slot_load(T stored_v, int64_t stored_i, T& v, int32_t& i) {
  const bool empty = stored_i < 0;
  v = empty ? empty_value<kOrdered, kMax, T>() : stored_v;
  i = empty ? kNoClass : static_cast<int32_t>(stored_i);
}

// Kernel slot -> stored form.
template <bool kOrdered, typename T>
CN_INLINE void slot_store(T v, int32_t i, T& stored_v, int64_t& stored_i) {
  bool empty;
  if constexpr (kOrdered) empty = v != v;
  else empty = i == kNoClass;
  stored_v = empty ? std::numeric_limits<T>::quiet_NaN() : v;
  stored_i = empty ? int64_t{-1} : static_cast<int64_t>(i);
}

// The three slots (best, runner-up, weakest) of output pixel o: from the
// stored state when there is one (planes of `plane` pixels), else empty.
template <bool kOrdered, typename A>
CN_INLINE void load_slots(const A* sv, const int64_t* si, int64_t plane, int64_t o, A& v1,
                          int32_t& i1, A& v2, int32_t& i2, A& vm, int32_t& im) {
  if (sv != nullptr) {
    slot_load<kOrdered, true>(sv[kTop1Value * plane + o], si[kTop1Index * plane + o], v1, i1);
    slot_load<kOrdered, true>(sv[kTop2Value * plane + o], si[kTop2Index * plane + o], v2, i2);
    slot_load<kOrdered, false>(sv[kMinValue * plane + o], si[kMinIndex * plane + o], vm, im);
  } else {
    v1 = v2 = empty_value<kOrdered, true, A>();
    vm = empty_value<kOrdered, false, A>();
    i1 = i2 = im = kNoClass;
  }
}

// The three slots of output pixel o into the output planes.
template <bool kOrdered, typename A>
CN_INLINE void store_slots(A* ov, int64_t* oi, int64_t plane, int64_t o, A v1, int32_t i1, A v2,
                           int32_t i2, A vm, int32_t im) {
  slot_store<kOrdered>(v1, i1, ov[kTop1Value * plane + o], oi[kTop1Index * plane + o]);
  slot_store<kOrdered>(v2, i2, ov[kTop2Value * plane + o], oi[kTop2Index * plane + o]);
  slot_store<kOrdered>(vm, im, ov[kMinValue * plane + o], oi[kMinIndex * plane + o]);
}

}  // namespace clear_native

// CPU kernel of the dominance operator. Compiled once per CPU capability (see
// CMakeLists.txt); cpu_dispatch.h picks the body at run time.
//
// The responses are read as (N, C, S). Work is split into tiles of kTile pixels
// of one image, run in parallel. A tile's running state lives in small arrays
// (6 x 4 KiB: L1); the class loop is outer and the pixel loop inner, so for
// NCHW input every load is a contiguous row. Classes are taken kUnroll at a
// time inside the pixel loop, so the state is loaded and stored once per
// kUnroll classes, and the next kUnroll rows are prefetched meanwhile (each
// row of a tile is a 4 KiB page of its own). With AVX2, float / half /
// bfloat16 rows are processed 8 pixels per register, two (four for the
// dominant class alone) independent registers per step, through the same
// per-element functions (dominance_element.h) as the scalar and CUDA paths.
// In order (one call, or chunks in increasing class order), slots that
// already hold a class take dominance_update_filled (max / min and no NaN
// tests); the first two classes of a call fill them.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

#include <torch/csrc/stable/ops.h>
#include <torch/headeronly/core/Dispatch_v2.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "cpu/cpu_dispatch.h"
#include "cpu/simd_kernel.h"
#ifdef CN_HAVE_VEC8
#include "cpu/dominance_vec.h"
#endif
#include "dominance.h"
#include "dominance_element.h"
#include "flag_dispatch.h"

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

constexpr int64_t kTile = 1024;
constexpr int kUnroll = 8;
constexpr int64_t kGrainElements = 32768;  // at::internal::GRAIN_SIZE


template <typename T, bool kOrdered, bool kRunnerUp, bool kWeakest>
struct Tile {
  using A = typename AccType<T>::type;
  alignas(64) A v1[kTile], v2[kTile], vm[kTile];
  alignas(64) int32_t i1[kTile], i2[kTile], im[kTile];

  // Folds classes [cls, cls + unroll) of rows (class stride sc, pixel stride
  // ss) into pixels [p_begin, len), one pixel at a time.
  void scalar_block(const T* __restrict__ rows, int64_t sc, int64_t ss, int32_t cls,
                    int64_t p_begin, int64_t len, int unroll) {
    for (int64_t p = p_begin; p < len; ++p) {
      A a1 = v1[p], a2 = v2[p], am = vm[p];
      int32_t j1 = i1[p], j2 = i2[p], jm = im[p];
      const A last = kRunnerUp ? a2 : a1;  // the last slot to fill (see vec_group)
      if (kOrdered && last == last) {
        for (int u = 0; u < unroll; ++u)
          dominance_update_filled<kRunnerUp, kWeakest>(
              a1, j1, a2, j2, am, jm, static_cast<A>(rows[u * sc + p * ss]), cls + u);
      } else {
        for (int u = 0; u < unroll; ++u)
          dominance_update<kOrdered, kRunnerUp, kWeakest>(
              a1, j1, a2, j2, am, jm, static_cast<A>(rows[u * sc + p * ss]), cls + u);
      }
      v1[p] = a1, v2[p] = a2, vm[p] = am, i1[p] = j1, i2[p] = j2, im[p] = jm;
    }
  }

#ifdef CN_HAVE_VEC8
  // Pixels [p, p + 8 * kVecs) of contiguous rows, classes [cls, cls + kU):
  // the slots in registers, kVecs independent pixel vectors per class for
  // instruction-level parallelism. In order, slots that all hold a class
  // take the cheaper dominance_update_filled, others the general update.
  template <int kVecs, int kU>
  CN_INLINE void vec_group(const T* __restrict__ rows, int64_t sc, int32_t cls, int64_t p,
                           const T* next, int n_next) {
    using namespace avx2;
    // The next block's rows at these pixels, into L2: each row of a tile is a
    // page of its own, where the hardware prefetcher would start afresh.
    constexpr int kBytes = 8 * kVecs * static_cast<int>(sizeof(T));
    for (int u = 0; u < n_next; ++u)
      for (int b = 0; b < kBytes; b += 64)
        _mm_prefetch(reinterpret_cast<const char*>(next + u * sc + p) + b, _MM_HINT_T1);
    Vec8f a1[kVecs], a2[kVecs]{}, am[kVecs]{};
    Vec8i j1[kVecs], j2[kVecs]{}, jm[kVecs]{};
    bool filled = kOrdered;
#pragma GCC unroll 4
    for (int k = 0; k < kVecs; ++k) {
      const int64_t q = p + 8 * k;
      a1[k] = load8(v1 + q), j1[k] = load8(i1 + q);
      if constexpr (kRunnerUp) a2[k] = load8(v2 + q), j2[k] = load8(i2 + q);
      if constexpr (kWeakest) am[k] = load8(vm + q), jm[k] = load8(im + q);
      // The best slot fills first and the weakest with it; the runner-up last.
      if constexpr (kOrdered) filled = filled && !any_nan(kRunnerUp ? a2[k] : a1[k]);
    }
    if (filled) {
#pragma GCC unroll 16
      for (int u = 0; u < kU; ++u) {
        const Vec8i c = set1(cls + u);
#pragma GCC unroll 4
        for (int k = 0; k < kVecs; ++k)
          dominance_update_filled<kRunnerUp, kWeakest>(a1[k], j1[k], a2[k], j2[k], am[k], jm[k],
                                                       load8(rows + u * sc + p + 8 * k), c);
      }
    } else {
#pragma GCC unroll 16
      for (int u = 0; u < kU; ++u) {
        const Vec8i c = set1(cls + u);
#pragma GCC unroll 4
        for (int k = 0; k < kVecs; ++k)
          dominance_update<kOrdered, kRunnerUp, kWeakest>(a1[k], j1[k], a2[k], j2[k], am[k], jm[k],
                                                          load8(rows + u * sc + p + 8 * k), c);
      }
    }
#pragma GCC unroll 4
    for (int k = 0; k < kVecs; ++k) {
      const int64_t q = p + 8 * k;
      store8(v1 + q, a1[k]), store8(i1 + q, j1[k]);
      if constexpr (kRunnerUp) store8(v2 + q, a2[k]), store8(i2 + q, j2[k]);
      if constexpr (kWeakest) store8(vm + q, am[k]), store8(im + q, jm[k]);
    }
  }

  // Classes [cls, cls + kU) into pixels [0, len) of contiguous rows: vector
  // groups, then the scalar tail. Returns where the tail starts.
  template <int kU>
  int64_t vec_block(const T* __restrict__ rows, int64_t sc, int32_t cls, int64_t len,
                    const T* next, int n_next) {
    // Dominant class only: a short dependency chain per class, so more vectors.
    constexpr int kVecs = kRunnerUp || kWeakest ? 2 : 4;
    int64_t p = 0;
    for (; p + 8 * kVecs <= len; p += 8 * kVecs) vec_group<kVecs, kU>(rows, sc, cls, p, next, n_next);
    for (; p + 8 <= len; p += 8) vec_group<1, kU>(rows, sc, cls, p, next, n_next);
    return p;
  }
#endif

  // Classes [c, c + unroll) of rows into every pixel of the tile; unroll is
  // kUnroll or a smaller power of two.
  void block(const T* __restrict__ rows, int64_t sc, int64_t ss, int32_t cls, int64_t len,
             int unroll, int n_next) {
    int64_t p = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (avx2::kHasVec8<T>) {
      if (ss == 1) {
        static_assert(kUnroll == 8);
        const T* next = rows + unroll * sc;
        switch (unroll) {
          case 8: p = vec_block<8>(rows, sc, cls, len, next, n_next); break;
          case 4: p = vec_block<4>(rows, sc, cls, len, next, n_next); break;
          case 2: p = vec_block<2>(rows, sc, cls, len, next, n_next); break;
          default: p = vec_block<1>(rows, sc, cls, len, next, n_next); break;
        }
      }
    }
#endif
    scalar_block(rows, sc, ss, cls, p, len, unroll);
  }

  // Empty slots for pixels [0, len) (no state).
  void clear(int64_t len) {
    const A e_max = empty_value<kOrdered, true, A>(), e_min = empty_value<kOrdered, false, A>();
    for (int64_t p = 0; p < len; ++p) v1[p] = v2[p] = e_max, vm[p] = e_min;
    for (int64_t p = 0; p < len; ++p) i1[p] = i2[p] = im[p] = kNoClass;
  }

  // The slots of pixels [0, len) to output pixels [o, o + len).
  void store(A* __restrict__ ov, int64_t* __restrict__ oi, int64_t plane, int64_t o, int64_t len) {
    int64_t p = 0;
#ifdef CN_HAVE_VEC8
    if constexpr (std::is_same_v<A, float>) {
      for (; p + 8 <= len; p += 8) {
        using avx2::load8;
        avx2::store_slot8<kOrdered>(load8(v1 + p), load8(i1 + p), ov + kTop1Value * plane + o + p,
                                    oi + kTop1Index * plane + o + p);
        avx2::store_slot8<kOrdered>(load8(v2 + p), load8(i2 + p), ov + kTop2Value * plane + o + p,
                                    oi + kTop2Index * plane + o + p);
        avx2::store_slot8<kOrdered>(load8(vm + p), load8(im + p), ov + kMinValue * plane + o + p,
                                    oi + kMinIndex * plane + o + p);
      }
    }
#endif
    for (; p < len; ++p)
      store_slots<kOrdered>(ov, oi, plane, o + p, v1[p], i1[p], v2[p], i2[p], vm[p], im[p]);
  }

  // One tile: pixels [p0, p0 + len) of image n, all classes of the chunk.
  void run(const DominanceArgs& a, int64_t n, int64_t p0) {
    const A* __restrict__ sv = static_cast<const A*>(a.state_values);
    const int64_t* __restrict__ si = a.state_indices;
    A* __restrict__ ov = static_cast<A*>(a.out_values);
    int64_t* __restrict__ oi = a.out_indices;
    const int64_t C = a.C, sc = a.stride_c, ss = a.stride_s;
    const int64_t plane = a.N * a.S;
    const int64_t len = std::min(kTile, a.S - p0);
    const int64_t o = n * a.S + p0;
    const int32_t offset = static_cast<int32_t>(a.class_offset);

    if (sv == nullptr) clear(len);
    else
      for (int64_t p = 0; p < len; ++p)
        load_slots<kOrdered>(sv, si, plane, o + p, v1[p], i1[p], v2[p], i2[p], vm[p], im[p]);

    const T* __restrict__ base = static_cast<const T*>(a.responses) + n * a.stride_n + p0 * ss;
    // The first two classes alone: without a state they fill every slot that
    // sees no NaN, so the blocks after them take the cheaper update.
    for (int64_t c = 0; c < C;) {
      int unroll = c == 0 ? 2 : kUnroll;
      while (unroll > C - c) unroll /= 2;
      const int n_next = static_cast<int>(std::min<int64_t>(kUnroll, C - c - unroll));
      block(base + c * sc, sc, ss, offset + static_cast<int32_t>(c), len, unroll, n_next);
      c += unroll;
    }
    store(ov, oi, plane, o, len);
    // Target response: gathered when the target class lies in this chunk,
    // carried over from the state otherwise.
    A* __restrict__ tv = ov + kTargetValue * plane + o;
    const int64_t tc = a.target != nullptr ? a.target[n] - a.class_offset : -1;
    if (tc >= 0 && tc < C) {
      const T* __restrict__ row = base + tc * sc;
      for (int64_t p = 0; p < len; ++p) tv[p] = static_cast<A>(row[p * ss]);
    } else if (sv != nullptr) {
      for (int64_t p = 0; p < len; ++p) tv[p] = sv[kTargetValue * plane + o + p];
    } else {
      for (int64_t p = 0; p < len; ++p) tv[p] = std::numeric_limits<A>::quiet_NaN();
    }
  }
};

template <typename T, bool kOrdered, bool kRunnerUp, bool kWeakest>
void dominance_tiles(const DominanceArgs& a) {
  const int64_t tiles_per_image = (a.S + kTile - 1) / kTile;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, a.C * kTile));
  torch::stable::parallel_for(0, a.N * tiles_per_image, grain, [&](int64_t begin, int64_t end) {
    Tile<T, kOrdered, kRunnerUp, kWeakest> tile;
    for (int64_t t = begin; t < end; ++t)
      tile.run(a, t / tiles_per_image, (t % tiles_per_image) * kTile);
  });
}

template <typename T>
void dominance_typed(const DominanceArgs& a) {
  dispatch_dominance_flags(a.ordered, a.runner_up, a.weakest, [&](auto o, auto r, auto w) {
    dominance_tiles<T, decltype(o)::value, decltype(r)::value, decltype(w)::value>(a);
  });
}

}  // namespace

void dominance_kernel(const DominanceArgs& a) {
  THO_DISPATCH_V2(
      a.dtype, "clear_native::dominance", AT_WRAP([&] { dominance_typed<scalar_t>(a); }),
      AT_FLOATING_TYPES, torch::headeronly::ScalarType::Half,
      torch::headeronly::ScalarType::BFloat16);
}

}  // namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY

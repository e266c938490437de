// CPU kernel of the dominance operator. Compiled once per CPU capability (see
// CMakeLists.txt); cpu_dispatch.h picks the body at run time.
//
// The responses are read as (N, C, S). Work is split into tiles of kTile pixels
// of one image, run in parallel. A tile's running state lives in small arrays
// (L1/L2); the class loop is outer and the pixel loop inner, so for NCHW input
// every load is a contiguous row. Classes are taken kUnroll at a time inside
// the pixel loop, so the state is loaded and stored once per kUnroll classes.
// With AVX2, float / half / bfloat16 rows are processed 8 pixels per register
// through the same per-element functions (dominance_element.h) as the scalar
// and CUDA paths.
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
#include "dominance.h"
#include "dominance_element.h"
#include "flag_dispatch.h"

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

constexpr int64_t kTile = 2048;
constexpr int kUnroll = 8;
constexpr int64_t kGrainElements = 32768;  // at::internal::GRAIN_SIZE

template <typename T, bool kOrdered, bool kRunnerUp, bool kWeakest>
struct Tile {
  using A = typename AccType<T>::type;
  alignas(64) A v1[kTile], v2[kTile], vm[kTile];
  alignas(64) int32_t i1[kTile], i2[kTile], im[kTile];

  // Folds classes [c, c + kUnroll) of rows (class stride sc, pixel stride ss)
  // into pixels [p_begin, len).
  void scalar_block(const T* __restrict__ rows, int64_t sc, int64_t ss, int32_t cls,
                    int64_t p_begin, int64_t len, int unroll) {
    for (int64_t p = p_begin; p < len; ++p) {
      A a1 = v1[p], a2 = v2[p], am = vm[p];
      int32_t j1 = i1[p], j2 = i2[p], jm = im[p];
      for (int u = 0; u < unroll; ++u)
        dominance_update<kOrdered, kRunnerUp, kWeakest>(
            a1, j1, a2, j2, am, jm, static_cast<A>(rows[u * sc + p * ss]), cls + u);
      v1[p] = a1, v2[p] = a2, vm[p] = am, i1[p] = j1, i2[p] = j2, im[p] = jm;
    }
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

    for (int64_t p = 0; p < len; ++p)
      load_slots<kOrdered>(sv, si, plane, o + p, v1[p], i1[p], v2[p], i2[p], vm[p], im[p]);

    const T* __restrict__ base = static_cast<const T*>(a.responses) + n * a.stride_n + p0 * ss;
    int64_t c = 0;
    for (; c < C; c += kUnroll) {
      const int unroll = static_cast<int>(std::min<int64_t>(kUnroll, C - c));
      const T* __restrict__ rows = base + c * sc;
      const int32_t cls = offset + static_cast<int32_t>(c);
      int64_t p = 0;
#ifdef CN_HAVE_VEC8
      if constexpr (avx2::kHasVec8<T>) {
        if (ss == 1 && unroll == kUnroll) {
          using avx2::load8;
          using avx2::store8;
          for (; p + 8 <= len; p += 8) {
            avx2::Vec8f a1 = load8(v1 + p), a2 = load8(v2 + p), am = load8(vm + p);
            avx2::Vec8i j1 = load8(i1 + p), j2 = load8(i2 + p), jm = load8(im + p);
#pragma GCC unroll 8
            for (int u = 0; u < kUnroll; ++u)
              dominance_update<kOrdered, kRunnerUp, kWeakest>(
                  a1, j1, a2, j2, am, jm, load8(rows + u * sc + p), avx2::set1(cls + u));
            store8(v1 + p, a1), store8(v2 + p, a2), store8(vm + p, am);
            store8(i1 + p, j1), store8(i2 + p, j2), store8(im + p, jm);
          }
        }
      }
#endif
      scalar_block(rows, sc, ss, cls, p, len, unroll);
    }

    for (int64_t p = 0; p < len; ++p) {
      store_slots<kOrdered>(ov, oi, plane, o + p, v1[p], i1[p], v2[p], i2[p], vm[p], im[p]);
    }
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

// CPU kernel of the unpool_deconv operator. Compiled once per CPU capability (see
// CMakeLists.txt); cpu_dispatch.h picks the body at run time.
//
// Work items are (image, slice of input channels); each owns its slice of the
// output, so no two threads write the same element and every element sums its
// updates in one fixed order (pooled channel, position, tap): results do not
// depend on the number of threads. Each non-zero pooled signal adds
// signal * W[c, ky, kx, slice] to the kh x kw input pixels its switch reaches, in a
// channels-last accumulator of the item (8 channels per AVX2 register; multiply
// then add, no FMA: both builds round alike), transposed into the (N, C_in, H, W)
// output at the end.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include <torch/csrc/stable/ops.h>

#include "cpu/cpu_dispatch.h"
#include "cpu/simd_kernel.h"
#include "macros.h"
#include "unpool_deconv.h"
#include "unpool_deconv_element.h"

namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY {
namespace {

// dst[i] += v * w[i] for i < len; kVecs > 0: len == 8 * kVecs (float only),
// fully unrolled.
template <typename T, int kVecs>
CN_INLINE void axpy(int64_t len, T v, const T* __restrict__ w, T* __restrict__ dst) {
  int64_t i = 0;
#if defined(CN_HAVE_VEC8)
  if constexpr (std::is_same_v<T, float>) {
    const avx2::Vec8f vv = avx2::set1(v);
    if constexpr (kVecs > 0) {
#pragma GCC unroll 8
      for (int j = 0; j < kVecs; ++j)
        avx2::store8(dst + 8 * j, avx2::load8(dst + 8 * j) + vv * avx2::load8(w + 8 * j));
      return;
    }
    for (; i + 8 <= len; i += 8) avx2::store8(dst + i, avx2::load8(dst + i) + vv * avx2::load8(w + i));
  }
#endif
  for (; i < len; ++i) dst[i] = dst[i] + v * w[i];
}

struct Invalid {
  bool found = false;
  int64_t index = 0;
};

template <typename T, int kRule, int kVecs>
void run_item(const UnpoolDeconvArgs& a, int64_t n, int64_t c0, int64_t c1, std::vector<T>& scratch,
              Invalid& bad) {
  const int64_t plane = a.Ho * a.Wo, len = c1 - c0, taps = a.kh * a.kw, pixels = a.Hin * a.Win;
  // Channels-last accumulator of this item (pixels x len, cache-resident), written
  // out channel-first at the end.
  scratch.assign(pixels * len, T(0));
  T* __restrict__ acc = scratch.data();
  const T* grad = static_cast<const T*>(a.grad) + n * a.C * a.P;
  const T* pooled = kRule != kRuleDeconvnet ? static_cast<const T*>(a.pooled) + n * a.C * a.P : nullptr;
  const int64_t* idx = a.indices + n * a.C * a.P;
  for (int64_t c = 0; c < a.C; ++c) {
    const T* wc = static_cast<const T*>(a.weight) + c * taps * a.Cin + c0;
    for (int64_t q = 0; q < a.P; ++q) {
      const int64_t e = c * a.P + q;
      const T v = unpool_rule<T>(kRule, grad[e], kRule != kRuleDeconvnet ? pooled[e] : T(0));
      if (v == T(0)) continue;
      const int64_t f = idx[e];
      if (f < 0 || f >= plane) {
        if (!bad.found) bad = {true, f};
        continue;
      }
      const int64_t y = switch_row(f, a.Wo), x = f - y * a.Wo;
      for_each_tap(a, y, x, [&](int64_t tap, int64_t pixel) {
        axpy<T, kVecs>(len, v, wc + tap * a.Cin, acc + pixel * len);
      });
    }
  }
  T* __restrict__ out = static_cast<T*>(a.out) + (n * a.Cin + c0) * pixels;
  for (int64_t ci = 0; ci < len; ++ci) {
    if (a.rectify) {
      for (int64_t p = 0; p < pixels; ++p) out[ci * pixels + p] = rectify_value(acc[p * len + ci]);
    } else {
      for (int64_t p = 0; p < pixels; ++p) out[ci * pixels + p] = acc[p * len + ci];
    }
  }
}

template <typename T>
bool run_typed(const UnpoolDeconvArgs& a, int64_t* invalid) {
  // Split the input channels only as far as needed to give every thread work.
  const int64_t threads = std::max<int64_t>(1, torch::stable::get_num_threads());
  int64_t slices = 1;
  if (a.N < threads) slices = std::min<int64_t>((threads + a.N - 1) / a.N, std::max<int64_t>(1, a.Cin / 16));
  const int64_t step = ((a.Cin + slices - 1) / slices + 7) / 8 * 8;
  slices = (a.Cin + step - 1) / step;
  std::vector<Invalid> bad(a.N * slices);
  auto run = [&](auto rule, auto vecs) {
    torch::stable::parallel_for(0, a.N * slices, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> scratch;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / slices, s = t % slices;
        run_item<T, decltype(rule)::value, decltype(vecs)::value>(
            a, n, s * step, std::min(a.Cin, (s + 1) * step), scratch, bad[t]);
      }
    });
  };
  auto with_rule = [&](auto vecs) {
    if (a.rule == kRuleGradient) run(std::integral_constant<int, kRuleGradient>{}, vecs);
    else if (a.rule == kRuleGuided) run(std::integral_constant<int, kRuleGuided>{}, vecs);
    else run(std::integral_constant<int, kRuleDeconvnet>{}, vecs);
  };
  // Unrolled updates when every slice is 16, 32 or 64 float channels wide.
  const bool even = std::is_same_v<T, float> && a.Cin % step == 0;
  if (even && step == 64) with_rule(std::integral_constant<int, 8>{});
  else if (even && step == 32) with_rule(std::integral_constant<int, 4>{});
  else if (even && step == 16) with_rule(std::integral_constant<int, 2>{});
  else with_rule(std::integral_constant<int, 0>{});
  for (const Invalid& b : bad) {
    if (b.found) {
      *invalid = b.index;
      return false;
    }
  }
  return true;
}

}  // namespace

bool unpool_deconv_kernel(const UnpoolDeconvArgs& a, int64_t* invalid) {
  if (a.dtype == torch::headeronly::ScalarType::Double) return run_typed<double>(a, invalid);
  return run_typed<float>(a, invalid);
}

}  // namespace clear_native::cpu::CLEAR_NATIVE_CPU_CAPABILITY

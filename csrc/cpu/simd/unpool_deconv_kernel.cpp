// CPU kernel of the unpool_deconv operator. Compiled once per CPU capability (see
// CMakeLists.txt); cpu_dispatch.h picks the body at run time.
//
// Work items are (image, slice of input channels); each owns its slice of the
// output, so no two threads write the same element and every element sums its
// updates in one fixed order (pooled channel, position, tap): results do not
// depend on the number of threads. An item first gathers its image's non-zero
// pooled signals per channel (compact: branch-free, 8 at a time in the AVX2 build),
// then, block by block of its input channels, each signal adds
// signal * W[c, ky, kx, block] to the kh x kw input pixels its switch reaches, in a
// channels-last accumulator over the zero-padded input plane (no bounds checks;
// 8 channels per AVX2 register, the 9 weight vectors of a 3x3 kernel held in
// registers; multiply then add, no FMA: both builds round alike), which is
// transposed (8x8 register blocks), rectified if asked, into the (N, C_in, H, W)
// output. A block's accumulator stays in L1 (kBlockBytes).
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

// Per-thread buffers, reused across work items.
template <typename T>
struct Scratch {
  std::vector<T> acc;           // a block's padded channels-last accumulator
  std::vector<T> vals;          // the image's non-zero signals, channel by channel ...
  std::vector<int64_t> pix;     // ... and their footprints' first pixel in the padded plane
  std::vector<int64_t> count;   // how many per pooled channel
  std::vector<int64_t> taps;    // each tap's element offset from there
};

// Conv output (row, column) of a valid flat switch f < 2^31: the row by a
// multiplication with the reciprocal of the width (off by at most one, fixed without
// branches) instead of an integer division.
CN_INLINE void split_switch(int64_t f, int64_t wo, double inv, int64_t& y, int64_t& x) {
  y = static_cast<int64_t>(static_cast<double>(f) * inv);
  x = f - y * wo;
  const int64_t lo = x < 0, hi = x >= wo;
  y += hi - lo;
  x += (lo - hi) * wo;
}

// Gathers the non-zero signals v of one pooled channel (the rules zero about half)
// from position q0 on, in position order, with their footprint's first pixel in the
// padded plane, without a branch per signal; k: how many are gathered already.
// Returns the new count; an invalid switch with a non-zero signal goes to bad.
template <typename T, int kRule>
int64_t compact_scalar(const T* __restrict__ grad, const T* __restrict__ pooled, const int64_t* __restrict__ idx,
                       int64_t q0, int64_t q1, int64_t Wo, int64_t plane, int64_t ystep, int64_t xstep,
                       T* __restrict__ vals, int64_t* __restrict__ pix, int64_t k, Invalid& bad) {
  if (plane < (int64_t{1} << 31)) {
    const double inv = 1.0 / static_cast<double>(Wo);
    for (int64_t q = q0; q < q1; ++q) {
      const T v = unpool_rule<T>(kRule, grad[q], kRule != kRuleDeconvnet ? pooled[q] : T(0));
      const int64_t f = idx[q];
      if (static_cast<uint64_t>(f) >= static_cast<uint64_t>(plane)) [[unlikely]] {
        if (v != T(0) && !bad.found) bad = {true, f};
        continue;
      }
      int64_t y, x;
      split_switch(f, Wo, inv, y, x);
      vals[k] = v;
      pix[k] = y * ystep + x * xstep;
      k += v != T(0);
    }
    return k;
  }
  for (int64_t q = q0; q < q1; ++q) {
    const T v = unpool_rule<T>(kRule, grad[q], kRule != kRuleDeconvnet ? pooled[q] : T(0));
    const int64_t f = idx[q];
    if (v == T(0)) continue;
    if (f < 0 || f >= plane) {
      if (!bad.found) bad = {true, f};
      continue;
    }
    const int64_t y = switch_row(f, Wo);
    vals[k] = v;
    pix[k++] = y * ystep + (f - y * Wo) * xstep;
  }
  return k;
}


// compact_scalar over positions [0, P), 8 at a time for float in the AVX2 build
// (the same selects; the row of a switch from a float reciprocal, fixed as in
// split_switch). vals and pix need P + 8 elements (whole registers are stored).
template <typename T, int kRule>
int64_t compact(const T* __restrict__ grad, const T* __restrict__ pooled, const int64_t* __restrict__ idx,
                int64_t P, int64_t Wo, int64_t plane, int64_t ystep, int64_t xstep, T* __restrict__ vals,
                int64_t* __restrict__ pix, Invalid& bad, int64_t pixels) {
  int64_t k = 0, q = 0;
#if defined(CN_HAVE_VEC8)
  // Float reciprocal: f < 2^24 is exact and the row estimate is off by at most one
  // for Wo >= 3; pixel offsets fit 32 bits.
  if (std::is_same_v<T, float> && Wo >= 3 && plane < (int64_t{1} << 24) && pixels < (int64_t{1} << 31)) {
    const __m256 zero = _mm256_setzero_ps(), inv = _mm256_set1_ps(1.0f / static_cast<float>(Wo));
    const __m256i last = _mm256_set1_epi64x(plane - 1), zero64 = _mm256_setzero_si256();
    const __m256i wo = _mm256_set1_epi32(static_cast<int32_t>(Wo)), wo1 = _mm256_set1_epi32(static_cast<int32_t>(Wo - 1));
    const __m256i ys = _mm256_set1_epi32(static_cast<int32_t>(ystep)), xs = _mm256_set1_epi32(static_cast<int32_t>(xstep));
    const __m256i even = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
    for (; q + 8 <= P; q += 8) {
      const __m256i f0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + q));
      const __m256i f1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx + q + 4));
      const __m256i out = _mm256_or_si256(_mm256_or_si256(_mm256_cmpgt_epi64(f0, last), _mm256_cmpgt_epi64(zero64, f0)),
                                          _mm256_or_si256(_mm256_cmpgt_epi64(f1, last), _mm256_cmpgt_epi64(zero64, f1)));
      if (!_mm256_testz_si256(out, out)) [[unlikely]] {
        k = compact_scalar<T, kRule>(grad, pooled, idx, q, q + 8, Wo, plane, ystep, xstep, vals, pix, k, bad);
        continue;
      }
      const __m256 g = _mm256_loadu_ps(reinterpret_cast<const float*>(grad) + q);
      // unpool_rule: max(0, g) is g < 0 ? 0 : g (NaN passes); the mask p > 0.
      __m256 v = kRule == kRuleGradient ? g : _mm256_max_ps(zero, g);
      if constexpr (kRule != kRuleDeconvnet)
        v = _mm256_and_ps(v, _mm256_cmp_ps(_mm256_loadu_ps(reinterpret_cast<const float*>(pooled) + q), zero, _CMP_GT_OQ));
      const int mask = _mm256_movemask_ps(_mm256_cmp_ps(v, zero, _CMP_NEQ_UQ));
      // The low halves of the 8 switches, as int32.
      const __m256i f = _mm256_permute2x128_si256(_mm256_permutevar8x32_epi32(f0, even),
                                                  _mm256_permutevar8x32_epi32(f1, even), 0x20);
      __m256i y = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(f), inv));
      __m256i x = _mm256_sub_epi32(f, _mm256_mullo_epi32(y, wo));
      const __m256i lo = _mm256_cmpgt_epi32(_mm256_setzero_si256(), x), hi = _mm256_cmpgt_epi32(x, wo1);
      y = _mm256_sub_epi32(_mm256_add_epi32(y, lo), hi);  // lo, hi: -1 where set
      x = _mm256_sub_epi32(_mm256_add_epi32(x, _mm256_and_si256(lo, wo)), _mm256_and_si256(hi, wo));
      const __m256i p = _mm256_add_epi32(_mm256_mullo_epi32(y, ys), _mm256_mullo_epi32(x, xs));
      const __m256i sel = avx2::compress_lanes(static_cast<unsigned>(mask));
      _mm256_storeu_ps(reinterpret_cast<float*>(vals) + k, _mm256_permutevar8x32_ps(v, sel));
      const __m256i pc = _mm256_permutevar8x32_epi32(p, sel);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pix + k), _mm256_cvtepi32_epi64(_mm256_castsi256_si128(pc)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(pix + k + 4), _mm256_cvtepi32_epi64(_mm256_extracti128_si256(pc, 1)));
      k += __builtin_popcount(static_cast<unsigned>(mask));
    }
  }
#endif
  return compact_scalar<T, kRule>(grad, pooled, idx, q, P, Wo, plane, ystep, xstep, vals, pix, k, bad);
}

// The accumulator (padded pixels x len, channels last) into len output planes
// (Hin x Win each, `out` the first), rectified or not.
template <typename T, bool kRectify>
void write_out(const UnpoolDeconvArgs& a, const T* __restrict__ acc, int64_t len, T* __restrict__ out) {
  const int64_t Wp = a.Win + 2 * a.pw, pixels = a.Hin * a.Win;
  const T* first = acc + (a.ph * Wp + a.pw) * len;  // input pixel (0, 0)
#if defined(CN_HAVE_VEC8)
  if constexpr (std::is_same_v<T, float>) {
    if (len % 8 == 0 && a.Win >= 8) {
      // 8 channels x 8 pixels at a time (the last block of a row overlaps the one
      // before when Win % 8 != 0).
      const avx2::Vec8f zero = avx2::set1(0.0f);
      for (int64_t ci = 0; ci < len; ci += 8) {
        for (int64_t iy = 0; iy < a.Hin; ++iy) {
          const float* row = first + iy * Wp * len + ci;
          float* o = out + ci * pixels + iy * a.Win;
          for (int64_t ix = 0; ix < a.Win; ix += 8) {
            const int64_t x0 = std::min(ix, a.Win - 8);
            avx2::Vec8f r[8];
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j) r[j] = avx2::load8(row + (x0 + j) * len);
            avx2::transpose8(r);
#pragma GCC unroll 8
            for (int j = 0; j < 8; ++j) {
              // max(0, v) is v < 0 ? 0 : v: NaN and -0.0 pass (rectify_value).
              avx2::store8(o + j * pixels + x0, kRectify ? avx2::max_of(zero, r[j]) : r[j]);
            }
          }
        }
      }
      return;
    }
  }
#endif
  for (int64_t ci = 0; ci < len; ++ci) {
    for (int64_t iy = 0; iy < a.Hin; ++iy) {
      const T* row = first + iy * Wp * len + ci;
      T* o = out + ci * pixels + iy * a.Win;
      for (int64_t ix = 0; ix < a.Win; ++ix) o[ix] = kRectify ? rectify_value(row[ix * len]) : row[ix * len];
    }
  }
}

// One block of input channels [b0, b0 + len) of image n: every compacted signal
// adds v * W[c, ky, kx, block] at its kh x kw taps, in (pooled channel, position, tap)
// order, into the zeroed accumulator, then the block goes out. kTaps: kh * kw when
// fixed at compile time (9: the 3x3 kernel, unrolled), else 0; kVecs: see axpy.
template <typename T, int kVecs, int kTaps>
void run_block(const UnpoolDeconvArgs& a, int64_t n, int64_t b0, int64_t len, Scratch<T>& s) {
  const int64_t taps = kTaps > 0 ? kTaps : a.kh * a.kw, Cin = a.Cin, P = a.P;
  const int64_t Wp = a.Win + 2 * a.pw, Hp = a.Hin + 2 * a.ph;
  // 64-byte aligned (a cache line): no register of the accumulator straddles two lines.
  s.acc.resize(Hp * Wp * len + 64 / sizeof(T));
  T* __restrict__ acc = s.acc.data() + (64 - reinterpret_cast<uintptr_t>(s.acc.data()) % 64) % 64 / sizeof(T);
  std::fill(acc, acc + Hp * Wp * len, T(0));
  for (int64_t ky = 0; ky < a.kh; ++ky)
    for (int64_t kx = 0; kx < a.kw; ++kx) s.taps[ky * a.kw + kx] = (ky * a.dh * Wp + kx * a.dw) * len;
  const T* __restrict__ vals = s.vals.data();
  const int64_t* __restrict__ pix = s.pix.data();
  const int64_t* __restrict__ tap = s.taps.data();
  const T* weight = static_cast<const T*>(a.weight) + b0;
#if defined(CN_HAVE_VEC8)
  if constexpr (std::is_same_v<T, float> && kVecs == 1 && kTaps == 9) {
    // One register per tap: the channel's 9 weight vectors stay in registers, and
    // each update is a load, a multiply, an add and a store of the accumulator.
    int64_t off[9];
    for (int t = 0; t < 9; ++t) off[t] = tap[t];
    for (int64_t c = 0; c < a.C; ++c) {
      avx2::Vec8f wr[9];
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) wr[t] = avx2::load8(weight + (c * 9 + t) * Cin);
      const float* cv = vals + c * P;
      const int64_t* cp = pix + c * P;
      for (int64_t i = 0, k = s.count[c]; i < k; ++i) {
        const avx2::Vec8f v = avx2::set1(cv[i]);
        float* base = acc + cp[i] * 8;
#pragma GCC unroll 9
        for (int t = 0; t < 9; ++t) avx2::store8(base + off[t], avx2::load8(base + off[t]) + v * wr[t]);
      }
    }
  } else
#endif
  {
    for (int64_t c = 0; c < a.C; ++c) {
      const T* __restrict__ wc = weight + c * taps * Cin;
      const int64_t k = s.count[c];
      for (int64_t i = 0; i < k; ++i) {
        const T v = vals[c * P + i];
        T* base = acc + pix[c * P + i] * len;
#pragma GCC unroll 9
        for (int64_t t = 0; t < taps; ++t) axpy<T, kVecs>(len, v, wc + t * Cin, base + tap[t]);
      }
    }
  }
  T* out = static_cast<T*>(a.out) + (n * a.Cin + b0) * a.Hin * a.Win;
  if (a.rectify) write_out<T, true>(a, acc, len, out);
  else write_out<T, false>(a, acc, len, out);
}

// Bytes of accumulator per block: it stays in the L1 data cache while every pooled
// channel's signals pass over it (a larger one streams through L2 once per channel).
constexpr int64_t kBlockBytes = 32 * 1024;

// Whether run_block keeps the weights in registers (float, 3x3 kernel, 8-channel
// blocks, AVX2 build): then blocks are 8 channels wide whatever kBlockBytes allows
// (measured: 1.2-1.5x faster than 32- or 64-channel blocks reading the weights from
// memory at the MNIST benchmark's shapes).
template <typename T>
constexpr bool kWeightsInRegisters =
#if defined(CN_HAVE_VEC8)
    std::is_same_v<T, float>;
#else
    false;
#endif

// Work item: image n, input channels [c0, c1).
template <typename T, int kRule>
void run_item(const UnpoolDeconvArgs& a, int64_t n, int64_t c0, int64_t c1, Scratch<T>& s, Invalid& bad) {
  const int64_t P = a.P;
  // The accumulator covers the padded input plane, (Hin + 2 ph) x (Win + 2 pw)
  // pixels: every tap of every switch lands inside it ((Ho - 1) sh + (kh - 1) dh <
  // Hin + 2 ph), so no tap needs a bounds check; the padding ring is dropped at the end.
  const int64_t Wp = a.Win + 2 * a.pw, Hp = a.Hin + 2 * a.ph;
  s.vals.resize(a.C * P + 8);
  s.pix.resize(a.C * P + 8);
  s.count.resize(a.C);
  s.taps.resize(a.kh * a.kw);
  const T* grad = static_cast<const T*>(a.grad) + n * a.C * P;
  const T* pooled = kRule != kRuleDeconvnet ? static_cast<const T*>(a.pooled) + n * a.C * P : nullptr;
  const int64_t* idx = a.indices + n * a.C * P;
  int64_t total = 0;
  for (int64_t c = 0; c < a.C; ++c) {
    s.count[c] = compact<T, kRule>(grad + c * P, pooled ? pooled + c * P : nullptr, idx + c * P, P, a.Wo,
                                   a.Ho * a.Wo, a.sh * Wp, a.sw, s.vals.data() + c * P, s.pix.data() + c * P,
                                   bad, Hp * Wp);
    total += s.count[c];
  }
  if (total == 0) {  // no signal reaches this image (a class without response): zeros
    T* out = static_cast<T*>(a.out) + (n * a.Cin + c0) * a.Hin * a.Win;
    std::fill(out, out + (c1 - c0) * a.Hin * a.Win, T(0));
    return;
  }
  // Blocks of 8, 16, 32 or 64 channels whose accumulator fits kBlockBytes (at least 8).
  // The blocking does not change any element's summation order.
  const int64_t fit = kBlockBytes / (Hp * Wp * static_cast<int64_t>(sizeof(T)));
  const int64_t width = kWeightsInRegisters<T> && a.kh == 3 && a.kw == 3 ? 8
                        : fit >= 64                                     ? 64
                        : fit >= 32                                     ? 32
                        : fit >= 16                                     ? 16
                                                                        : 8;
  for (int64_t b0 = c0; b0 < c1; b0 += width) {
    const int64_t len = std::min(width, c1 - b0);
    auto block = [&](auto vecs) {
      if (a.kh == 3 && a.kw == 3) run_block<T, decltype(vecs)::value, 9>(a, n, b0, len, s);
      else run_block<T, decltype(vecs)::value, 0>(a, n, b0, len, s);
    };
    if (std::is_same_v<T, float> && len == 8) block(std::integral_constant<int, 1>{});
    else if (std::is_same_v<T, float> && len == 16) block(std::integral_constant<int, 2>{});
    else if (std::is_same_v<T, float> && len == 32) block(std::integral_constant<int, 4>{});
    else if (std::is_same_v<T, float> && len == 64) block(std::integral_constant<int, 8>{});
    else block(std::integral_constant<int, 0>{});
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
  auto run = [&](auto rule) {
    torch::stable::parallel_for(0, a.N * slices, 1, [&](int64_t begin, int64_t end) {
      Scratch<T> scratch;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / slices, s = t % slices;
        run_item<T, decltype(rule)::value>(a, n, s * step, std::min(a.Cin, (s + 1) * step), scratch, bad[t]);
      }
    });
  };
  if (a.rule == kRuleGradient) run(std::integral_constant<int, kRuleGradient>{});
  else if (a.rule == kRuleGuided) run(std::integral_constant<int, kRuleGuided>{});
  else run(std::integral_constant<int, kRuleDeconvnet>{});
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

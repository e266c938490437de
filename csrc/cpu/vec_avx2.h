// Minimal AVX2 register types with the operators dominance_element.h (and the
// other per-element headers) use, so those functions run 8 pixels at a time on
// the CPU unchanged. Only included by sources compiled with -mavx2 -mfma -mf16c.
#pragma once

#if !defined(__AVX2__) || !defined(__F16C__)
#error "vec_avx2.h needs -mavx2 -mfma -mf16c"
#endif

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

namespace clear_native::cpu::avx2 {

struct Mask8 {
  __m256i m;
};
struct Vec8f {
  __m256 v;
};
struct Vec8i {
  __m256i v;
};

inline Mask8 operator|(Mask8 a, Mask8 b) { return {_mm256_or_si256(a.m, b.m)}; }
inline Mask8 operator&(Mask8 a, Mask8 b) { return {_mm256_and_si256(a.m, b.m)}; }

// Ordered, non-signalling comparisons: false whenever a NaN is involved.
inline Mask8 operator>(Vec8f a, Vec8f b) { return {_mm256_castps_si256(_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ))}; }
inline Mask8 operator<(Vec8f a, Vec8f b) { return {_mm256_castps_si256(_mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ))}; }
inline Mask8 operator==(Vec8f a, Vec8f b) { return {_mm256_castps_si256(_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ))}; }
inline Mask8 operator<(Vec8i a, Vec8i b) { return {_mm256_cmpgt_epi32(b.v, a.v)}; }
inline Mask8 operator>(Vec8i a, Vec8i b) { return {_mm256_cmpgt_epi32(a.v, b.v)}; }
inline Mask8 operator==(Vec8i a, Vec8i b) { return {_mm256_cmpeq_epi32(a.v, b.v)}; }

inline Vec8f select(Mask8 m, Vec8f a, Vec8f b) {
  return {_mm256_blendv_ps(b.v, a.v, _mm256_castsi256_ps(m.m))};
}
inline Vec8i select(Mask8 m, Vec8i a, Vec8i b) {
  return {_mm256_blendv_epi8(b.v, a.v, m.m)};
}

// a > b ? a : b and a < b ? a : b (maxps / minps: b on ties and NaN).
inline Vec8f max_of(Vec8f a, Vec8f b) { return {_mm256_max_ps(a.v, b.v)}; }
inline Vec8f min_of(Vec8f a, Vec8f b) { return {_mm256_min_ps(a.v, b.v)}; }
// m ? c : i for classes c > i >= 0 (dominance_element.h): max(i, m & c).
inline Vec8i take_class(Mask8 m, Vec8i c, Vec8i i) {
  return {_mm256_max_epi32(i.v, _mm256_and_si256(m.m, c.v))};
}
// Exchanges a and b where m is set (three xors and an and, no blend).
inline void swap_where(Mask8 m, Vec8i& a, Vec8i& b) {
  const __m256i x = _mm256_and_si256(_mm256_xor_si256(a.v, b.v), m.m);
  a.v = _mm256_xor_si256(a.v, x);
  b.v = _mm256_xor_si256(b.v, x);
}
// True when any lane is NaN.
inline bool any_nan(Vec8f x) { return _mm256_movemask_ps(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q)) != 0; }

// Lane indices of the set bits of an 8-bit mask, packed in bytes (lowest first;
// lane 0 after them): _mm256_permutevar8x32 with compress_lanes(mask) moves the
// selected lanes to the front, for branch-free compaction.
struct CompressTable {
  uint64_t lanes[256] = {};
  constexpr CompressTable() {
    for (int m = 0; m < 256; ++m) {
      int j = 0;
      for (int b = 0; b < 8; ++b)
        if (m >> b & 1) lanes[m] |= static_cast<uint64_t>(b) << (8 * j++);
    }
  }
};
inline constexpr CompressTable kCompress{};
inline __m256i compress_lanes(unsigned mask) {
  return _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(kCompress.lanes[mask])));
}

inline Vec8f set1(float x) { return {_mm256_set1_ps(x)}; }
inline Vec8i set1(int32_t x) { return {_mm256_set1_epi32(x)}; }

// Loads 8 consecutive elements as float.
inline Vec8f load8(const float* p) { return {_mm256_loadu_ps(p)}; }
inline Vec8f load8(const torch::headeronly::Half* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline Vec8f load8(const torch::headeronly::BFloat16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}

inline Vec8i load8(const int32_t* p) { return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))}; }
inline void store8(float* p, Vec8f x) { _mm256_storeu_ps(p, x.v); }
inline void store8(int32_t* p, Vec8i x) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x.v); }

// Whether element type T is read through these registers (float and the half
// types, compared in float).
template <typename T>
inline constexpr bool kHasVec8 = std::is_same_v<T, float> || std::is_same_v<T, torch::headeronly::Half> ||
                                 std::is_same_v<T, torch::headeronly::BFloat16>;

}  // namespace clear_native::cpu::avx2

namespace clear_native::cpu::avx2 {
inline Mask8 operator!=(Vec8f a, Vec8f b) {
  return {_mm256_castps_si256(_mm256_cmp_ps(a.v, b.v, _CMP_NEQ_UQ))};
}
}  // namespace clear_native::cpu::avx2

namespace clear_native::cpu::avx2 {
inline Vec8f operator+(Vec8f a, Vec8f b) { return {_mm256_add_ps(a.v, b.v)}; }
inline Vec8f operator*(Vec8f a, Vec8f b) { return {_mm256_mul_ps(a.v, b.v)}; }
}  // namespace clear_native::cpu::avx2

namespace clear_native::cpu::avx2 {
// Transposes the 8x8 block r[0..7] (row i: 8 consecutive floats) in place: afterwards
// r[j][i] is the old r[i][j]. Moves only, no arithmetic.
inline void transpose8(Vec8f r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0].v, r[1].v), t1 = _mm256_unpackhi_ps(r[0].v, r[1].v);
  const __m256 t2 = _mm256_unpacklo_ps(r[2].v, r[3].v), t3 = _mm256_unpackhi_ps(r[2].v, r[3].v);
  const __m256 t4 = _mm256_unpacklo_ps(r[4].v, r[5].v), t5 = _mm256_unpackhi_ps(r[4].v, r[5].v);
  const __m256 t6 = _mm256_unpacklo_ps(r[6].v, r[7].v), t7 = _mm256_unpackhi_ps(r[6].v, r[7].v);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0].v = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1].v = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2].v = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3].v = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4].v = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5].v = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6].v = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7].v = _mm256_permute2f128_ps(u3, u7, 0x31);
}
}  // namespace clear_native::cpu::avx2

// AVX-512 register types with the operators dominance_element.h uses, as
// vec_avx2.h for 8 lanes: the same per-element functions run 16 pixels at a
// time, comparisons giving mask registers. Only included by sources compiled
// with -mavx512f -mavx512bw -mavx512vl -mavx512dq (the AVX512 kernel bodies).
#pragma once

#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512DQ__)
#error "vec_avx512.h needs -mavx512f -mavx512bw -mavx512vl -mavx512dq"
#endif

#include <immintrin.h>

#include <cstdint>
#include <limits>

#include "dominance_element.h"

namespace clear_native::cpu::avx512 {

struct Mask16 {
  __mmask16 m;
};
struct Vec16f {
  __m512 v;
};
struct Vec16i {
  __m512i v;
};

inline Mask16 operator|(Mask16 a, Mask16 b) { return {static_cast<__mmask16>(a.m | b.m)}; }
inline Mask16 operator&(Mask16 a, Mask16 b) { return {static_cast<__mmask16>(a.m & b.m)}; }

// Ordered, non-signalling comparisons (false with a NaN), as vec_avx2.h.
inline Mask16 operator>(Vec16f a, Vec16f b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
inline Mask16 operator<(Vec16f a, Vec16f b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ)}; }
inline Mask16 operator==(Vec16f a, Vec16f b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ)}; }
inline Mask16 operator!=(Vec16f a, Vec16f b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_UQ)}; }
inline Mask16 operator<(Vec16i a, Vec16i b) { return {_mm512_cmplt_epi32_mask(a.v, b.v)}; }
inline Mask16 operator>(Vec16i a, Vec16i b) { return {_mm512_cmpgt_epi32_mask(a.v, b.v)}; }
inline Mask16 operator==(Vec16i a, Vec16i b) { return {_mm512_cmpeq_epi32_mask(a.v, b.v)}; }

inline Vec16f operator+(Vec16f a, Vec16f b) { return {_mm512_add_ps(a.v, b.v)}; }
inline Vec16f operator*(Vec16f a, Vec16f b) { return {_mm512_mul_ps(a.v, b.v)}; }

// m ? a : b, lane-wise.
inline Vec16f select(Mask16 m, Vec16f a, Vec16f b) { return {_mm512_mask_blend_ps(m.m, b.v, a.v)}; }
inline Vec16i select(Mask16 m, Vec16i a, Vec16i b) { return {_mm512_mask_blend_epi32(m.m, b.v, a.v)}; }

// a > b ? a : b and a < b ? a : b (vmaxps / vminps: b on ties and NaN).
inline Vec16f max_of(Vec16f a, Vec16f b) { return {_mm512_max_ps(a.v, b.v)}; }
inline Vec16f min_of(Vec16f a, Vec16f b) { return {_mm512_min_ps(a.v, b.v)}; }
// m ? c : i (a masked move; vec_avx2.h's max trick gives the same for c > i >= 0).
inline Vec16i take_class(Mask16 m, Vec16i c, Vec16i i) { return {_mm512_mask_mov_epi32(i.v, m.m, c.v)}; }
// Exchanges a and b where m is set.
inline void swap_where(Mask16 m, Vec16i& a, Vec16i& b) {
  const __m512i x = _mm512_maskz_xor_epi32(m.m, a.v, b.v);
  a.v = _mm512_xor_si512(a.v, x);
  b.v = _mm512_xor_si512(b.v, x);
}
// True when any lane is NaN.
inline bool any_nan(Vec16f x) { return _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q) != 0; }

inline Vec16f set1(float x) { return {_mm512_set1_ps(x)}; }
inline Vec16i set1(int32_t x) { return {_mm512_set1_epi32(x)}; }
inline Vec16f load16(const float* p) { return {_mm512_loadu_ps(p)}; }
inline Vec16i load16(const int32_t* p) { return {_mm512_loadu_si512(p)}; }
inline void store16(float* p, Vec16f x) { _mm512_storeu_ps(p, x.v); }
inline void store16(int32_t* p, Vec16i x) { _mm512_storeu_si512(p, x.v); }

// slot_store (dominance_element.h) for 16 consecutive slots with
// non-temporal stores: the value (NaN where empty) as one 64-byte line, then
// the classes (-1 where empty) as int64, two lines. 64-byte aligned
// addresses only; an _mm_sfence() must follow before other threads read.
template <bool kOrdered>
CN_INLINE void stream_slot16(Vec16f x, Vec16i c, float* stored_v, int64_t* stored_i) {
  __mmask16 empty;
  if constexpr (kOrdered) empty = _mm512_cmp_ps_mask(x.v, x.v, _CMP_UNORD_Q);
  else empty = _mm512_cmpeq_epi32_mask(c.v, _mm512_set1_epi32(kNoClass));
  const __m512 v = _mm512_mask_blend_ps(empty, x.v, _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
  const __m512i ci = _mm512_mask_blend_epi32(empty, c.v, _mm512_set1_epi32(-1));
  _mm512_stream_ps(stored_v, v);
  _mm512_stream_si512(reinterpret_cast<__m512i*>(stored_i), _mm512_cvtepi32_epi64(_mm512_castsi512_si256(ci)));
  _mm512_stream_si512(reinterpret_cast<__m512i*>(stored_i + 8),
                      _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(ci, 1)));
}

}  // namespace clear_native::cpu::avx512

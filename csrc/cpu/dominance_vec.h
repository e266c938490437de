// AVX2 helpers shared by the CPU kernels of the dominance-style operators
// (cpu/simd/dominance_kernel.cpp, cpu/simd/upsample_dominance_kernel.cpp): the stored form
// of 8 slots at once. Only included where CN_HAVE_VEC8 is defined.
#pragma once

#include <cstdint>
#include <limits>

#include "cpu/vec_avx2.h"
#include "dominance_element.h"

namespace clear_native::cpu::avx2 {

// slot_store (dominance_element.h) for 8 consecutive slots: NaN / -1 where
// empty (in order: a NaN value; else: class kNoClass), classes as int64.
// kStream: non-temporal stores (32-byte aligned addresses only), which skip
// reading the output's cache lines before writing them; an _mm_sfence() must
// follow before other threads read the output.
template <bool kOrdered, bool kStream = false>
inline void store_slot8(Vec8f x, Vec8i c, float* stored_v, int64_t* stored_i) {
  __m256i empty;
  if constexpr (kOrdered) empty = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  else empty = _mm256_cmpeq_epi32(c.v, _mm256_set1_epi32(kNoClass));
  const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
  const __m256 v = _mm256_blendv_ps(x.v, nan, _mm256_castsi256_ps(empty));
  const __m256i ci = _mm256_or_si256(c.v, empty);  // -1 where empty
  const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ci));
  const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ci, 1));
  __m256i* si = reinterpret_cast<__m256i*>(stored_i);
  if constexpr (kStream) {
    _mm256_stream_ps(stored_v, v), _mm256_stream_si256(si, lo), _mm256_stream_si256(si + 1, hi);
  } else {
    _mm256_storeu_ps(stored_v, v), _mm256_storeu_si256(si, lo), _mm256_storeu_si256(si + 1, hi);
  }
}

}  // namespace clear_native::cpu::avx2

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
// The stored form of 8 slots: value (NaN where empty) and class as two halves
// of int64 (-1 where empty).
struct StoredSlot8 {
  __m256 v;
  __m256i lo, hi;
};

template <bool kOrdered>
CN_INLINE StoredSlot8 stored_slot8(Vec8f x, Vec8i c) {
  __m256i empty;
  if constexpr (kOrdered) empty = _mm256_castps_si256(_mm256_cmp_ps(x.v, x.v, _CMP_UNORD_Q));
  else empty = _mm256_cmpeq_epi32(c.v, _mm256_set1_epi32(kNoClass));
  const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
  const __m256i ci = _mm256_or_si256(c.v, empty);  // -1 where empty
  return {_mm256_blendv_ps(x.v, nan, _mm256_castsi256_ps(empty)),
          _mm256_cvtepi32_epi64(_mm256_castsi256_si128(ci)),
          _mm256_cvtepi32_epi64(_mm256_extracti128_si256(ci, 1))};
}

template <bool kOrdered, bool kStream = false>
inline void store_slot8(Vec8f x, Vec8i c, float* stored_v, int64_t* stored_i) {
  const StoredSlot8 s = stored_slot8<kOrdered>(x, c);
  __m256i* si = reinterpret_cast<__m256i*>(stored_i);
  if constexpr (kStream) {
    _mm256_stream_ps(stored_v, s.v), _mm256_stream_si256(si, s.lo), _mm256_stream_si256(si + 1, s.hi);
  } else {
    _mm256_storeu_ps(stored_v, s.v), _mm256_storeu_si256(si, s.lo), _mm256_storeu_si256(si + 1, s.hi);
  }
}

// store_slot8 with non-temporal stores for kV x 8 consecutive slots, plane by
// plane: the values of all kV groups, then their classes, so that each
// 64-byte line is written whole by consecutive stores. Interleaving the
// planes 8 slots at a time keeps several partly written lines per plane open
// at once, more than the core's write-combining buffers hold (2.6x slower
// for the 7 planes of upsample_dominance on a 2-core Xeon).
template <bool kOrdered, int kV>
CN_INLINE void stream_slots8(const Vec8f* x, const Vec8i* c, float* stored_v, int64_t* stored_i) {
  StoredSlot8 s[kV];
  for (int q = 0; q < kV; ++q) s[q] = stored_slot8<kOrdered>(x[q], c[q]);
  for (int q = 0; q < kV; ++q) _mm256_stream_ps(stored_v + 8 * q, s[q].v);
  __m256i* si = reinterpret_cast<__m256i*>(stored_i);
  for (int q = 0; q < kV; ++q) _mm256_stream_si256(si + 2 * q, s[q].lo), _mm256_stream_si256(si + 2 * q + 1, s[q].hi);
}

}  // namespace clear_native::cpu::avx2

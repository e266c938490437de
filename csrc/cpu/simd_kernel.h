// Included by every CPU kernel body in csrc/cpu/simd/: each is compiled once per
// CPU capability (CMakeLists.txt); the AVX2 and AVX512 copies get the 8-lane
// register types of vec_avx2.h (CN_HAVE_VEC8), the AVX512 copy also the
// 16-lane ones of vec_avx512.h (CN_HAVE_VEC16) where a kernel uses them.
#pragma once

#ifndef CLEAR_NATIVE_CPU_CAPABILITY
#error "CLEAR_NATIVE_CPU_CAPABILITY must be defined by the build"
#endif

#if defined(__AVX2__) && defined(__F16C__)
#include "cpu/vec_avx2.h"
#define CN_HAVE_VEC8 1
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#include "cpu/vec_avx512.h"
#define CN_HAVE_VEC16 1
#endif

// Included by every CPU kernel body in csrc/cpu/simd/: each is compiled once per
// CPU capability (CMakeLists.txt), and the AVX2 copy gets the 8-lane register
// types of vec_avx2.h (CN_HAVE_VEC8).
#pragma once

#ifndef CLEAR_NATIVE_CPU_CAPABILITY
#error "CLEAR_NATIVE_CPU_CAPABILITY must be defined by the build"
#endif

#if defined(__AVX2__) && defined(__F16C__)
#include "cpu/vec_avx2.h"
#define CN_HAVE_VEC8 1
#endif

// Run-time choice between kernel bodies compiled for baseline x86-64 and for
// AVX2+FMA (see CMakeLists.txt: csrc/cpu/simd/*.cpp are compiled once per
// capability, into namespaces clear_native::cpu::DEFAULT / AVX2).
#pragma once

#include <cstdlib>
#include <cstring>

namespace clear_native::cpu {

enum class Capability { Default, AVX2 };

// CLEAR_NATIVE_CPU_CAPABILITY=default in the environment forces the baseline
// build (used by the tests to check both bodies).
inline Capability cpu_capability() {
  static const Capability cap = [] {
    const char* env = std::getenv("CLEAR_NATIVE_CPU_CAPABILITY");
    if (env && std::strcmp(env, "default") == 0) return Capability::Default;
#if defined(CLEAR_NATIVE_HAVE_AVX2) && (defined(__x86_64__) || defined(_M_X64))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
      return Capability::AVX2;
#endif
    return Capability::Default;
  }();
  return cap;
}

inline const char* cpu_capability_name() {
  return cpu_capability() == Capability::AVX2 ? "avx2" : "default";
}

// Declares `fn` in both capability namespaces and defines a dispatching
// wrapper clear_native::cpu::fn.
#if defined(CLEAR_NATIVE_HAVE_AVX2)
#define CN_CPU_DISPATCH(ret, fn, params, args)                               \
  namespace DEFAULT { ret fn params; }                                       \
  namespace AVX2 { ret fn params; }                                          \
  inline ret fn##_dispatch params {                                          \
    return cpu_capability() == Capability::AVX2 ? AVX2::fn args : DEFAULT::fn args; \
  }
#else
#define CN_CPU_DISPATCH(ret, fn, params, args) \
  namespace DEFAULT { ret fn params; }         \
  inline ret fn##_dispatch params { return DEFAULT::fn args; }
#endif

}  // namespace clear_native::cpu

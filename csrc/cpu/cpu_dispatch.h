// Run-time choice between kernel bodies compiled for baseline x86-64, for
// AVX2+FMA and for AVX-512 (see CMakeLists.txt: csrc/cpu/simd/*.cpp are
// compiled once per capability, into namespaces clear_native::cpu::DEFAULT /
// AVX2 / AVX512).
#pragma once

#include <cstdlib>
#include <cstring>

namespace clear_native::cpu {

enum class Capability { Default, AVX2, AVX512 };

// CLEAR_NATIVE_CPU_CAPABILITY=default (or avx2) in the environment caps the
// body at the baseline (or AVX2) build; the tests use it to check every body.
inline Capability cpu_capability() {
  static const Capability cap = [] {
    const char* env = std::getenv("CLEAR_NATIVE_CPU_CAPABILITY");
    if (env && std::strcmp(env, "default") == 0) return Capability::Default;
#if defined(CLEAR_NATIVE_HAVE_AVX2) && (defined(__x86_64__) || defined(_M_X64))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
#if defined(CLEAR_NATIVE_HAVE_AVX512)
      if (!(env && std::strcmp(env, "avx2") == 0) && __builtin_cpu_supports("avx512f") &&
          __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
          __builtin_cpu_supports("avx512dq"))
        return Capability::AVX512;
#endif
      return Capability::AVX2;
    }
#endif
    return Capability::Default;
  }();
  return cap;
}

inline const char* cpu_capability_name() {
  switch (cpu_capability()) {
    case Capability::AVX512: return "avx512";
    case Capability::AVX2: return "avx2";
    default: return "default";
  }
}

// Declares `fn` in each capability namespace and defines a dispatching
// wrapper clear_native::cpu::fn.
#if defined(CLEAR_NATIVE_HAVE_AVX512)
#define CN_CPU_DISPATCH(ret, fn, params, args)                                        \
  namespace DEFAULT { ret fn params; }                                                \
  namespace AVX2 { ret fn params; }                                                   \
  namespace AVX512 { ret fn params; }                                                 \
  inline ret fn##_dispatch params {                                                   \
    switch (cpu_capability()) {                                                       \
      case Capability::AVX512: return AVX512::fn args;                                \
      case Capability::AVX2: return AVX2::fn args;                                    \
      default: return DEFAULT::fn args;                                               \
    }                                                                                 \
  }
#elif defined(CLEAR_NATIVE_HAVE_AVX2)
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

// Portability macros shared by the CPU and CUDA builds.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define CN_HOST_DEVICE __host__ __device__
#define CN_INLINE __host__ __device__ __forceinline__
#else
#define CN_HOST_DEVICE
#define CN_INLINE inline __attribute__((always_inline))
#endif

// CUDA kernel of the dominance operator: one thread per pixel, classes looped
// in order, the update shared with the CPU kernel (dominance_element.h). For
// NCHW input, threads of a warp read consecutive pixels of one class row
// (coalesced).
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#include "cuda/launch.cuh"
#include "dominance.h"
#include "dominance_element.h"
#include "flag_dispatch.h"

namespace clear_native::cuda {
namespace {

template <typename T, bool kOrdered, bool kRunnerUp, bool kWeakest>
__global__ void dominance_cuda_kernel(DominanceArgs a) {
  using A = typename AccType<T>::type;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t plane = a.N * a.S;
  if (idx >= plane) return;
  const int64_t n = idx / a.S, p = idx % a.S;
  const T* x = static_cast<const T*>(a.responses) + n * a.stride_n + p * a.stride_s;
  const A* sv = static_cast<const A*>(a.state_values);
  A v1, v2, vm;
  int32_t i1, i2, im;
  load_slots<kOrdered>(sv, a.state_indices, plane, idx, v1, i1, v2, i2, vm, im);
  for (int64_t c = 0; c < a.C; ++c) {
    const A v = static_cast<A>(x[c * a.stride_c]);
    dominance_update<kOrdered, kRunnerUp, kWeakest>(v1, i1, v2, i2, vm, im, v,
                                          static_cast<int32_t>(a.class_offset + c));
  }
  A* ov = static_cast<A*>(a.out_values);
  store_slots<kOrdered>(ov, a.out_indices, plane, idx, v1, i1, v2, i2, vm, im);
  const int64_t tc = a.target != nullptr ? a.target[n] - a.class_offset : -1;
  A tv;
  if (tc >= 0 && tc < a.C)
    tv = static_cast<A>(x[tc * a.stride_c]);
  else if (sv != nullptr)
    tv = sv[kTargetValue * plane + idx];
  else
    tv = std::numeric_limits<A>::quiet_NaN();
  ov[kTargetValue * plane + idx] = tv;
}

template <typename T, bool O, bool R, bool W>
void launch(const DominanceArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = a.N * a.S;
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  dominance_cuda_kernel<T, O, R, W><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
}

template <typename T>
void launch_typed(const DominanceArgs& a, cudaStream_t stream) {
  dispatch_dominance_flags(a.ordered, a.runner_up, a.weakest, [&](auto o, auto r, auto w) {
    launch<T, decltype(o)::value, decltype(r)::value, decltype(w)::value>(a, stream);
  });
}

}  // namespace

void dominance_kernel(const DominanceArgs& a, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  dispatch_response_dtype(a.dtype, "dominance", [&](auto t) { launch_typed<decltype(t)>(a, stream); });
  check_launch("dominance");
}

}  // namespace clear_native::cuda

// CUDA kernel of the unpool_deconv operator: one thread per (pooled signal, input
// channel), so that the threads of a warp handle consecutive input channels of one
// switch: they read the same signal and switch (broadcast) and consecutive weights.
// Zero signals (about half after a ReLU rule) leave the whole warp idle at once
// when C_in >= 32. The per-switch math is the CPU kernel's (unpool_deconv_element.h).
// Updates meet in atomicAdd, so the summation order (and the last bits) may vary
// from run to run, as in torch's own CUDA max-unpool and scatter-add.
#include <algorithm>
#include <cstdint>

#include <cuda_runtime.h>

#include "cuda/launch.cuh"
#include "unpool_deconv.h"
#include "unpool_deconv_element.h"

namespace clear_native::cuda {
namespace {

template <typename T>
__global__ void unpool_deconv_cuda_kernel(UnpoolDeconvArgs a) {
  const int64_t total = a.N * a.C * a.P * a.Cin;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ci = t % a.Cin, e = t / a.Cin;  // e: (n, c, q) flat
    const int64_t n = e / (a.C * a.P), c = (e / a.P) % a.C;
    const T* pooled = static_cast<const T*>(a.pooled);
    const T v = unpool_rule<T>(a.rule, static_cast<const T*>(a.grad)[e], pooled ? pooled[e] : T(0));
    const int64_t f = a.indices[e];
    if (v == T(0) || f < 0 || f >= a.Ho * a.Wo) continue;
    const int64_t y = switch_row(f, a.Wo), x = f - y * a.Wo;
    const T* w = static_cast<const T*>(a.weight) + c * a.kh * a.kw * a.Cin + ci;
    T* out = static_cast<T*>(a.out) + (n * a.Cin + ci) * a.Hin * a.Win;
    for_each_tap(a, y, x, [&](int64_t tap, int64_t pixel) { atomicAdd(out + pixel, v * w[tap * a.Cin]); });
  }
}

template <typename T>
__global__ void rectify_cuda_kernel(T* out, int64_t total) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[t] = rectify_value(out[t]);
}

template <typename T>
void launch(const UnpoolDeconvArgs& a, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = a.N * a.C * a.P * a.Cin;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  unpool_deconv_cuda_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(a);
  if (a.rectify) {
    const int64_t n = a.N * a.Cin * a.Hin * a.Win;
    const int64_t rblocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20);
    rectify_cuda_kernel<T><<<static_cast<unsigned>(rblocks), kThreads, 0, stream>>>(static_cast<T*>(a.out), n);
  }
}

}  // namespace

void unpool_deconv_kernel(const UnpoolDeconvArgs& a, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const size_t bytes = static_cast<size_t>(a.N * a.Hin * a.Win * a.Cin) *
                       (a.dtype == torch::headeronly::ScalarType::Double ? sizeof(double) : sizeof(float));
  if (cudaMemsetAsync(a.out, 0, bytes, stream) != cudaSuccess) check_launch("unpool_deconv");
  if (a.dtype == torch::headeronly::ScalarType::Double) launch<double>(a, stream);
  else launch<float>(a, stream);
  check_launch("unpool_deconv");
}

}  // namespace clear_native::cuda

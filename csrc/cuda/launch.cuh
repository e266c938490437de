// Host-side helpers shared by the CUDA kernels' launchers.
#pragma once

#include <stdexcept>
#include <string>

#include <cuda_runtime.h>

#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

namespace clear_native::cuda {

// Calls fn(T{}) with T the C++ type of a response dtype (float32/64, float16, bfloat16).
template <typename Fn>
void dispatch_response_dtype(torch::headeronly::ScalarType dt, const char* op, Fn&& fn) {
  using torch::headeronly::ScalarType;
  switch (dt) {
    case ScalarType::Float: fn(float{}); break;
    case ScalarType::Double: fn(double{}); break;
    case ScalarType::Half: fn(torch::headeronly::Half{}); break;
    case ScalarType::BFloat16: fn(torch::headeronly::BFloat16{}); break;
    default: throw std::runtime_error(std::string(op) + " (CUDA): unsupported dtype");
  }
}

// Throws if the last kernel launch failed.
inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(op) + " (CUDA): kernel launch failed: " + cudaGetErrorString(err));
}

}  // namespace clear_native::cuda

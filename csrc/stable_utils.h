// Small helpers over the LibTorch stable ABI shared by the operators' front ends.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

namespace clear_native {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

inline std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << "(";
  for (int64_t d = 0; d < t.dim(); ++d) s << (d ? ", " : "") << t.size(d);
  if (t.dim() == 1) s << ",";
  s << ")";
  return s.str();
}

inline bool is_float_type(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half ||
         t == ScalarType::BFloat16;
}

// float for half types, the type itself otherwise.
inline ScalarType acc_type(ScalarType t) {
  return (t == ScalarType::Half || t == ScalarType::BFloat16) ? ScalarType::Float : t;
}

inline std::vector<int64_t> sizes_vec(const Tensor& t) {
  std::vector<int64_t> v(t.dim());
  for (int64_t d = 0; d < t.dim(); ++d) v[d] = t.size(d);
  return v;
}

inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cuda() == b.is_cuda() && a.get_device() == b.get_device();
}

inline std::string device_str(const Tensor& t) {
  if (t.is_cpu()) return "cpu";
  std::ostringstream s;
  s << (t.is_cuda() ? "cuda:" : "device:") << static_cast<int>(t.get_device());
  return s.str();
}

}  // namespace clear_native

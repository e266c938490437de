// Small helpers over the LibTorch stable ABI shared by the operators' front ends.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/device.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/csrc/stable/version.h>
#include <torch/headeronly/core/DeviceType.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

namespace clear_native {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// The message of a failed check: its parts streamed in order (strings, numbers).
template <typename... Args>
inline std::string cat_message(const Args&... args) {
  std::ostringstream s;
  (s << ... << args);
  return s.str();
}

// Throws std::runtime_error (a Python RuntimeError) with the message alone: unlike
// STD_TORCH_CHECK, no function name and source path of the machine that built the extension.
#define CN_CHECK(cond, ...)                                                     \
  do {                                                                          \
    if (!(cond)) throw std::runtime_error(::clear_native::cat_message(__VA_ARGS__)); \
  } while (0)

// The product of non-negative sizes, or a clear error where it would overflow int64 (a
// tensor that large cannot be allocated anyway): sizes computed from user integers.
inline int64_t checked_numel(const char* op, const char* what, std::initializer_list<int64_t> dims) {
  int64_t n = 1;
  bool overflow = false;
  for (int64_t d : dims) {
    CN_CHECK(d >= 0, op, ": ", what, " has a negative size ", d);
    overflow = overflow || __builtin_mul_overflow(n, d, &n);
  }
  if (overflow) {
    std::ostringstream s;
    for (int64_t d : dims) s << (s.tellp() > 0 ? " x " : "") << d;
    CN_CHECK(false, op, ": ", what, " of ", s.str(), " elements is too large (over 2^63)");
  }
  return n;
}

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

// Device type and index (cpu and meta tensors both have index -1: comparing
// is_cuda() and the index alone would take a meta tensor for a CPU one).
inline bool same_device(const Tensor& a, const Tensor& b) { return a.device() == b.device(); }

inline const char* device_type_name(torch::headeronly::DeviceType t) {
  using torch::headeronly::DeviceType;
  switch (t) {
    case DeviceType::CPU: return "cpu";
    case DeviceType::CUDA: return "cuda";
    case DeviceType::Meta: return "meta";
    case DeviceType::HIP: return "hip";
    case DeviceType::MPS: return "mps";
    case DeviceType::XPU: return "xpu";
    case DeviceType::PrivateUse1: return "privateuseone";
    default: return "unknown";
  }
}

// As torch prints it: "cpu", "cuda:0", "meta".
inline std::string device_str(const Tensor& t) {
  const torch::stable::Device d = t.device();
  std::string s = device_type_name(d.type());
  if (d.has_index()) s += ":" + std::to_string(static_cast<int>(d.index()));
  return s;
}

// Every tensor argument of an operator must be on the device of its main input
// `ref` (named `ref_name`). The front ends check this before anything reads a
// pointer. (The dispatcher sends a call with any meta argument to the operator's
// fake kernel, not here: the fake kernels make the same check, _ops.check_devices.)
inline void check_device(const char* op, const char* name, const Tensor& t, const char* ref_name,
                         const Tensor& ref) {
  CN_CHECK(same_device(t, ref), op, ": ", name, " must be on the device of ", ref_name,
                  " (", device_str(ref), "), got ", device_str(t));
}

inline void check_device(const char* op, const char* name, const std::optional<Tensor>& t,
                         const char* ref_name, const Tensor& ref) {
  if (t.has_value()) check_device(op, name, *t, ref_name, ref);
}

#ifdef CLEAR_NATIVE_WITH_CUDA
#if TORCH_FEATURE_VERSION < (((0ULL + 2) << 56) | ((0ULL + 13) << 48))
// Source builds against torch < 2.13 only (the stable Stream has no nativeHandle
// there): the AOTI shim's query, which lives in libtorch_cuda (CMakeLists.txt links
// it for such builds).
extern "C" int32_t aoti_torch_get_current_cuda_stream(int32_t device_index, void** ret_stream);
#endif

// The raw cudaStream_t of torch's current stream on `device_index`.
inline void* current_cuda_stream(int32_t device_index) {
#if TORCH_FEATURE_VERSION >= (((0ULL + 2) << 56) | ((0ULL + 13) << 48))
  return torch::stable::accelerator::getCurrentStream(device_index).nativeHandle();
#else
  void* stream = nullptr;
  CN_CHECK(aoti_torch_get_current_cuda_stream(device_index, &stream) == 0,
                  "clear_native: could not get the current CUDA stream");
  return stream;
#endif
}
#endif  // CLEAR_NATIVE_WITH_CUDA

// Runs cpu() for a CPU tensor `t`, else cuda(stream) under a guard of t's device
// on its current CUDA stream. `cuda` must be a generic lambda (auto parameter):
// it is instantiated only in CUDA builds.
template <typename Cpu, typename Cuda>
void run_on_device(const char* op, const Tensor& t, Cpu&& cpu, Cuda&& cuda) {
  if (t.is_cpu()) {
    cpu();
    return;
  }
#ifdef CLEAR_NATIVE_WITH_CUDA
  torch::stable::accelerator::DeviceGuard guard(t.get_device_index());
  cuda(current_cuda_stream(t.get_device_index()));
#else
  CN_CHECK(false, op, ": clear_native was built without CUDA");
#endif
}

}  // namespace clear_native

// The extension's Python entry point: build information and non-tensor helpers.
// Tensors never cross this pybind11 boundary; operators go through the torch
// dispatcher (torch.ops.clear_native.*), registered by the other files of this .so.
#include <pybind11/pybind11.h>

#include <string>

#include <torch/csrc/stable/ops.h>

#include "cpu/cpu_dispatch.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "clear_native native core (registers torch.ops.clear_native.*)";
  m.def(
      "cuda_enabled",
      [] {
#ifdef CLEAR_NATIVE_WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "Whether this build contains the CUDA kernels.");
  m.def("cpu_capability", [] { return std::string(clear_native::cpu::cpu_capability_name()); },
        "SIMD level of the CPU kernels chosen at run time ('avx2' or 'default').");
  m.def("num_threads", [] { return torch::stable::get_num_threads(); },
        "Threads of torch's intra-op pool, used by the CPU kernels.");
  // Oldest torch this binary runs on (TORCH_TARGET_VERSION: major << 56 | minor << 48).
  constexpr unsigned long long kTarget = TORCH_TARGET_VERSION;
  m.attr("torch_target_version") =
      py::str(std::to_string((kTarget >> 56) & 0xff) + "." + std::to_string((kTarget >> 48) & 0xff));
}

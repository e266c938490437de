// clear_native::dominance -- schema, argument checks and device registration.
//
// Per pixel of per-class response maps (N, C, *spatial): best class and value,
// runner-up, weakest (argmin / min) and the target class's value, in one pass
// over the data; the result can be merged with a later chunk of classes
// (streaming). The math lives in dominance_element.h, the loops in
// cpu/simd/dominance_kernel.cpp and cuda/dominance_kernel.cu.
#include <optional>
#include <tuple>

#include <torch/csrc/stable/library.h>

#include "cpu/cpu_dispatch.h"
#include "dominance.h"
#include "dominance_element.h"
#include "stable_utils.h"
#include "streaming_io.h"

namespace clear_native {
namespace cpu {
CN_CPU_DISPATCH(void, dominance_kernel, (const DominanceArgs& a), (a))
}  // namespace cpu

namespace {

std::tuple<Tensor, Tensor> dominance_impl(const Tensor& responses,
                                          const std::optional<Tensor>& target,
                                          const std::optional<Tensor>& state_values,
                                          const std::optional<Tensor>& state_indices,
                                          int64_t class_offset, bool ordered, bool runner_up,
                                          bool weakest) {
  CN_CHECK(responses.dim() >= 3 && responses.dim() <= 5,
                  "dominance: responses must be (N, C, *spatial) with 1 to 3 spatial dims, got ",
                  responses.dim(), " dims of shape ", shape_str(responses));
  CN_CHECK(is_float_type(responses.scalar_type()),
                  "dominance: responses must be float32, float64, float16 or bfloat16, got ",
                  torch::headeronly::toString(responses.scalar_type()));
  const int64_t N = responses.size(0), C = responses.size(1);
  std::vector<int64_t> spatial;
  int64_t S = 1;
  for (int64_t d = 2; d < responses.dim(); ++d) {
    spatial.push_back(responses.size(d));
    S *= responses.size(d);
  }
  StreamingIO io = streaming_io("dominance", "responses", responses, spatial,
                                acc_type(responses.scalar_type()), class_offset, target,
                                state_values, state_indices);
  if (N == 0 || S == 0) return {io.values, io.indices};
  if (C == 0) {
    pass_through(io, state_values, state_indices);
    return {io.values, io.indices};
  }

  // (N, C, S) view of the responses: free for any layout whose spatial dims
  // merge (NCHW, channels_last, slices); a copy otherwise.
  Tensor x = torch::stable::reshape(responses, {N, C, S});
  DominanceArgs a;
  set_streaming_args(a, io, target, state_values, state_indices, class_offset, ordered, runner_up,
                     weakest);
  a.responses = x.const_data_ptr();
  a.dtype = responses.scalar_type();
  a.N = N;
  a.C = C;
  a.S = S;
  a.stride_n = x.stride(0);
  a.stride_c = x.stride(1);
  a.stride_s = x.stride(2);
  run_on_device("dominance", responses, [&] { cpu::dominance_kernel_dispatch(a); },
                [&](auto stream) { cuda::dominance_kernel(a, stream); });
  return {io.values, io.indices};
}

}  // namespace
}  // namespace clear_native

STABLE_TORCH_LIBRARY_FRAGMENT(clear_native, m) {
  m.def(
      "dominance(Tensor responses, Tensor? target=None, Tensor? state_values=None, "
      "Tensor? state_indices=None, int class_offset=0, bool ordered=False, bool runner_up=True, "
      "bool weakest=True) -> (Tensor values, Tensor indices)");
}

STABLE_TORCH_LIBRARY_IMPL(clear_native, CPU, m) {
  m.impl("dominance", TORCH_BOX(&clear_native::dominance_impl));
}

#ifdef CLEAR_NATIVE_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(clear_native, CUDA, m) {
  m.impl("dominance", TORCH_BOX(&clear_native::dominance_impl));
}
#endif

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
  STD_TORCH_CHECK(responses.dim() >= 3 && responses.dim() <= 5,
                  "dominance: responses must be (N, C, *spatial) with 1 to 3 spatial dims, got ",
                  responses.dim(), " dims of shape ", shape_str(responses));
  STD_TORCH_CHECK(is_float_type(responses.scalar_type()),
                  "dominance: responses must be float32, float64, float16 or bfloat16, got ",
                  torch::headeronly::toString(responses.scalar_type()));
  STD_TORCH_CHECK(class_offset >= 0, "dominance: class_offset must be >= 0, got ", class_offset);
  const int64_t N = responses.size(0), C = responses.size(1);
  STD_TORCH_CHECK(class_offset + C < (int64_t{1} << 31),
                  "dominance: class indices must fit in int32, got class_offset + C = ",
                  class_offset + C);
  std::vector<int64_t> spatial;
  int64_t S = 1;
  for (int64_t d = 2; d < responses.dim(); ++d) {
    spatial.push_back(responses.size(d));
    S *= responses.size(d);
  }
  if (target.has_value()) {
    const Tensor& t = *target;
    STD_TORCH_CHECK(t.dim() == 1 && t.size(0) == N, "dominance: target must be (N,) = (", N,
                    ",), got ", shape_str(t));
    STD_TORCH_CHECK(t.scalar_type() == ScalarType::Long, "dominance: target must be int64, got ",
                    torch::headeronly::toString(t.scalar_type()));
    STD_TORCH_CHECK(same_device(t, responses), "dominance: target is on ", device_str(t),
                    " but responses are on ", device_str(responses));
  }
  STD_TORCH_CHECK(state_values.has_value() == state_indices.has_value(),
                  "dominance: state_values and state_indices must be given together");
  std::vector<int64_t> vshape{kNumValuePlanes, N}, ishape{kNumIndexPlanes, N};
  vshape.insert(vshape.end(), spatial.begin(), spatial.end());
  ishape.insert(ishape.end(), spatial.begin(), spatial.end());
  const ScalarType acc = acc_type(responses.scalar_type());
  if (state_values.has_value()) {
    const Tensor& sv = *state_values;
    const Tensor& si = *state_indices;
    STD_TORCH_CHECK(sizes_vec(sv) == vshape && sizes_vec(si) == ishape,
                    "dominance: state is for a different shape: state values ", shape_str(sv),
                    " and indices ", shape_str(si), ", but responses ", shape_str(responses),
                    " need (", kNumValuePlanes, ", N, *spatial) and (", kNumIndexPlanes,
                    ", N, *spatial)");
    STD_TORCH_CHECK(sv.scalar_type() == acc && si.scalar_type() == ScalarType::Long,
                    "dominance: state dtypes must be ", torch::headeronly::toString(acc),
                    " and int64, got ", torch::headeronly::toString(sv.scalar_type()), " and ",
                    torch::headeronly::toString(si.scalar_type()));
    STD_TORCH_CHECK(same_device(sv, responses) && same_device(si, responses),
                    "dominance: state is on ", device_str(sv), " but responses are on ",
                    device_str(responses));
  }

  Tensor out_v = torch::stable::new_empty(responses, vshape, acc);
  Tensor out_i = torch::stable::new_empty(responses, ishape, ScalarType::Long);
  if (N == 0 || S == 0) return {out_v, out_i};
  if (C == 0) {
    // Nothing to merge: the state passes through (or starts empty).
    if (state_values.has_value()) {
      torch::stable::copy_(out_v, *state_values);
      torch::stable::copy_(out_i, *state_indices);
    } else {
      torch::stable::fill_(out_v, std::numeric_limits<double>::quiet_NaN());
      torch::stable::fill_(out_i, -1);
    }
    return {out_v, out_i};
  }

  // (N, C, S) view of the responses: free for any layout whose spatial dims
  // merge (NCHW, channels_last, slices); a copy otherwise.
  Tensor x = torch::stable::reshape(responses, {N, C, S});
  std::optional<Tensor> tgt, sv, si;
  if (target.has_value()) tgt = torch::stable::contiguous(*target);
  if (state_values.has_value()) {
    sv = torch::stable::contiguous(*state_values);
    si = torch::stable::contiguous(*state_indices);
  }

  DominanceArgs a;
  a.responses = x.const_data_ptr();
  a.dtype = responses.scalar_type();
  a.N = N;
  a.C = C;
  a.S = S;
  a.stride_n = x.stride(0);
  a.stride_c = x.stride(1);
  a.stride_s = x.stride(2);
  a.class_offset = class_offset;
  a.target = tgt ? static_cast<const int64_t*>(tgt->const_data_ptr()) : nullptr;
  a.state_values = sv ? sv->const_data_ptr() : nullptr;
  a.state_indices = si ? static_cast<const int64_t*>(si->const_data_ptr()) : nullptr;
  a.out_values = out_v.mutable_data_ptr();
  a.out_indices = static_cast<int64_t*>(out_i.mutable_data_ptr());
  a.ordered = ordered || !state_values.has_value();
  a.runner_up = runner_up;
  a.weakest = weakest;

  if (responses.is_cpu()) {
    cpu::dominance_kernel_dispatch(a);
  } else {
#ifdef CLEAR_NATIVE_WITH_CUDA
    torch::stable::accelerator::DeviceGuard guard(responses.get_device_index());
    cuda::dominance_kernel(a, current_cuda_stream(responses.get_device_index()));
#else
    STD_TORCH_CHECK(false, "dominance: clear_native was built without CUDA");
#endif
  }
  return {out_v, out_i};
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

// Front-end half of streaming.h (host only): checks of the target and state
// arguments, the output planes, and the kernels' StreamingArgs, shared by the
// dominance and upsample_dominance operators.
#pragma once

#include <limits>
#include <optional>
#include <vector>

#include "dominance_element.h"
#include "stable_utils.h"
#include "streaming.h"

namespace clear_native {

struct StreamingIO {
  // Fresh outputs: (4, N, *spatial) values in the accumulation type and
  // (3, N, *spatial) int64 indices.
  Tensor values, indices;
  // Contiguous inputs (set by contiguous_inputs()).
  std::optional<Tensor> target, state_values, state_indices;
};

// Checks the devices of the target and the state, class_offset, the (N,) int64
// target and the state against `ref`
// (named `ref_name` in messages; its (N, C, ...) gives N and C, `spatial` the
// output's spatial sizes) and allocates the outputs.
inline StreamingIO streaming_io(const char* op, const char* ref_name, const Tensor& ref,
                                const std::vector<int64_t>& spatial, ScalarType acc,
                                int64_t class_offset, const std::optional<Tensor>& target,
                                const std::optional<Tensor>& state_values,
                                const std::optional<Tensor>& state_indices) {
  const int64_t N = ref.size(0), C = ref.size(1);
  check_device(op, "target", target, ref_name, ref);
  check_device(op, "state_values", state_values, ref_name, ref);
  check_device(op, "state_indices", state_indices, ref_name, ref);
  CN_CHECK(class_offset >= 0, op, ": class_offset must be >= 0, got ", class_offset);
  CN_CHECK(class_offset < (int64_t{1} << 31) - C,  // C is a tensor size: no overflow
           op, ": class indices must fit in int32, got class_offset ", class_offset, " + C ", C);
  if (target.has_value()) {
    const Tensor& t = *target;
    CN_CHECK(t.dim() == 1 && t.size(0) == N, op, ": target must be (N,) = (", N,
                    ",), got ", shape_str(t));
    CN_CHECK(t.scalar_type() == ScalarType::Long, op, ": target must be int64, got ",
                    torch::headeronly::toString(t.scalar_type()));
  }
  CN_CHECK(state_values.has_value() == state_indices.has_value(),
                  op, ": state_values and state_indices must be given together");
  std::vector<int64_t> vshape{kNumValuePlanes, N}, ishape{kNumIndexPlanes, N};
  vshape.insert(vshape.end(), spatial.begin(), spatial.end());
  ishape.insert(ishape.end(), spatial.begin(), spatial.end());
  if (state_values.has_value()) {
    const Tensor& sv = *state_values;
    const Tensor& si = *state_indices;
    CN_CHECK(sizes_vec(sv) == vshape && sizes_vec(si) == ishape,
                    op, ": state is for a different shape: state values ", shape_str(sv),
                    " and indices ", shape_str(si), ", but ", ref_name, " ", shape_str(ref),
                    " need (", kNumValuePlanes, ", N, *spatial) and (", kNumIndexPlanes,
                    ", N, *spatial)");
    CN_CHECK(sv.scalar_type() == acc && si.scalar_type() == ScalarType::Long,
                    op, ": state dtypes must be ", torch::headeronly::toString(acc),
                    " and int64, got ", torch::headeronly::toString(sv.scalar_type()), " and ",
                    torch::headeronly::toString(si.scalar_type()));
  }
  int64_t planes = 1;
  for (int64_t d : spatial) planes = checked_numel(op, "the output", {planes, d});
  checked_numel(op, "the output", {kNumValuePlanes + kNumIndexPlanes, N, planes});
  return {torch::stable::new_empty(ref, vshape, acc),
          torch::stable::new_empty(ref, ishape, ScalarType::Long), std::nullopt, std::nullopt,
          std::nullopt};
}

// No classes in this chunk: the outputs are the state (or empty slots).
inline void pass_through(StreamingIO& io, const std::optional<Tensor>& state_values,
                         const std::optional<Tensor>& state_indices) {
  if (state_values.has_value()) {
    torch::stable::copy_(io.values, *state_values);
    torch::stable::copy_(io.indices, *state_indices);
  } else {
    torch::stable::fill_(io.values, std::numeric_limits<double>::quiet_NaN());
    torch::stable::fill_(io.indices, -1);
  }
}

// Contiguous target / state and the kernels' StreamingArgs.
inline void set_streaming_args(StreamingArgs& a, StreamingIO& io, const std::optional<Tensor>& target,
                               const std::optional<Tensor>& state_values,
                               const std::optional<Tensor>& state_indices, int64_t class_offset,
                               bool ordered, bool runner_up, bool weakest) {
  if (target.has_value()) io.target = torch::stable::contiguous(*target);
  if (state_values.has_value()) {
    io.state_values = torch::stable::contiguous(*state_values);
    io.state_indices = torch::stable::contiguous(*state_indices);
  }
  a.class_offset = class_offset;
  a.target = io.target ? static_cast<const int64_t*>(io.target->const_data_ptr()) : nullptr;
  a.state_values = io.state_values ? io.state_values->const_data_ptr() : nullptr;
  a.state_indices =
      io.state_indices ? static_cast<const int64_t*>(io.state_indices->const_data_ptr()) : nullptr;
  a.out_values = io.values.mutable_data_ptr();
  a.out_indices = static_cast<int64_t*>(io.indices.mutable_data_ptr());
  // Without a state every slot is empty: the chunk is trivially ordered.
  a.ordered = ordered || !state_values.has_value();
  a.runner_up = runner_up;
  a.weakest = weakest;
}

}  // namespace clear_native

// clear_native::upsample_dominance -- schema, argument checks, coordinate
// tables and device registration.
//
// Dominance (best / runner-up / weakest class, target value; streaming state
// as in clear_native::dominance) of F.interpolate(maps, size, mode,
// align_corners) without materialising the upsampled (N, C, H, W) tensor.
// clear_native.project_dominance computes the low-resolution class maps with
// torch's matmul and calls this operator.
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <torch/csrc/stable/library.h>

#include "cpu/cpu_dispatch.h"
#include "dominance_element.h"
#include "upsample_dominance.h"
#include "upsample_dominance_element.h"
#include "stable_utils.h"
#include "streaming_io.h"

namespace clear_native {
namespace cpu {
CN_CPU_DISPATCH(void, upsample_dominance_kernel, (const UpsampleDominanceArgs& a), (a))
}  // namespace cpu

namespace {

// Start of each maximal run of equal keys, plus the end.
std::vector<int64_t> run_starts(const std::vector<int64_t>& k0, const std::vector<int64_t>& k1) {
  std::vector<int64_t> starts;
  for (size_t i = 0; i < k0.size(); ++i)
    if (i == 0 || k0[i] != k0[i - 1] || k1[i] != k1[i - 1]) starts.push_back(static_cast<int64_t>(i));
  starts.push_back(static_cast<int64_t>(k0.size()));
  return starts;
}

template <typename A>
void axis_table(int64_t in, int64_t out, InterpMode mode, bool align_corners,
                std::vector<int64_t>& i0, std::vector<int64_t>& i1, std::vector<A>& l0,
                std::vector<A>& l1) {
  i0.resize(out), i1.resize(out), l0.resize(out), l1.resize(out);
  for (int64_t d = 0; d < out; ++d) {
    if (mode == InterpMode::kNearest) {
      i0[d] = i1[d] = nearest_source(d, in, out);
      l0[d] = A(1), l1[d] = A(0);
    } else {
      bilinear_source<A>(d, in, out, align_corners, i0[d], i1[d], l0[d], l1[d]);
    }
  }
}

Tensor cpu_tensor(ScalarType dtype, int64_t n) {
  return torch::stable::empty({n}, dtype, std::nullopt,
                              torch::stable::Device(torch::headeronly::DeviceType::CPU));
}

std::tuple<Tensor, Tensor> upsample_dominance_impl(
    const Tensor& maps, std::vector<int64_t> size, std::string mode_name, bool align_corners,
    const std::optional<Tensor>& target, const std::optional<Tensor>& state_values,
    const std::optional<Tensor>& state_indices, int64_t class_offset, bool ordered,
    bool runner_up, bool weakest, int64_t prune) {
  CN_CHECK(maps.dim() == 4, "upsample_dominance: maps must be (N, C, h, w), got ",
                  maps.dim(), " dims of shape ", shape_str(maps));
  const ScalarType dt = maps.scalar_type();
  CN_CHECK(dt == ScalarType::Float || dt == ScalarType::Double,
                  "upsample_dominance: maps must be float32 or float64, got ",
                  torch::headeronly::toString(dt));
  CN_CHECK(size.size() == 2, "upsample_dominance: size must be two positive ints (H, W), got ", size.size(),
           " values");
  CN_CHECK(size[0] > 0 && size[1] > 0 && size[0] < (int64_t{1} << 31) && size[1] < (int64_t{1} << 31),
           "upsample_dominance: size must be two ints in [1, 2^31 - 1], got (", size[0], ", ", size[1], ")");
  CN_CHECK(mode_name == "bilinear" || mode_name == "nearest",
                  "upsample_dominance: mode must be 'bilinear' or 'nearest', got '", mode_name, "'");
  CN_CHECK(prune >= 0 && prune <= 2, "upsample_dominance: prune must be 0, 1 or 2, got ", prune);
  const int64_t N = maps.size(0), C = maps.size(1), h = maps.size(2), w = maps.size(3);
  const int64_t H = size[0], W = size[1];
  CN_CHECK(N == 0 || C == 0 || (h > 0 && w > 0),
                  "upsample_dominance: maps must have a non-empty spatial size, got ", shape_str(maps));
  StreamingIO io = streaming_io("upsample_dominance", "maps", maps, {H, W}, dt, class_offset, target,
                                state_values, state_indices);
  if (N == 0) return {io.values, io.indices};
  if (C == 0) {
    pass_through(io, state_values, state_indices);
    return {io.values, io.indices};
  }

  const InterpMode mode = mode_name == "nearest" ? InterpMode::kNearest : InterpMode::kBilinear;
  // Coordinate tables, computed once on the host in the maps' precision.
  std::vector<int64_t> r0, r1, c0, c1;
  Tensor ftab = cpu_tensor(dt, 2 * H + 2 * W);
  auto fill_tables = [&](auto zero) {
    using F = decltype(zero);
    std::vector<F> rl0, rl1, cw0, cw1;
    axis_table<F>(h, H, mode, align_corners, r0, r1, rl0, rl1);
    axis_table<F>(w, W, mode, align_corners, c0, c1, cw0, cw1);
    F* f = static_cast<F*>(ftab.mutable_data_ptr());
    for (const auto* v : {&rl0, &rl1, &cw0, &cw1}) f = std::copy(v->begin(), v->end(), f);
  };
  if (dt == ScalarType::Float) fill_tables(0.0f);
  else fill_tables(0.0);
  const std::vector<int64_t> rb = run_starts(r0, r1), cb = run_starts(c0, c1);
  const int64_t nrb = static_cast<int64_t>(rb.size()) - 1, ncb = static_cast<int64_t>(cb.size()) - 1;
  Tensor itab = cpu_tensor(ScalarType::Long, 2 * H + 2 * W + nrb + 1 + ncb + 1);
  {
    int64_t* p = static_cast<int64_t*>(itab.mutable_data_ptr());
    const std::vector<const std::vector<int64_t>*> parts{&r0, &r1, &c0, &c1, &rb, &cb};
    for (const auto* v : parts) p = std::copy(v->begin(), v->end(), p);
  }
  if (!maps.is_cpu()) {
    ftab = torch::stable::to(ftab, maps.device());
    itab = torch::stable::to(itab, maps.device());
  }

  // The CPU kernel reads any layout (the class-major maps that
  // project_dominance's GEMM leaves need no copy); CUDA's wants NCHW.
  Tensor x = maps.is_cpu() ? maps : torch::stable::contiguous(maps);
  const int64_t* it = static_cast<const int64_t*>(itab.const_data_ptr());
  const char* ft = static_cast<const char*>(ftab.const_data_ptr());
  const size_t es = ftab.element_size();

  UpsampleDominanceArgs a;
  set_streaming_args(a, io, target, state_values, state_indices, class_offset, ordered, runner_up,
                     weakest);
  a.maps = x.const_data_ptr();
  a.dtype = dt;
  a.N = N, a.C = C, a.h = h, a.w = w, a.H = H, a.W = W;
  a.stride_n = x.stride(0), a.stride_c = x.stride(1), a.stride_h = x.stride(2), a.stride_w = x.stride(3);
  a.mode = mode;
  a.align_corners = align_corners;
  a.row0 = it, a.row1 = it + H, a.col0 = it + 2 * H, a.col1 = it + 2 * H + W;
  a.row_block_start = it + 2 * H + 2 * W;
  a.col_block_start = a.row_block_start + nrb + 1;
  a.num_row_blocks = nrb, a.num_col_blocks = ncb;
  a.row_l0 = ft, a.row_l1 = ft + es * H, a.col_w0 = ft + es * 2 * H, a.col_w1 = ft + es * (2 * H + W);
  a.prune = prune;

  run_on_device("upsample_dominance", maps, [&] { cpu::upsample_dominance_kernel_dispatch(a); },
                [&](auto stream) { cuda::upsample_dominance_kernel(a, stream); });
  return {io.values, io.indices};
}

}  // namespace
}  // namespace clear_native

STABLE_TORCH_LIBRARY_FRAGMENT(clear_native, m) {
  m.def(
      "upsample_dominance(Tensor maps, int[] size, str mode=\"bilinear\", "
      "bool align_corners=False, Tensor? target=None, Tensor? state_values=None, "
      "Tensor? state_indices=None, int class_offset=0, bool ordered=False, "
      "bool runner_up=True, bool weakest=True, int prune=1) -> (Tensor values, Tensor indices)");
}

STABLE_TORCH_LIBRARY_IMPL(clear_native, CPU, m) {
  m.impl("upsample_dominance", TORCH_BOX(&clear_native::upsample_dominance_impl));
}

#ifdef CLEAR_NATIVE_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(clear_native, CUDA, m) {
  m.impl("upsample_dominance", TORCH_BOX(&clear_native::upsample_dominance_impl));
}
#endif

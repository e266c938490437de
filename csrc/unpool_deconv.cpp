// clear_native::unpool_deconv -- schema, argument checks and device registration.
//
// One deconvnet layer (Zeiler & Fergus) in one pass: the backward signal at the
// output of conv -> ReLU -> max-pool is un-pooled through the forward switches,
// passed through the ReLU's rule (gradient, deconvnet or guided) and projected by
// the transposed convolution onto the conv's input:
//
//   conv_transpose2d(rule(max_unpool(grad, indices)), weight, stride, padding, dilation)
//
// optionally rectified (rectify_output: the deconvnet rule of a ReLU right below the conv)
//
// for pooling windows that do not overlap (each conv output has at most one
// switch). The output is (N, C_in, H_in, W_in), contiguous. The per-switch math lives in unpool_deconv_element.h, the loops in
// cpu/simd/unpool_deconv_kernel.cpp and cuda/unpool_deconv_kernel.cu.
#include <algorithm>
#include <cstdint>
#include <optional>
#include <vector>

#include <torch/csrc/stable/library.h>

#include "cpu/cpu_dispatch.h"
#include "stable_utils.h"
#include "unpool_deconv.h"
#include "unpool_deconv_element.h"

namespace clear_native {
namespace cpu {
CN_CPU_DISPATCH(bool, unpool_deconv_kernel, (const UnpoolDeconvArgs& a, int64_t* invalid), (a, invalid))
}  // namespace cpu

namespace {

// Sizes a 2-D convolution can have: every size below is computed from these in int64
// without overflow ((2^31)^2 < 2^63).
constexpr int64_t kMaxSize = (int64_t{1} << 31) - 1;

void check_pair(const std::vector<int64_t>& v, const char* name,
                int64_t minimum) {
  CN_CHECK(v.size() == 2, "unpool_deconv: ", name, " must have 2 values, got ", v.size());
  CN_CHECK(v[0] >= minimum && v[1] >= minimum && v[0] <= kMaxSize && v[1] <= kMaxSize,
           "unpool_deconv: ", name, " must be in [", minimum, ", 2^31 - 1], got (", v[0], ", ", v[1], ")");
}

Tensor unpool_deconv_impl(const Tensor& grad, const Tensor& indices, const std::optional<Tensor>& pooled,
                          const Tensor& weight, std::vector<int64_t> input_size,
                          std::vector<int64_t> stride,
                          std::vector<int64_t> padding,
                          std::vector<int64_t> dilation, int64_t rule, bool rectify_output) {
  check_device("unpool_deconv", "indices", indices, "grad", grad);
  check_device("unpool_deconv", "pooled", pooled, "grad", grad);
  check_device("unpool_deconv", "weight", weight, "grad", grad);
  CN_CHECK(grad.dim() == 4, "unpool_deconv: grad must be (N, C, H_pool, W_pool), got shape ",
                  shape_str(grad));
  CN_CHECK(grad.scalar_type() == ScalarType::Float || grad.scalar_type() == ScalarType::Double,
                  "unpool_deconv: grad must be float32 or float64, got ",
                  torch::headeronly::toString(grad.scalar_type()));
  CN_CHECK(sizes_vec(indices) == sizes_vec(grad), "unpool_deconv: indices must have grad's shape ",
                  shape_str(grad), ", got ", shape_str(indices));
  CN_CHECK(indices.scalar_type() == ScalarType::Long, "unpool_deconv: indices must be int64, got ",
                  torch::headeronly::toString(indices.scalar_type()));
  CN_CHECK(weight.dim() == 4 && weight.size(0) == grad.size(1),
                  "unpool_deconv: weight must be (C, C_in, kh, kw) with C = ", grad.size(1),
                  " (grad's channels), got shape ", shape_str(weight));
  CN_CHECK(weight.scalar_type() == grad.scalar_type(), "unpool_deconv: weight must be ",
                  torch::headeronly::toString(grad.scalar_type()), " like grad, got ",
                  torch::headeronly::toString(weight.scalar_type()));
  CN_CHECK(rule == kRuleGradient || rule == kRuleDeconvnet || rule == kRuleGuided,
                  "unpool_deconv: rule must be 0 (gradient), 1 (deconvnet) or 2 (guided), got ", rule);
  CN_CHECK(rule == kRuleDeconvnet || pooled.has_value(),
                  "unpool_deconv: the gradient and guided rules need the pooled output (pooled=None)");
  if (pooled.has_value()) {
    CN_CHECK(sizes_vec(*pooled) == sizes_vec(grad), "unpool_deconv: pooled must have grad's shape ",
                    shape_str(grad), ", got ", shape_str(*pooled));
    CN_CHECK(pooled->scalar_type() == grad.scalar_type(), "unpool_deconv: pooled must be ",
                    torch::headeronly::toString(grad.scalar_type()), " like grad, got ",
                    torch::headeronly::toString(pooled->scalar_type()));
  }
  check_pair(input_size, "input_size", 0);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);

  UnpoolDeconvArgs a;
  a.N = grad.size(0);
  a.C = grad.size(1);
  a.P = grad.size(2) * grad.size(3);
  a.Cin = weight.size(1);
  a.kh = weight.size(2);
  a.kw = weight.size(3);
  a.sh = stride[0], a.sw = stride[1];
  a.ph = padding[0], a.pw = padding[1];
  a.dh = dilation[0], a.dw = dilation[1];
  a.Hin = input_size[0], a.Win = input_size[1];
  CN_CHECK(a.kh <= kMaxSize && a.kw <= kMaxSize, "unpool_deconv: the kernel must be under 2^31, got ",
           shape_str(weight));
  a.Ho = (a.Hin + 2 * a.ph - a.dh * (a.kh - 1) - 1) / a.sh + 1;
  a.Wo = (a.Win + 2 * a.pw - a.dw * (a.kw - 1) - 1) / a.sw + 1;
  CN_CHECK(a.Ho >= 1 && a.Wo >= 1, "unpool_deconv: a ", a.kh, "x", a.kw,
                  " convolution with these stride, padding and dilation has no output for input_size (",
                  a.Hin, ", ", a.Win, ")");
  a.rule = static_cast<int>(rule);
  a.rectify = rectify_output;
  a.dtype = grad.scalar_type();

  checked_numel("unpool_deconv", "the output", {a.N, a.Cin, a.Hin, a.Win});
  // The CPU kernel accumulates blocks of up to 64 input channels over the zero-padded plane.
  const int64_t padded = checked_numel("unpool_deconv", "the padded input plane",
                                       {a.Hin + 2 * a.ph, a.Win + 2 * a.pw, std::min<int64_t>(a.Cin, 64)});
  CN_CHECK(padded <= (int64_t{1} << 31), "unpool_deconv: the zero-padded input plane (", a.Hin + 2 * a.ph, " x ",
           a.Win + 2 * a.pw, " for padding (", a.ph, ", ", a.pw, ")) is too large for the kernel's accumulator "
           "(at most 2^31 elements of up to 64 channels)");
  Tensor out = torch::stable::new_empty(grad, {a.N, a.Cin, a.Hin, a.Win});
  if (a.N == 0 || a.Hin * a.Win * a.Cin == 0) return out;
  if (a.C == 0 || a.P == 0) {
    torch::stable::zero_(out);
    return out;
  }
  Tensor g = torch::stable::contiguous(grad);
  Tensor idx = torch::stable::contiguous(indices);
  std::optional<Tensor> pool;
  if (pooled.has_value() && rule != kRuleDeconvnet) pool = torch::stable::contiguous(*pooled);
  // (C, C_in, kh, kw) -> (C, kh, kw, C_in): a tap's input channels side by side.
  Tensor w = torch::stable::contiguous(
      torch::stable::transpose(torch::stable::transpose(weight, 1, 2), 2, 3));
  a.grad = g.const_data_ptr();
  a.indices = static_cast<const int64_t*>(idx.const_data_ptr());
  a.pooled = pool.has_value() ? pool->const_data_ptr() : nullptr;
  a.weight = w.const_data_ptr();
  a.out = out.mutable_data_ptr();

  run_on_device(
      "unpool_deconv", grad,
      [&] {
        int64_t invalid = 0;
        CN_CHECK(cpu::unpool_deconv_kernel_dispatch(a, &invalid),
                        "unpool_deconv: indices must lie in [0, ", a.Ho * a.Wo,
                        ") (flat positions in the conv output plane ", a.Ho, "x", a.Wo, "), got ",
                        invalid);
      },
      [&](auto stream) { cuda::unpool_deconv_kernel(a, stream); });
  return out;
}

}  // namespace
}  // namespace clear_native

STABLE_TORCH_LIBRARY_FRAGMENT(clear_native, m) {
  m.def(
      "unpool_deconv(Tensor grad, Tensor indices, Tensor? pooled, Tensor weight, int[] input_size, "
      "int[] stride=[1, 1], int[] padding=[0, 0], int[] dilation=[1, 1], int rule=1, "
      "bool rectify_output=False) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(clear_native, CPU, m) {
  m.impl("unpool_deconv", TORCH_BOX(&clear_native::unpool_deconv_impl));
}

#ifdef CLEAR_NATIVE_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(clear_native, CUDA, m) {
  m.impl("unpool_deconv", TORCH_BOX(&clear_native::unpool_deconv_impl));
}
#endif

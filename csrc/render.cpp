// clear_native::render -- schema, argument checks and device registration.
//
// Fused CLEAR map rendering (paper eq. 6): from the dominant class and
// response of every pixel (and optionally the input image) to uint8 RGB
// (N, H, W, 3) in one pass: palette lookup, normalisation by a per-image scale,
// HSV value scaling and alpha overlay. The per-pixel math lives in
// render_element.h, the loops in cpu/simd/render_kernel.cpp and
// cuda/render_kernel.cu. Normalisation statistics (max, percentile) are
// computed by the Python wrapper and passed in as `scale`.
#include <optional>

#include <torch/csrc/stable/library.h>

#include "cpu/cpu_dispatch.h"
#include "render.h"
#include "render_element.h"
#include "stable_utils.h"

namespace clear_native {
namespace cpu {
CN_CPU_DISPATCH(void, render_kernel, (const RenderArgs& a), (a))
}  // namespace cpu

namespace {

Tensor render_impl(const Tensor& classes, const Tensor& responses, const Tensor& scale,
                   const Tensor& palette, const std::optional<Tensor>& image, double overlay,
                   double threshold, double brightness, bool grey, bool transparent) {
  check_device("render", "responses", responses, "classes", classes);
  check_device("render", "scale", scale, "classes", classes);
  check_device("render", "palette", palette, "classes", classes);
  check_device("render", "image", image, "classes", classes);
  CN_CHECK(classes.dim() == 3, "render: classes must be (N, H, W), got ", classes.dim(),
                  " dims of shape ", shape_str(classes));
  CN_CHECK(classes.scalar_type() == ScalarType::Long,
                  "render: classes must be int64, got ",
                  torch::headeronly::toString(classes.scalar_type()));
  CN_CHECK(sizes_vec(responses) == sizes_vec(classes),
                  "render: responses must have the shape of classes ", shape_str(classes),
                  ", got ", shape_str(responses));
  CN_CHECK(is_float_type(responses.scalar_type()),
                  "render: responses must be float32, float64, float16 or bfloat16, got ",
                  torch::headeronly::toString(responses.scalar_type()));
  const int64_t N = classes.size(0), H = classes.size(1), W = classes.size(2), S = H * W;
  CN_CHECK(scale.dim() == 1 && scale.size(0) == N, "render: scale must be (N,) = (", N,
                  ",), got ", shape_str(scale));
  CN_CHECK(scale.scalar_type() == ScalarType::Float, "render: scale must be float32, got ",
                  torch::headeronly::toString(scale.scalar_type()));
  CN_CHECK(palette.dim() == 2 && palette.size(1) == 3,
                  "render: palette must be (P, 3) RGB, got ", shape_str(palette));
  CN_CHECK(palette.scalar_type() == ScalarType::Byte,
                  "render: palette must be uint8, got ",
                  torch::headeronly::toString(palette.scalar_type()));
  CN_CHECK(overlay >= 0.0 && overlay <= 1.0, "render: overlay must lie in [0, 1], got ",
                  overlay);
  std::optional<Tensor> img;
  if (image.has_value()) {
    const Tensor& im = *image;
    CN_CHECK(im.dim() == 4 && (im.size(1) == 1 || im.size(1) == 3),
                    "render: image must be (N, 1 or 3, H, W), got ", shape_str(im));
    CN_CHECK(im.size(0) == N && im.size(2) == H && im.size(3) == W,
                    "render: image must be (", N, ", 1 or 3, ", H, ", ", W,
                    ") to match the maps, got ", shape_str(im));
    CN_CHECK(im.scalar_type() == ScalarType::Byte || is_float_type(im.scalar_type()),
                    "render: image must be uint8 or floating point, got ",
                    torch::headeronly::toString(im.scalar_type()));
    // The kernels read uint8 and float32 images in place; other float types
    // are converted once.
    img = (im.scalar_type() == ScalarType::Byte || im.scalar_type() == ScalarType::Float)
              ? im
              : torch::stable::to(im, ScalarType::Float);
  }

  Tensor out = torch::stable::new_empty(classes, {N, H, W, 3}, ScalarType::Byte);
  if (N == 0 || S == 0) return out;

  // (N, S) views: free for any layout whose spatial dims merge; a copy otherwise.
  Tensor cls = torch::stable::reshape(classes, {N, S});
  Tensor resp = torch::stable::reshape(responses, {N, S});
  Tensor sc = torch::stable::contiguous(scale);
  Tensor pal = torch::stable::contiguous(palette);

  RenderArgs a;
  a.N = N;
  a.S = S;
  a.classes = static_cast<const int64_t*>(cls.const_data_ptr());
  a.cls_stride_n = cls.stride(0);
  a.cls_stride_s = cls.stride(1);
  a.responses = resp.const_data_ptr();
  a.dtype = responses.scalar_type();
  a.resp_stride_n = resp.stride(0);
  a.resp_stride_s = resp.stride(1);
  a.scale = static_cast<const float*>(sc.const_data_ptr());
  a.palette = static_cast<const uint8_t*>(pal.const_data_ptr());
  a.P = pal.size(0);
  std::optional<Tensor> img3;
  if (img.has_value()) {
    img3 = torch::stable::reshape(*img, {N, img->size(1), S});
    a.image = img3->const_data_ptr();
    a.image_is_uint8 = img3->scalar_type() == ScalarType::Byte;
    a.image_channels = img3->size(1);
    a.img_stride_n = img3->stride(0);
    a.img_stride_c = img3->stride(1);
    a.img_stride_s = img3->stride(2);
  }
  // Without an image the map is drawn at full strength on black.
  a.alpha = img.has_value() ? static_cast<float>(overlay) : 1.0f;
  a.threshold = static_cast<float>(threshold);
  a.brightness = static_cast<float>(brightness);
  a.grey = grey;
  a.transparent = transparent;
  a.out = static_cast<uint8_t*>(out.mutable_data_ptr());

  run_on_device("render", classes, [&] { cpu::render_kernel_dispatch(a); },
                [&](auto stream) { cuda::render_kernel(a, stream); });
  return out;
}

}  // namespace
}  // namespace clear_native

STABLE_TORCH_LIBRARY_FRAGMENT(clear_native, m) {
  m.def(
      "render(Tensor classes, Tensor responses, Tensor scale, Tensor palette, Tensor? image=None, "
      "float overlay=0.5, float threshold=0.0, float brightness=1.0, bool grey=True, "
      "bool transparent=False) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(clear_native, CPU, m) {
  m.impl("render", TORCH_BOX(&clear_native::render_impl));
}

#ifdef CLEAR_NATIVE_WITH_CUDA
STABLE_TORCH_LIBRARY_IMPL(clear_native, CUDA, m) {
  m.impl("render", TORCH_BOX(&clear_native::render_impl));
}
#endif

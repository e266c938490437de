"""Loads the native extension and registers the fake (meta) kernels of its operators.

The operators live in ``torch.ops.clear_native``; their fake kernels let
``torch.compile(fullgraph=True)`` and ``torch.library.opcheck`` trace them.
"""
from __future__ import annotations

import torch  # noqa: F401  (torch must be loaded before the extension)

try:
    from clear_native import _C
except ImportError as exc:  # pragma: no cover - depends on how the package is installed
    import os

    raise ImportError(
        "clear_native: the native extension clear_native._C cannot be imported "
        f"(package at {os.path.dirname(__file__)}). If that folder is a source checkout, it "
        "shadows the installed package: run from another directory, or install in place with "
        "`pip install --no-build-isolation -e .`. Otherwise (re)install with "
        "`pip install --no-build-isolation .` against the torch you use.") from exc

NUM_VALUE_PLANES = 4  # top-1, top-2, min, target value
NUM_INDEX_PLANES = 3  # top-1, top-2, min class


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def check_devices(op: str, ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """Every tensor argument of an operator on the device of its main input ``ref``.

    The fake kernels' half of the operators' device check (csrc/stable_utils.h,
    ``check_device``, same message): the dispatcher sends any call with a meta
    tensor among its arguments to the fake kernel, so a meta argument next to
    CPU / CUDA ones would otherwise get uninitialised outputs instead of an error.
    All-meta calls and FakeTensor tracing (``torch.compile``) pass. ``None`` is skipped.
    """
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise RuntimeError(f"{op}: {name} must be on the device of {ref_name} ({ref.device}), "
                               f"got {t.device}")


def build_info() -> dict:
    """What this build of the extension contains: CUDA kernels, CPU SIMD level, threads."""
    return {
        "cuda": _C.cuda_enabled(),
        "cpu_capability": _C.cpu_capability(),
        "num_threads": _C.num_threads(),
        "torch_target_version": _C.torch_target_version,
        "torch_version": torch.__version__,
    }


def require_device_support(tensor: torch.Tensor, what: str) -> None:
    """Raises a clear error when a CUDA tensor meets a build without CUDA kernels."""
    if tensor.device.type == "cuda" and not _C.cuda_enabled():
        raise RuntimeError(
            f"{what}: got a CUDA tensor, but clear_native was built without CUDA; "
            "rebuild with CLEAR_NATIVE_CUDA=ON or move the input to the CPU")
    if tensor.device.type not in ("cpu", "cuda", "meta"):
        raise RuntimeError(f"{what}: expected a CPU or CUDA tensor, got device {tensor.device}")


# -- fake kernels (shapes, dtypes, devices) of every operator ---------------------------

@torch.library.register_fake("clear_native::dominance")
def _dominance_fake(responses, target=None, state_values=None, state_indices=None,
                    class_offset=0, ordered=False, runner_up=True, weakest=True):
    check_devices("dominance", "responses", responses, target=target, state_values=state_values,
                  state_indices=state_indices)
    n, spatial = responses.shape[0], responses.shape[2:]
    values = responses.new_empty((NUM_VALUE_PLANES, n, *spatial), dtype=_acc_dtype(responses.dtype))
    indices = responses.new_empty((NUM_INDEX_PLANES, n, *spatial), dtype=torch.int64)
    return values, indices


@torch.library.register_fake("clear_native::upsample_dominance")
def _upsample_dominance_fake(maps, size, mode="bilinear", align_corners=False, target=None,
                             state_values=None, state_indices=None, class_offset=0, ordered=False,
                             runner_up=True, weakest=True, prune=1):
    check_devices("upsample_dominance", "maps", maps, target=target, state_values=state_values,
                  state_indices=state_indices)
    n = maps.shape[0]
    values = maps.new_empty((NUM_VALUE_PLANES, n, size[0], size[1]))
    indices = maps.new_empty((NUM_INDEX_PLANES, n, size[0], size[1]), dtype=torch.int64)
    return values, indices


@torch.library.register_fake("clear_native::unpool_deconv")
def _unpool_deconv_fake(grad, indices, pooled, weight, input_size, stride=(1, 1), padding=(0, 0),
                        dilation=(1, 1), rule=1, rectify_output=False):
    check_devices("unpool_deconv", "grad", grad, indices=indices, pooled=pooled, weight=weight)
    return grad.new_empty((grad.shape[0], weight.shape[1], input_size[0], input_size[1]))


@torch.library.register_fake("clear_native::render")
def _render_fake(classes, responses, scale, palette, image=None, overlay=0.5, threshold=0.0,
                 brightness=1.0, grey=True, transparent=False):
    check_devices("render", "classes", classes, responses=responses, scale=scale, palette=palette,
                  image=image)
    n, h, w = classes.shape
    return classes.new_empty((n, h, w, 3), dtype=torch.uint8)

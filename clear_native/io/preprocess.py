"""What each image goes through before the model (``--preprocess``): torchvision's ImageNet
evaluation transform without torchvision (:class:`ImagenetPreprocess`), the choice of a
run's preprocess (:func:`resolve_preprocess`) and the conversion of any image to a
``(ch, H, W)`` float tensor (:func:`to_chw_float`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from clear_native.io.common import BatchError, _import_attr

if TYPE_CHECKING:
    from clear_native.io.models import LoadedModel
    from clear_native.io.sources import DataSource

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImagenetPreprocess:
    """torchvision's ImageNet evaluation transform, without torchvision:
    ``Resize(256)`` (shorter side to ``resize``, bilinear, antialiased), ``CenterCrop(224)``,
    ``ToTensor()`` and ``Normalize(IMAGENET_MEAN, IMAGENET_STD)``; returns ``(3, crop, crop)``
    float32. Grey images are repeated to 3 channels, an alpha channel is dropped.

    A PIL image (or a uint8 ``(H, W[, ch])`` array, made a PIL image) is resized by Pillow,
    as torchvision does for PIL images; a float array or a tensor (``(ch, H, W)``, float in
    [0, 1] or uint8) by ``torch.nn.functional.interpolate(antialias=True)``, as torchvision
    does for tensors. ``normalize=False`` gives the cropped image in [0, 1] (for display).
    """

    def __init__(self, resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 normalize: bool = True):
        self.resize, self.crop, self.normalize = int(resize), int(crop), normalize
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        return f"ImagenetPreprocess(resize={self.resize}, crop={self.crop}, normalize={self.normalize})"

    def _size(self, h: int, w: int) -> tuple[int, int]:
        """(H, W) with the shorter side ``resize`` (torchvision's rounding: int())."""
        if w <= h:
            return int(self.resize * h / w), self.resize
        return self.resize, int(self.resize * w / h)

    def _offsets(self, h: int, w: int) -> tuple[int, int]:
        return int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))

    def __call__(self, img) -> torch.Tensor:
        from PIL import Image

        if isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim in (2, 3) \
                and (img.ndim == 2 or img.shape[-1] in (1, 3, 4)):
            img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
        if isinstance(img, Image.Image):
            t = self._pil(img)
        else:
            t = self._tensor(img if isinstance(img, torch.Tensor) else to_chw_float(img))
        if self.normalize:
            mean = torch.tensor(self.mean, dtype=t.dtype).view(3, 1, 1)
            std = torch.tensor(self.std, dtype=t.dtype).view(3, 1, 1)
            t = (t - mean) / std
        return t

    def _pil(self, img) -> torch.Tensor:
        from PIL import Image

        img = img.convert("RGB")
        w, h = img.size
        nh, nw = self._size(h, w)
        if (nh, nw) != (h, w):
            img = img.resize((nw, nh), Image.BILINEAR)
        top, left = self._offsets(nh, nw)
        img = img.crop((left, top, left + self.crop, top + self.crop))  # zero padding outside
        arr = np.asarray(img, dtype=np.uint8)
        return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(2, 0, 1).contiguous()

    def _tensor(self, t: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        t = t.detach()
        t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise ValueError(f"imagenet preprocess: expected an image (ch, H, W), got shape {tuple(t.shape)}")
        t = t[:3] if t.shape[0] >= 3 else t[:1].expand(3, -1, -1)
        h, w = t.shape[1:]
        nh, nw = self._size(h, w)
        if (nh, nw) != (h, w):
            t = F.interpolate(t[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        top, left = self._offsets(nh, nw)
        pad = [max(0, -left), max(0, left + self.crop - nw), max(0, -top), max(0, top + self.crop - nh)]
        if any(pad):
            t = F.pad(t, pad)
            top, left = max(top, 0), max(left, 0)
        return t[:, top:top + self.crop, left:left + self.crop].contiguous()


PREPROCESS_CHOICES = ("imagenet", "none")


def resolve_preprocess(spec: str | None, model: LoadedModel | None = None,
                       data: DataSource | None = None) -> Callable | None:
    """The preprocess of ``--preprocess``: ``"imagenet"`` (:class:`ImagenetPreprocess`),
    ``"none"`` (no preprocess, even where the model or the data set has one),
    ``package.module:callable`` (called with each image, see the module's docstring), or
    None: the model factory's preprocess, else the data set's own, else none."""
    if spec is None:
        return (model.preprocess if model is not None else None) or (data.preprocess if data else None)
    if spec == "imagenet":
        return ImagenetPreprocess()
    if spec == "none":
        return None
    if ":" not in spec:
        raise BatchError(f"--preprocess {spec!r}: expected {', '.join(PREPROCESS_CHOICES)} or "
                         "package.module:callable")
    return _import_attr(spec, "--preprocess")


def to_chw_float(img, preprocess: Callable | None = None) -> torch.Tensor:
    """One image as a (ch, H, W) floating point tensor.

    With ``preprocess``, its result (a tensor or array) is used. Otherwise integer
    images are scaled to [0, 1] (uint8 / 255, uint16 / 65535), (H, W) gets a channel
    dim and (H, W, ch) with ch in {1, 3, 4} becomes (ch, H, W). An image with a NaN or
    infinite value (after preprocessing) raises ValueError: it is skipped and reported,
    never explained.
    """
    if preprocess is not None:
        img = preprocess(img)
    if not isinstance(img, torch.Tensor):
        if hasattr(img, "mode") and hasattr(img, "size"):  # a PIL image
            img = np.asarray(img)
        arr = np.asarray(img)
        if arr.dtype == np.uint8:
            t = torch.from_numpy(arr.astype(np.float32) / 255.0)
        elif arr.dtype == np.uint16:
            t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
        elif arr.dtype == np.bool_ or np.issubdtype(arr.dtype, np.integer):
            t = torch.from_numpy(arr.astype(np.float32))
        elif np.issubdtype(arr.dtype, np.floating):
            t = torch.from_numpy(np.array(arr, dtype=arr.dtype if arr.dtype != np.float16 else np.float32))
        else:
            raise ValueError(f"unsupported array dtype {arr.dtype}")
        if t.dim() == 3 and t.shape[-1] in (1, 3, 4) and t.shape[0] not in (1, 3, 4):
            t = t.permute(2, 0, 1)
    else:
        t = img.detach()
        if not t.dtype.is_floating_point:
            t = t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"expected an image (H, W), (ch, H, W) or (H, W, ch), got shape {tuple(t.shape)}")
    if t.is_floating_point():
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            nan = int(torch.isnan(t).sum())
            raise ValueError(f"the image has {nan} NaN and {int((~finite).sum()) - nan} infinite "
                             "values (after preprocessing); not explained")
    return t.contiguous()

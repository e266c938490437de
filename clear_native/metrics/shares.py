"""Which pixels count and which class dominates them: the strong and coloured pixels of
CLEAR maps, a class's share of them (the prediction share, defined once here and used by
the metrics and by the batch run's table) and the per-image statistics of that table."""
from __future__ import annotations

import numpy as np
import torch

from clear_native.metrics._checks import _check_maps, _check_shape, _mean_where


def strong_mask(positive: torch.Tensor, threshold: float) -> torch.Tensor:
    """(N, H, W) bool: pixels whose positive map is >= threshold * its image's max (> 0)."""
    peak = positive.flatten(1).nan_to_num(nan=float("-inf")).amax(1).view(-1, 1, 1)
    return (positive >= threshold * peak) & (peak > 0) & (positive > 0)


def dominant_strong_mask(dominant_class: torch.Tensor, dominant_response: torch.Tensor,
                         rel: float = 0.2) -> torch.Tensor:
    """(N, H, W) bool: the "strong pixels" of CLEAR maps.

    A pixel is strong when its ``dominant_response`` is > 0 and at least ``rel`` times
    its image's largest dominant response, and its ``dominant_class`` is >= 0. NaN is
    never strong; an image whose responses are all <= 0 (or NaN) has no strong pixel.
    """
    return strong_mask(dominant_response, rel) & (dominant_class >= 0)


def coloured_mask(dominant_class: torch.Tensor, dominant_response: torch.Tensor | None = None) -> torch.Tensor:
    """(N, H, W) bool: the pixels a CLEAR map colours, those with evidence for their class:
    a class (>= 0) and a dominant response > 0 (NaN never). A pixel where every class
    responds 0 (black background under deconvnet) is a tie that the dominance gives to
    class 0; it is evidence for no class. Without ``dominant_response``: the pixels with a
    class."""
    mask = dominant_class >= 0
    return mask if dominant_response is None else mask & (dominant_response > 0)


def class_share(dominant_class: torch.Tensor, classes: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
    """(N,) float64: per image, the share of its ``pixels`` ((N, H, W) bool) whose dominant
    class is ``classes[i]``; NaN for an image without such pixels."""
    hits = ((dominant_class == classes.view(-1, 1, 1).to(dominant_class.device)) & pixels).flatten(1).sum(1)
    return hits.double() / pixels.flatten(1).sum(1).double()


def prediction_share(dominant_class: torch.Tensor, dominant_response: torch.Tensor, prediction: torch.Tensor,
                     strong: float | None = None) -> torch.Tensor:
    """(N,) float64: the prediction share of each image.

    Of an image's coloured pixels (:func:`coloured_mask`), or with ``strong`` of its
    strong pixels (:func:`dominant_strong_mask` at that threshold, a subset), the share
    whose dominant class is the prediction; NaN for an image with no such pixel. This is
    "the share of the pixels dominated by the prediction" wherever it appears: the batch
    table's ``prediction_share`` / ``prediction_share_strong``,
    :func:`dominance_agreement`, :func:`strong_pixel_shares`.
    """
    pixels = (coloured_mask(dominant_class, dominant_response) if strong is None
              else dominant_strong_mask(dominant_class, dominant_response, strong))
    return class_share(dominant_class, prediction, pixels)


def dominance_agreement(dominant_class: torch.Tensor, prediction: torch.Tensor, labels: torch.Tensor,
                        num_classes: int, dominant_response: torch.Tensor | None = None,
                        strong: torch.Tensor | None = None) -> dict:
    """CLEAR-specific statistics.

    Returns a dict with:
      - ``share_predicted``: per image, the prediction share (:func:`prediction_share`):
        of its coloured pixels (:func:`coloured_mask`; without ``dominant_response``, of
        its pixels with a class), restricted to ``strong`` when given; NaN for an image
        with none, which the means leave out; its means over correctly and wrongly
        classified images;
      - ``wrong_region_confusion`` (C, C): for those pixels whose dominant class differs
        from the prediction, counts of (predicted class, dominant class);
      - for misclassified images: the share of their pixels dominated by the TRUE class
        vs by the predicted one (the paper's "evidence for 5 inside a misread 0").
    """
    valid = coloured_mask(dominant_class, dominant_response)
    if strong is not None:
        valid &= strong
    share_pred = class_share(dominant_class, prediction, valid)
    share_true = class_share(dominant_class, labels, valid)
    correct = prediction == labels
    wrong_px = valid & (dominant_class != prediction.view(-1, 1, 1))
    pred_b = prediction.view(-1, 1, 1).expand_as(dominant_class)[wrong_px]
    dom_b = dominant_class[wrong_px]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=dominant_class.device)
    confusion.index_put_((pred_b, dom_b), torch.ones_like(dom_b), accumulate=True)
    has = ~share_pred.isnan()
    return {
        "share_predicted": share_pred,
        "share_predicted_correct": _mean_where(share_pred, correct & has),
        "share_predicted_wrong": _mean_where(share_pred, ~correct & has),
        "wrong_true_class_share": _mean_where(share_true, ~correct & has),
        "wrong_predicted_class_share": _mean_where(share_pred, ~correct & has),
        "wrong_region_confusion": confusion.cpu(),
        "num_correct": int(correct.sum()), "num_wrong": int((~correct).sum()),
    }


def strong_pixel_shares(dominant_class: torch.Tensor, dominant_response: torch.Tensor,
                        prediction: torch.Tensor, labels: torch.Tensor, *, num_classes: int,
                        strong: float = 0.2) -> dict:
    """Which classes dominate the strong pixels (:func:`dominant_strong_mask`).

    Args:
        dominant_class, dominant_response: (N, H, W) CLEAR maps.
        prediction, labels: (N,) predicted and true classes.
        num_classes: C (for the chance level 1 / C).
        strong: relative threshold of strong pixels.

    Returns a dict with the share fields of :class:`ClassSensitivity`: per image, the
    share of its strong pixels dominated by the predicted / true class, averaged over
    correct images (predicted) and over wrong images (true and predicted); images
    with no strong pixel are left out and counted in ``images_without_strong``.
    """
    _check_maps("strong_pixel_shares", dominant_class, dominant_response)
    n = dominant_class.shape[0]
    _check_shape("strong_pixel_shares", "prediction", prediction, (n,), "(N,)")
    _check_shape("strong_pixel_shares", "labels", labels, (n,), "(N,)")
    dev = dominant_class.device
    prediction, labels = prediction.to(dev), labels.to(dev)
    mask = dominant_strong_mask(dominant_class, dominant_response, strong)
    has = mask.flatten(1).any(1)
    share_pred = prediction_share(dominant_class, dominant_response, prediction, strong)
    share_true = class_share(dominant_class, labels, mask)
    correct, wrong = (prediction == labels) & has, (prediction != labels) & has
    return {
        "share_predicted_correct": _mean_where(share_pred, correct),
        "share_true_wrong": _mean_where(share_true, wrong),
        "share_predicted_wrong": _mean_where(share_pred, wrong),
        "chance": 1.0 / num_classes,
        "images_correct": int(correct.sum()), "images_wrong": int(wrong.sum()),
        "images_without_strong": int((~has).sum()),
    }


def _float32(v: float, prediction: int) -> float | None:
    """A share as the table stores it (rounded to float32); None without a prediction or
    pixels to share."""
    return None if prediction < 0 or v != v else float(np.float32(v))


def table_rows(dominant_class, dominant_response, prediction, num_classes: int, strong: float) -> list[dict]:
    """The dominance columns of the batch table (:mod:`clear_native.batch`), one dict per
    image of (n, H, W) dominant classes / responses and (n,) predictions (tensors or
    arrays): ``prediction_share`` and ``prediction_share_strong`` (:func:`prediction_share`;
    strong pixels at ``strong``), ``strong_share`` (the strong pixels' share of all
    pixels), ``top_dominant`` / ``agrees`` / ``dominant_classes`` / ``dominant_shares`` (the
    classes of all pixels with a class, each with its share of all pixels)."""
    dc = torch.as_tensor(dominant_class).cpu()
    dr = torch.as_tensor(dominant_response).detach().float().cpu()
    pred = torch.as_tensor(prediction).cpu()
    share = prediction_share(dc, dr, pred).tolist()
    share_strong = prediction_share(dc, dr, pred, strong).tolist()
    n_strong = dominant_strong_mask(dc, dr, strong).flatten(1).sum(1).tolist()
    rows = []
    hw = dc[0].numel() if len(dc) else 1
    for k in range(len(dc)):
        flat = dc[k].reshape(-1).numpy()
        counts = np.bincount(flat[flat >= 0].astype(np.int64), minlength=num_classes)
        present = np.nonzero(counts)[0]
        top = int(counts.argmax()) if counts.sum() else -1
        p = int(pred[k])
        rows.append({
            "prediction_share": _float32(share[k], p),
            "top_dominant": top,
            "agrees": top == p,
            "strong_share": float(np.float32(n_strong[k] / hw)),
            "prediction_share_strong": _float32(share_strong[k], p),
            "dominant_classes": present.tolist(),
            "dominant_shares": [float(np.float32(c / hw)) for c in counts[present]],
        })
    return rows

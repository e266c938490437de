"""Quantitative evaluation of CLEAR maps (paper Table 1 and beyond).

Every function is batched on the device of its inputs and works for any model and
data set: it takes the model, preprocessed images (N, C_in, H, W), labels (N,) and
maps (N, H, W) computed by the caller (usually fields of a ``ClearMaps``), so the
explanation method is the caller's choice.

Conventions (documented choices; the paper gives none):
- "Strong features" of an image: pixels whose positive-focus response (the
  target class's map, ``target_response`` with ``target = labels``) is at least
  ``t * max`` of that image's positive map, for a relative threshold ``t``;
  images whose positive map has no positive value have no strong features.
- Removed pixels take ``background`` (for MNIST, the normalised value of a black
  pixel), in the model's input space, on every input channel.
- The prediction share of an image (:func:`prediction_share`): the share of its
  coloured pixels (a class and a dominant response > 0, :func:`coloured_mask`) whose
  dominant class is the prediction; "of the strong pixels": of its strong pixels
  (:func:`dominant_strong_mask`) instead. A pixel where every class responds 0 is a
  tie that the dominance gives to class 0, not evidence for class 0, so it counts in
  neither. The same definition serves :func:`dominance_agreement`,
  :func:`strong_pixel_shares` and the batch run's table (:func:`table_rows`).

Modules: :mod:`~clear_native.metrics.paper` (Table 1, deletion / insertion, sanity
check), :mod:`~clear_native.metrics.shares` (pixel masks and shares),
:mod:`~clear_native.metrics.sensitivity` (class sensitivity),
:mod:`~clear_native.metrics.sanity` and :mod:`~clear_native.metrics.pointing` (data and
model randomisation, grid pointing game, the prediction leads),
:mod:`~clear_native.metrics.checklist` (:func:`sanity_report`, ``THRESHOLDS``).
"""
from __future__ import annotations

from clear_native.metrics.paper import (DeletionInsertion, StrongFeatureCurve, accuracy, deletion_insertion,
                                        gradient_saliency, random_saliency, sanity_check,
                                        strong_feature_accuracy)
from clear_native.metrics.sensitivity import (ClassSensitivity, causal_check, class_sensitivity,
                                              head_randomisation)
from clear_native.metrics.shares import (class_share, coloured_mask, dominance_agreement, dominant_strong_mask,
                                         prediction_share, strong_mask, strong_pixel_shares, table_rows)
from clear_native.metrics.pointing import GridPointing, grid_pointing, make_mosaics, mosaic_plan, pointing_shares
from clear_native.metrics.sanity import (DataRandomisation, ModelRandomisation, clear_explain, data_randomisation,
                                         fine_detail, leading_class, model_randomisation, prediction_leads,
                                         reference_images, spearman_rows)
from clear_native.metrics.checklist import THRESHOLDS, SanityRow, passes, sanity_report

__all__ = [
    "StrongFeatureCurve", "strong_feature_accuracy", "strong_mask",
    "DeletionInsertion", "deletion_insertion", "random_saliency", "gradient_saliency",
    "dominance_agreement", "sanity_check", "accuracy",
    "ClassSensitivity", "class_sensitivity", "dominant_strong_mask",
    "strong_pixel_shares", "head_randomisation", "causal_check",
    "coloured_mask", "class_share", "prediction_share", "table_rows",
    "GridPointing", "grid_pointing", "make_mosaics", "mosaic_plan", "pointing_shares",
    "THRESHOLDS", "DataRandomisation", "ModelRandomisation", "SanityRow", "clear_explain",
    "data_randomisation", "fine_detail", "leading_class", "model_randomisation", "passes",
    "prediction_leads", "reference_images", "sanity_report", "spearman_rows",
]

"""Inputs of batch explanation: models and data sets named on the command line.

* :func:`load_model` -- ``package.module:factory`` (returns an ``nn.Module`` or
  ``(module, preprocess)``), ``torchvision.models:NAME`` or ``timm:NAME`` (built
  without pretrained weights: nothing is downloaded; ``weights=`` / ``--weights FILE``
  loads a state_dict with ``torch.load(weights_only=True)``), a TorchScript file
  (``torch.jit.load``), a ``torch.export`` file (``.pt2``), or the built-in default model.
* :func:`load_data` -- a folder of images (class sub-folders give labels), an
  ``.npz`` / ``.npy`` array, a ``package.module:function`` returning a sequence or
  map-style ``Dataset``, or the built-in MNIST sample.
* :func:`resolve_preprocess` -- what each image goes through before the model
  (``--preprocess``): ``"imagenet"`` (:class:`ImagenetPreprocess`), ``"none"``, a
  ``package.module:callable``, else the model factory's or the data set's own.

A preprocess is called with each item as the data set gives it: an image file as a
**PIL image** (torchvision's convention: ``Image.open`` + ``load``; palette, RGBA, CMYK
... images converted to RGB, 1-bit to L, the others as stored), an ``.npz`` / ``.npy``
item as a numpy array, a data set function's item as it returns it (array, tensor or
PIL image). It returns a ``(ch, H, W)`` tensor or array (PIL images and ``(H, W[, ch])``
arrays are converted as without a preprocess, see :func:`to_chw_float`).

Both return fingerprints (sha256) that identify a run's inputs (see
:mod:`clear_native.batch`). Pillow is imported lazily, only to read image folders.
:class:`Items` / :class:`Collate` read a data source for a run's DataLoader.

Modules: :mod:`~clear_native.io.common` (:class:`BatchError`, :class:`ModelCodeWarning`),
:mod:`~clear_native.io.models`, :mod:`~clear_native.io.preprocess`,
:mod:`~clear_native.io.sources`, :mod:`~clear_native.io.items`.

Inputs that can run code (see docs/batch.md, "Inputs that can run code"):

* ``--model package.module:factory`` and ``--data package.module:function`` import
  and run Python code: always.
* ``--model x.pt2`` (``torch.export.load``) is code too: pickled weights, constants and
  sample inputs are unpickled with ``weights_only=False`` (sample inputs fall back to it
  when the safe loader fails), AOTInductor packages load shared libraries, and even an
  archive of plain tensors runs Python: the graph's symbolic shape expressions are
  parsed with ``sympy.sympify``, which evaluates them. Such files are loaded only with
  ``trust_code=True`` (``--trust-model-code``), with a :class:`ModelCodeWarning`.
* ``--model x.pt`` (``torch.jit.load``) runs the file's TorchScript program when the
  model is called: no Python (no imports; the file's pickles go through TorchScript's
  restricted unpickler), but any operator registered in the process, file reads with
  ``torch.from_file`` included. It is loaded without the flag, as the program of
  whoever wrote the file.
* Image folders and ``.npz`` / ``.npy`` files are data: numpy loads with
  ``allow_pickle=False``; images are decoded by Pillow, after a header check of their
  size (:data:`MAX_PIXELS`).
"""
from __future__ import annotations

from clear_native.io.common import BatchError, ModelCodeWarning
from clear_native.io.common import _first_lines as _first_lines
from clear_native.io.common import _import_attr as _import_attr
from clear_native.io.items import Collate, Items
from clear_native.io.models import TRUST_FLAG, LoadedModel, load_model, load_weights, state_dict_fingerprint
from clear_native.io.preprocess import (IMAGENET_MEAN, IMAGENET_STD, PREPROCESS_CHOICES, ImagenetPreprocess,
                                        resolve_preprocess, to_chw_float)
from clear_native.io.sources import IMAGE_SUFFIXES, MAX_PIXELS, DataSource, folder_labels, load_data
from clear_native.io.sources import _FolderReader as _FolderReader

__all__ = ["BatchError", "ModelCodeWarning", "LoadedModel", "load_model", "load_weights",
           "state_dict_fingerprint", "TRUST_FLAG", "ImagenetPreprocess", "IMAGENET_MEAN", "IMAGENET_STD",
           "PREPROCESS_CHOICES", "resolve_preprocess", "to_chw_float", "DataSource", "load_data",
           "folder_labels", "MAX_PIXELS", "IMAGE_SUFFIXES", "Items", "Collate"]

"""Models named on the command line (``--model``, ``--weights``): :func:`load_model` and
the fingerprint that identifies a model's weights in a run's identity."""
from __future__ import annotations

import hashlib
import importlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn

from clear_native.io.common import BatchError, ModelCodeWarning, _first_lines, _import_attr
from clear_native.models import load_pretrained


@dataclass
class LoadedModel:
    """A model loaded for a run (on the CPU, in eval mode) and where it came from."""

    model: nn.Module
    preprocess: Callable[[Any], torch.Tensor] | None
    spec: str
    kind: str           # "builtin", "factory", "torchvision", "timm", "torchscript" or "export"
    fingerprint: str    # sha256 of the state_dict (names, dtypes, shapes, bytes)



def state_dict_fingerprint(model: nn.Module) -> str:
    """sha256 over the state_dict's names, dtypes, shapes and raw bytes, in order."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in model.state_dict().items():
        if not isinstance(t, torch.Tensor):
            h.update(f"{name}={t!r};".encode())
            continue
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


TRUST_FLAG = "--trust-model-code"


def load_model(spec: str | None, *, trust_code: bool = False, weights: str | None = None) -> LoadedModel:
    """The model named by ``--model`` (on the CPU, in eval mode).

    A ``torch.export`` file (``.pt2``) is loaded only with ``trust_code=True`` (with a
    :class:`ModelCodeWarning`): ``torch.export.load`` can run code stored in the file
    (see the module's docstring), whatever its weights are. ``torchvision.models:NAME``
    and ``timm:NAME`` are built without pretrained weights (nothing is downloaded);
    ``weights``: a state_dict file loaded into the model (:func:`load_weights`).
    """
    preprocess = None
    if spec is None:
        try:
            obj = load_pretrained("mnist")
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            raise BatchError(f"the built-in MNIST model cannot be loaded ({e}); pass --model "
                             "package.module:factory or a TorchScript / .pt2 file") from e
        kind, spec_name = "builtin", "builtin:mnist"
    else:
        path = Path(spec)
        spec_name = spec
        if path.is_file():
            try:
                if path.suffix == ".pt2":
                    _check_trusted_export(spec, trust_code)
                    obj, kind = torch.export.load(str(path)).module(), "export"
                else:
                    obj, kind = torch.jit.load(str(path), map_location="cpu"), "torchscript"
            except BatchError:
                raise
            except Exception as e:  # noqa: BLE001 - any loader failure is the user's file
                raise BatchError(f"--model {spec!r}: cannot load it as a "
                                 f"{'torch.export (.pt2)' if path.suffix == '.pt2' else 'TorchScript'} "
                                 f"file ({type(e).__name__}: {e})") from e
        elif spec.partition(":")[0] in _ZOOS and spec.partition(":")[2]:
            obj, kind = _zoo_model(spec), spec.partition(":")[0].split(".")[0]
        elif ":" in spec and path.suffix not in (".pt", ".pt2", ".ts", ".pth"):
            factory = _import_attr(spec, "--model")
            try:
                obj = factory()
            except Exception as e:  # noqa: BLE001
                raise BatchError(f"--model {spec!r}: the factory raised {type(e).__name__}: {e}") from e
            kind = "factory"
        else:
            raise BatchError(f"--model {spec!r}: no such file, and not a 'package.module:factory' name")
    if isinstance(obj, tuple):
        if len(obj) != 2 or not callable(obj[1]):
            raise BatchError(f"--model {spec_name!r}: a factory must return a module or (module, preprocess)")
        obj, preprocess = obj
    if not isinstance(obj, nn.Module):
        raise BatchError(f"--model {spec_name!r}: expected a torch.nn.Module, got {type(obj).__name__}")
    try:
        obj.eval()
    except (NotImplementedError, RuntimeError):  # some exported programs refuse .eval()
        pass
    if weights is not None:
        load_weights(obj, weights)
    return LoadedModel(obj, preprocess, spec_name, kind, state_dict_fingerprint(obj))


_ZOOS = ("torchvision.models", "torchvision", "timm")


def _zoo_model(spec: str) -> nn.Module:
    """``torchvision.models:NAME`` / ``timm:NAME``, built without pretrained weights."""
    zoo, _, name = spec.partition(":")
    package = "timm" if zoo == "timm" else "torchvision"
    try:
        module = importlib.import_module("timm" if zoo == "timm" else "torchvision.models")
    except ImportError as e:
        raise BatchError(f"--model {spec!r} needs {package}, which is not installed here ({e}): "
                         f"pip install {package}; or give the model as package.module:factory") from e
    names = module.list_models()
    known = module.is_model(name) if hasattr(module, "is_model") else name in names  # timm: "arch.tag" too
    if not known:
        near = [n for n in names if name.lower()[:4] in n.lower()][:8] or names[:8]
        raise BatchError(f"--model {spec!r}: {package} has no model {name!r} (e.g. {', '.join(near)}; "
                         f"{len(names)} in all: {package}{'' if zoo == 'timm' else '.models'}.list_models())")
    try:
        if zoo == "timm":
            return module.create_model(name, pretrained=False)
        return module.get_model(name, weights=None)
    except Exception as e:  # noqa: BLE001 - a builder's failure is reported, not a traceback
        raise BatchError(f"--model {spec!r}: building it failed ({type(e).__name__}: {e})") from e


def load_weights(model: nn.Module, path: str) -> None:
    """Loads the state_dict in ``path`` (``torch.load(weights_only=True)``: tensors only,
    no code) into ``model``. A checkpoint dict holding it under ``state_dict`` /
    ``model`` / ``model_state_dict`` is unwrapped, and a ``module.`` prefix on every key
    (DistributedDataParallel) dropped. Missing, unexpected or misshapen entries are a
    :class:`BatchError` naming the first few."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BatchError(f"--weights {path!r}: cannot load it with torch.load(weights_only=True) "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, Mapping) and isinstance(sd.get(key), Mapping):
            sd = sd[key]
            break
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BatchError(f"--weights {path!r}: expected a state_dict (a dict of tensors), "
                         f"got {type(sd).__name__}")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shapes that differ
        raise BatchError(f"--weights {path!r} does not fit the model: {_first_lines(str(e))}") from e
    if missing or unexpected:
        def few(keys):
            return ", ".join(list(keys)[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")

        raise BatchError(f"--weights {path!r} does not fit the model: " + "; ".join(
            f"{what} {len(keys)} entries: {few(keys)}" for what, keys in
            (("missing", missing), ("unexpected", unexpected)) if keys))


def _check_trusted_export(spec: str, trust_code: bool) -> None:
    """Refuses a .pt2 file unless ``trust_code``; warns when it is loaded."""
    if not trust_code:
        raise BatchError(
            f"--model {spec!r}: a torch.export (.pt2) file can run code when it is loaded "
            "(torch.export.load unpickles pickled weights, constants and sample inputs, loads "
            "AOTInductor libraries, and evaluates the graph's shape expressions with "
            f"sympy.sympify), so it is loaded only with {TRUST_FLAG}: pass it if you trust "
            "whoever wrote the file, or give the model as package.module:factory")
    warnings.warn(f"--model {spec!r}: loading a torch.export (.pt2) file with {TRUST_FLAG}: "
                  "torch.export.load runs code stored in the file", ModelCodeWarning, stacklevel=3)

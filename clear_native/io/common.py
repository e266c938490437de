"""What every input loader shares: the error a user sees, the warning for model files
that run code, importing ``package.module:name`` and shortening long messages."""
from __future__ import annotations

import importlib
import os
import sys


class BatchError(Exception):
    """A problem with the user's arguments or inputs (reported without a traceback)."""


class ModelCodeWarning(UserWarning):
    """A model file that can run code is being loaded (``trust_code=True``)."""


def _import_attr(spec: str, what: str):
    """The callable named by ``package.module:name`` (``what``: the option, for messages)."""
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise BatchError(f"{what} {spec!r}: expected 'package.module:function'")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does, so local modules import
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BatchError(f"{what} {spec!r}: cannot import module {module_name!r} ({e})") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BatchError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BatchError(f"{what} {spec!r}: {attr!r} is not callable")
    return obj


def _first_lines(text: str, n: int = 4) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:n]) + (f" ... ({len(lines) - n} more lines)" if len(lines) > n else "")

"""clear_native: CLEAR maps (CLass-Enhanced Attentive Responses) for PyTorch classifiers."""
from clear_native import _ops  # noqa: F401  (loads the extension, registers fake kernels)
from clear_native._ops import build_info
from clear_native.dominance import Dominance, dominance
from clear_native.project import project_dominance
from clear_native.explain import Clear, ClearMaps
from clear_native.data import class_names, load_sample
from clear_native.models import available_models, load_pretrained

__version__ = "0.1.0"

__all__ = ["Clear", "ClearMaps", "Dominance", "dominance", "project_dominance", "build_info", "__version__",
           "load_pretrained", "available_models", "load_sample", "class_names"]

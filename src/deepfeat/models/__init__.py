"""Backbones, their layers, taps and pooling.

Names are imported lazily (``__getattr__``): ``deepfeat models`` lists the registry without
loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    "FeatureTaps": ".layers",
    "LayerInfo": ".layers",
    "describe_layers": ".layers",
    "resolve_layers": ".layers",
    "POOLINGS": ".pooling",
    "normalize_pool": ".pooling",
    "pool": ".pooling",
    "pooled_dims": ".pooling",
    "Preprocess": "..data.preprocess",
    "DEFAULT_MODEL": ".registry",
    "Backbone": ".backbone",
    "list_models": ".registry",
    "load_backbone": ".registry",
    "offline_mode": ".hub",
    "resolve_weights": ".hub",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

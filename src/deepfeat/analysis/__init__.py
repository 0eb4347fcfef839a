"""Per-feature discriminative analysis of a store, and the full-network embedding (FNE).

Example:
    >>> import deepfeat
    >>> deepfeat.analyze("fm_all/", out="analysis/", split="train")        # doctest: +SKIP
    >>> deepfeat.full_network_embedding("fm_all/", "fm_fne/")              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

_NAMES = {
    "full_network_embedding": ".fne",
    "load_fne_stats": ".fne",
    "FNESummary": ".fne",
    "feature_statistics": ".stats",
    "analyze": ".report",
}

__all__ = ["FNESummary", "analyze", "feature_statistics", "full_network_embedding", "load_fne_stats"]


def __getattr__(name: str) -> Any:
    import importlib

    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name], __name__), name)
    raise AttributeError(f"module 'deepfeat.analysis' has no attribute {name!r}")

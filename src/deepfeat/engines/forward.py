"""Helpers on the features a runtime returns (the runtimes themselves live in :mod:`deepfeat.runtimes`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def nonfinite_rows(feats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean mask of rows with a NaN or Inf in any layer."""
    masks = [~np.isfinite(a).all(axis=1) for a in feats.values()]
    return np.logical_or.reduce(masks) if masks else np.zeros(0, dtype=bool)

"""Streaming per-feature mean and variance: Chan et al.'s exact merge of (count, mean, M2), in float64.

One implementation for the heads' scaler and the full-network embedding's statistics.
"""

from __future__ import annotations

import numpy as np


def merge_moments(
    n: int, mean: np.ndarray | None, m2: np.ndarray | None, X: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """Fold the rows of ``X`` into running ``(n, mean, m2)`` (``mean``/``m2`` None before the first batch).

    Example:
        >>> n, mean, m2 = merge_moments(0, None, None, np.array([[1.0], [3.0]]))
        >>> n, mean, m2 = merge_moments(n, mean, m2, np.array([[5.0]]))
        >>> n, mean.tolist(), (m2 / n).tolist()
        (3, [3.0], [2.6666666666666665])
    """
    nb = int(X.shape[0])
    mean_b = X.mean(axis=0, dtype=np.float64)
    m2_b = ((X - mean_b) ** 2).sum(axis=0, dtype=np.float64)
    if mean is None or m2 is None or n == 0:
        return nb, mean_b, m2_b
    total = n + nb
    delta = mean_b - mean
    return total, mean + delta * (nb / total), m2 + m2_b + delta * delta * (n * nb / total)

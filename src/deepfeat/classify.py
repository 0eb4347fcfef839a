"""What the classifiers share: :func:`softmax` of a backbone's or a head's logits.

Prediction itself (bundles, exported graphs, a backbone's own classifier) is :func:`deepfeat.predict_images`;
the images that inputs name are :func:`deepfeat.sources.expand_inputs`.
"""

from __future__ import annotations

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x C logits, in float64.

    Example:
        >>> softmax(np.array([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)

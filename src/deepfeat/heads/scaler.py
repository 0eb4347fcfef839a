"""Streaming standardisation: per-feature mean and standard deviation in one pass, in float64.

Batches are merged with Chan et al.'s parallel update of (count, mean, M2), which is exact and
numerically stable whatever the batch sizes. Features whose variance is (numerically) zero get a
scale of 1, so they become 0 after centring instead of NaN/Inf.

Example:
    >>> import numpy as np
    >>> s = StreamingScaler()
    >>> for part in np.array_split(np.arange(12.0).reshape(6, 2), 3):
    ...     _ = s.partial_fit(part)
    >>> s.mean_.tolist(), s.n_samples_seen_
    ([5.0, 6.0], 6)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from ..moments import merge_moments
from ._base import validate_data


class StreamingScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Standardise features with statistics accumulated by ``partial_fit`` (scikit-learn contract).

    Attributes:
        mean_, var_: float64 per-feature mean and (population) variance.
        scale_: float64 standard deviation, 1 where the variance is zero.
        n_samples_seen_: rows seen.
    """

    def __init__(self, *, with_mean: bool = True, with_std: bool = True) -> None:
        self.with_mean = with_mean
        self.with_std = with_std

    def fit(self, X: Any, y: Any = None) -> "StreamingScaler":
        for attr in ("mean_", "var_", "scale_", "n_samples_seen_", "_m2"):
            self.__dict__.pop(attr, None)
        return self.partial_fit(X, y)

    def partial_fit(self, X: Any, y: Any = None) -> "StreamingScaler":
        first = not hasattr(self, "n_samples_seen_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=first)
        self.n_samples_seen_, self.mean_, self._m2 = merge_moments(
            0 if first else self.n_samples_seen_, None if first else self.mean_, None if first else self._m2, X
        )
        self._finish()
        return self

    def _finish(self) -> None:
        self.var_ = self._m2 / max(self.n_samples_seen_, 1)
        scale = np.sqrt(self.var_)
        # zero (or round-off level) variance: leave the centred feature at 0 rather than divide by ~0
        tiny = scale <= 1e-7 * np.maximum(np.abs(self.mean_), 1.0)
        scale[tiny] = 1.0
        self.scale_ = scale

    @classmethod
    def from_stats(cls, mean: np.ndarray, scale: np.ndarray, n_samples_seen: int = 0) -> "StreamingScaler":
        """A fitted scaler from stored statistics (model bundles)."""
        s = cls()
        s.mean_ = np.asarray(mean, dtype=np.float64)
        s.scale_ = np.asarray(scale, dtype=np.float64)
        s.var_ = s.scale_**2
        s._m2 = s.var_ * n_samples_seen
        s.n_samples_seen_ = int(n_samples_seen)
        s.n_features_in_ = int(s.mean_.shape[0])
        return s

    def transform(self, X: Any, copy: bool | None = None) -> np.ndarray:
        """``(X - mean_) / scale_``; float32 input stays float32."""
        check_is_fitted(self, "mean_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False, copy=True)
        if self.with_mean:
            X -= self.mean_.astype(X.dtype)
        if self.with_std:
            X /= self.scale_.astype(X.dtype)
        return X

    def inverse_transform(self, X: Any, copy: bool | None = None) -> np.ndarray:
        check_is_fitted(self, "mean_")
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False, copy=True)
        if self.with_std:
            X *= self.scale_.astype(X.dtype)
        if self.with_mean:
            X += self.mean_.astype(X.dtype)
        return X

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.input_tags.sparse = False
        return tags

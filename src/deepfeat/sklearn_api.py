"""A scikit-learn transformer over images: CNN features as the first step of a Pipeline.

Example:
    >>> from sklearn.pipeline import Pipeline
    >>> from sklearn.linear_model import LogisticRegression
    >>> from deepfeat import FeatureExtractor
    >>> pipe = Pipeline([("features", FeatureExtractor(layers="pre_logits", pool="avg")),
    ...                  ("clf", LogisticRegression(max_iter=1000))])          # doctest: +SKIP
    >>> pipe.fit(train_paths, train_labels).score(test_paths, test_labels)     # doctest: +SKIP

The model is loaded lazily, on the first ``fit`` / ``transform``; ``get_params`` holds only the
names and options (strings and numbers), so ``clone`` and grid searches never copy a network, and
the loaded network is dropped from the object's state when it is copied or serialised (it is
reloaded on the next ``transform``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .devices import check_device, resolve_device
from .errors import InputError, UsageError
from .params import check_choice, check_int


class FeatureExtractor(TransformerMixin, BaseEstimator):
    """Images (paths, PIL images or arrays) -> pooled CNN features, one row per image.

    Parameters:
        model: backbone name (see ``deepfeat models``).
        layers: layer names or shortcuts, comma-separated (see ``deepfeat layers``); several are concatenated.
        pool: ``none|avg|max|avgmax``, optionally per layer (``"avg,blocks.4=none"``).
        weights: local weights file, ``"random"``, or None for the offline pretrained weights.
        input_size: override the model's input size (square).
        batch_size: images per forward pass.
        device: ``cpu``, ``cuda`` or ``auto``.
        dtype: ``float32`` or ``float16`` output.
        runtime: ``auto``, ``torch``, ``openvino`` or ``onnxruntime`` (as for ``extract``).
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16``.
        workers: decode processes for image files (default as for ``extract``; 0 decodes in this process).

    ``X`` may be a list of paths / PIL images / arrays, or one array of images (N x H x W [x C]).
    An image that cannot be decoded raises :class:`~deepfeat.errors.UsageError` naming its position
    (a transformer cannot drop rows).
    """

    def __init__(
        self,
        model: str = "efficientnet_lite0",
        layers: str | Sequence[str] = "pre_logits",
        pool: str = "avg",
        weights: str | None = None,
        input_size: int | None = None,
        batch_size: int = 32,
        device: str = "cpu",
        dtype: str = "float32",
        runtime: str = "auto",
        precision: str = "auto",
        workers: int | None = None,
    ) -> None:
        self.model = model
        self.layers = layers
        self.pool = pool
        self.weights = weights
        self.input_size = input_size
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.runtime = runtime
        self.precision = precision
        self.workers = workers

    # ------------------------------------------------------------------ lazy model
    def _computer(self) -> Any:
        comp = self.__dict__.get("_computer_obj")
        if comp is None:
            from .models.layers import describe_layers
            from .models.registry import load_backbone
            from .runtimes import build_runtime, layer_specs

            bb = load_backbone(self.model, self.weights, input_size=self.input_size)
            infos = describe_layers(bb)
            specs = layer_specs(bb, self.layers, self.pool, infos)

            device = resolve_device(self.device)
            comp = build_runtime(
                bb,
                specs,
                infos,
                runtime=self.runtime,
                device=device,
                precision=self.precision,
                dtype=self.dtype,
                channels_last=device != "cpu",
            )
            self.__dict__["_computer_obj"] = comp
        return comp

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state.pop("_computer_obj", None)  # never copy or serialise the network; it reloads lazily
        return state

    def _check_params(self) -> None:
        check_choice(self.dtype, "dtype", ("float32", "float16"), where="FeatureExtractor")
        check_int(self.batch_size, "batch_size", minimum=1, where="FeatureExtractor")
        check_device(self.device, where="FeatureExtractor")

    # ------------------------------------------------------------------ sklearn API
    def fit(self, X: Any = None, y: Any = None) -> "FeatureExtractor":
        """Load the backbone and resolve the layers (nothing is learned from X)."""
        self._check_params()
        comp = self._computer()
        self.layer_specs_ = [s.to_dict() for s in comp.specs]
        self.n_features_out_ = int(sum(s.dims for s in comp.specs))
        return self

    def transform(self, X: Any) -> np.ndarray:
        """Features of every image in X: N x sum(dims) float array.

        Image files are decoded in the decode pool exactly as ``extract`` decodes them (large JPEGs
        at reduced scale, see ``Preprocess.jpeg_draft``); in-memory images here, at full resolution.
        """
        from .embed import embed_files

        check_is_fitted(self, "n_features_out_")
        items = _as_items(X)
        comp = self._computer()
        pre = comp.backbone.preprocess
        out = np.empty((len(items), self.n_features_out_), dtype=np.dtype(self.dtype))

        def put(indices: list[int], feats: dict[str, np.ndarray]) -> None:
            out[indices] = np.concatenate([feats[s.name] for s in comp.specs], axis=1)

        files = [i for i, item in enumerate(items) if isinstance(item, (str, os.PathLike))]
        for batch in embed_files(
            comp, [items[i] for i in files], preprocess=pre, batch_size=self.batch_size, workers=self.workers
        ):
            if batch.failed:
                k, reason, message = batch.failed[0]
                raise UsageError(
                    f"Image {files[k]} ({os.fspath(items[files[k]])}) of the X of FeatureExtractor "
                    f"cannot be used: {reason}: {message}"
                )
            put([files[k] for k in batch.indices], batch.features)
        in_memory = [i for i, item in enumerate(items) if not isinstance(item, (str, os.PathLike))]
        for start in range(0, len(in_memory), self.batch_size):
            chunk = in_memory[start : start + self.batch_size]
            put(chunk, comp(np.stack([pre.resize_crop(_decode(items[i], i)) for i in chunk])))
        return out

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "n_features_out_")
        return np.asarray([f"{d['name']}_{i}" for d in self.layer_specs_ for i in range(d["dims"])], dtype=object)

    def __sklearn_tags__(self):  # type: ignore[no-untyped-def]
        tags = super().__sklearn_tags__()
        tags.requires_fit = True
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        tags.target_tags.required = False
        return tags


def _as_items(X: Any) -> list[Any]:
    if isinstance(X, np.ndarray) and X.dtype != object and X.ndim in (3, 4):
        return list(X)  # one array of images: N x H x W [x C]
    if isinstance(X, (str, os.PathLike)):
        raise UsageError(
            "The X of FeatureExtractor must be a list of images (paths, PIL images or arrays); "
            f"got a single path {os.fspath(X)!r} instead. Wrap it in a list."
        )
    try:
        items = list(X)
    except TypeError:
        raise UsageError(
            "The X of FeatureExtractor must be a list of images (paths, PIL images or arrays); "
            f"got {type(X).__name__} instead."
        ) from None
    if hasattr(X, "ndim") and getattr(X, "ndim", 1) == 2 and getattr(X, "shape", (0, 0))[1] == 1:
        items = [row[0] for row in items]  # a column of paths (e.g. from a DataFrame)
    if not items:
        raise UsageError("The X of FeatureExtractor holds no images.")
    return items


def _decode(item: Any, position: int) -> Any:
    from .data.decode import decode_image

    try:
        return decode_image(item)
    except InputError as exc:
        shown = os.fspath(item) if isinstance(item, (str, os.PathLike)) else type(item).__name__
        raise UsageError(
            f"Image {position} ({shown}) of the X of FeatureExtractor cannot be used: {exc.reason}: {exc.message}"
        ) from None

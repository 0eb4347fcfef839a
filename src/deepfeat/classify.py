"""Classify images with a backbone's own classifier (e.g. ImageNet top-5 of the bundled model).

This is the sanity check of weights + preprocessing: if the cat photo is not a cat, the
features will not be good either.

Example:
    >>> preds = classify_images("efficientnet_lite0", ["cat.jpg"], top_k=5)   # doctest: +SKIP
    >>> preds[0].labels[0]                                                    # doctest: +SKIP
    'tiger cat'
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import progress
from .agreement import DEFAULT_MIN_AGREEMENT
from .data.decode import DecodePolicy
from .errors import UsageError
from .models.registry import Backbone, load_backbone
from .params import check_int
from .sources import expand_inputs


@dataclass
class Prediction:
    """Top-k of one input, or the reason it failed."""

    path: str
    labels: list[str] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    error: str | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x C logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify_images(model: str | Backbone, inputs: Sequence[str | os.PathLike], top_k: int = 5,
                    batch_size: int = 16, policy: DecodePolicy | None = None, *, runtime: str = "auto",
                    precision: str = "auto", device: str = "cpu", workers: int | None = None,
                    min_agreement: float = DEFAULT_MIN_AGREEMENT) -> list[Prediction]:
    """Top-k classes of the backbone's own classifier for files/folders; bad files are reported, not raised.

    Images go through the same decode pool and runtime seam as ``extract`` (``runtime``/``precision``
    as there, a reduced precision through the precision guard on the first 64 images with
    ``min_agreement``; ``workers=0`` decodes in this process).
    """
    from .embed import decode_pixels, embed_files
    from .models.layers import OUTPUT, describe_layers
    from .runtimes import build_runtime, layer_specs, resolve_runtime
    from .runtimes.guard import GUARD_IMAGES, check_min_agreement, guard_backbone

    check_int(top_k, "top_k", minimum=1, where="classify_images")
    check_int(batch_size, "batch_size", minimum=1, where="classify_images")
    check_min_agreement(min_agreement, where="classify_images")
    bb = model if isinstance(model, Backbone) else load_backbone(model)
    if not bb.class_names:
        raise UsageError(
            f"The model {bb.name!r} has no class names for its outputs (random or headless weights); "
            "train a head with 'deepfeat train' and predict with the bundle instead."
        )
    policy = policy or DecodePolicy()
    excluded: list = []
    named = expand_inputs(inputs, excluded)
    paths = [name for name, _ in named]
    infos = describe_layers(bb)
    specs = layer_specs(bb, OUTPUT, "none", infos)
    choice = resolve_runtime(runtime, device, precision)
    if choice.precision != "fp32":  # the precision guard, on the first images of this call
        sample = decode_pixels([loc for _, loc in named[:GUARD_IMAGES]], preprocess=bb.preprocess, policy=policy,
                               workers=1 if workers is None else workers)
        runtime, precision, _ = guard_backbone(bb, specs, infos, sample, runtime=choice.runtime,
                                               precision=choice.precision, auto=precision == "auto", device=device,
                                               min_agreement=min_agreement, batch_size=batch_size)
    computer = build_runtime(bb, specs, infos, runtime=runtime, device=device, precision=precision)
    preds: list[Prediction] = []
    for batch in progress.track(embed_files(computer, [loc for _, loc in named], preprocess=bb.preprocess,
                                            policy=policy,
                                            batch_size=batch_size, workers=workers),
                                "predict", total=len(paths), unit="img", size=lambda e: len(e.indices) + len(e.failed)):
        preds.extend(Prediction(paths[i], error=f"{reason}: {message}") for i, reason, message in batch.failed)
        if not batch.indices:
            continue
        probs = softmax(batch.features[OUTPUT])
        k = min(top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for row, i in enumerate(batch.indices):
            idx = [int(j) for j in top[row]]
            preds.append(Prediction(paths[i], labels=[bb.class_names[j] for j in idx], indices=idx,
                                    probabilities=[float(probs[row, j]) for j in idx]))
    order = {p: n for n, p in enumerate(paths)}
    preds.sort(key=lambda pr: order.get(pr.path, 0))
    # what the user named but cannot be classified (missing files, FIFOs...); hidden files and
    # other extensions inside folders are skipped silently
    preds += [Prediction(ex.path, error=f"{ex.reason}: {ex.message}") for ex in excluded
              if ex.reason not in ("hidden", "not_image_extension")]
    return preds

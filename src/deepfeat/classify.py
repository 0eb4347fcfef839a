"""What the classifiers share: :func:`expand_inputs` (the images that inputs name) and :func:`softmax`.

Prediction itself (bundles, exported graphs, a backbone's own classifier) is :func:`deepfeat.predict_images`.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from .data.sources import ExcludedItem
from .sources import open_source


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of N x C logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def expand_inputs(inputs: Iterable[str | os.PathLike], excluded: list | None = None) -> list[tuple[str, Any]]:
    """The images that ``inputs`` name, as ``(name, locator)`` pairs in order.

    An image file is itself; a folder is walked and a ``.txt``/``.csv`` list read by their sources, and
    WebDataset shards (a ``.tar``, a brace pattern or glob, a folder of shards), Parquet files and
    ``hf:`` datasets are enumerated by theirs (:func:`deepfeat.sources.open_source`): the name is then
    the item's place (``shard.tar#key.jpg``) and the locator where a decode worker reads it. Entries that
    discovery excludes, and paths that do not exist (reason ``missing``), are appended to ``excluded``
    (as ``ExcludedItem``) when given.

    Example:
        >>> expand_inputs(["cat.jpg", "shards/{000..009}.tar"])[:1]          # doctest: +SKIP
        [('cat.jpg', 'cat.jpg')]
    """
    out: list[tuple[str, Any]] = []
    for entry in inputs:
        p = os.fspath(entry)
        source = open_source(p)
        if source.kind == "folder" and not os.path.isdir(p):  # an image file (the folder source is the last resort)
            if os.path.exists(p) or excluded is None:
                out.append((p, p))
            else:
                excluded.append(ExcludedItem(p, "missing", "not found (no such file or folder)"))
            continue
        found = source.discover()
        out.extend((it.path, it.locator) for it in found.items)
        if excluded is not None:
            excluded.extend(found.excluded)
    return out

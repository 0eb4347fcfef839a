"""A synthetic store written through deepfeat's own writer (StoreWriter + write_part): for the search
tests and benchmarks/search.py, where the size of a store matters and its images do not."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa


def write_synthetic_store(
    path: str | os.PathLike,
    blocks: Iterable[np.ndarray],
    *,
    layer: str = "pre_logits",
    splits: Sequence[str] = ("train", "test"),
    dtype: str = "float16",
) -> int:
    """Write each array of ``blocks`` (rows x dims) as one part of a store at ``path``; returns the rows.

    Row ``i`` gets id ``row-i``, path ``/synthetic/i.png``, label ``c{i % 10}`` and split
    ``splits[i % len(splits)]``.
    """
    from deepfeat.store import layout
    from deepfeat.store.layerspec import LayerSpec
    from deepfeat.store.session import StoreWriter
    from deepfeat.store.writer import write_part

    path = os.fspath(path)
    total = 0
    with StoreWriter(path) as writer:
        for n_part, X in enumerate(blocks):
            if n_part == 0:
                spec = LayerSpec(layer, layer, (X.shape[1],), "avg", int(X.shape[1]))
                config = {"synthetic": True, "layers": [spec.to_dict()], "dtype": dtype}
                writer.open(
                    config,
                    {"layers": [spec.to_dict()], "dtype": dtype, "model": {"name": "synthetic"}, "precision": "fp32"},
                    overwrite=True,
                )
            n = len(X)
            idx = np.arange(total, total + n)
            ids = [f"row-{i}" for i in idx]
            paths = [f"/synthetic/{i}.png" for i in idx]
            split = [splits[i % len(splits)] for i in idx]
            label = [f"c{i % 10}" for i in idx]
            rows = pa.table(
                {
                    "id": ids,
                    "view": pa.array([0] * n, pa.int16()),
                    "label": label,
                    "split": split,
                    "path": paths,
                    "path_bytes": [p.encode() for p in paths],
                    "sha256": [hashlib.sha256(p.encode()).hexdigest() for p in paths],
                    "format": ["PNG"] * n,
                    "mode": ["RGB"] * n,
                    "n_frames": pa.array([1] * n, pa.int32()),
                    "width": pa.array([8] * n, pa.int32()),
                    "height": pa.array([8] * n, pa.int32()),
                },
                schema=layout.ROWS_SCHEMA,
            )
            ledger = pa.table(
                {
                    "id": ids,
                    "path": paths,
                    "path_bytes": [p.encode() for p in paths],
                    "label": label,
                    "split": split,
                    "status": ["embedded"] * n,
                    "reason": [None] * n,
                    "message": [None] * n,
                },
                schema=layout.LEDGER_SCHEMA,
            )
            writer.commit(write_part(path, f"{writer.next_index():08d}", {layer: np.asarray(X, dtype=dtype)}, rows, ledger))
            total += n
    return total

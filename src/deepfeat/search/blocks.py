"""Vectors of one layer of a store, L2-normalised, in blocks sized by a memory budget.

Cosine similarity is the dot product of L2-normalised vectors, so everything in
:mod:`deepfeat.search` normalises once (rows of zeros stay zero) and then multiplies.

Example:
    >>> store = open_store("feats/")                                              # doctest: +SKIP
    >>> for start, X, meta in store_blocks(store, "pre_logits", block_rows=4096):  # doctest: +SKIP
    ...     X.shape, meta.column("path")[0]
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..store.reader import FeatureStore

log = logging.getLogger(__name__)

#: the row columns an index and a duplicates run keep for every vector
ROW_COLUMNS = ("id", "path", "split", "label")
#: default memory budget of the search commands (bytes)
DEFAULT_MEMORY_BUDGET = 1 << 30


def normalize(X: np.ndarray) -> np.ndarray:
    """Rows of ``X`` as float32 with unit L2 norm (all-zero and non-finite rows become zero)."""
    X = np.array(X, dtype=np.float32, copy=True)
    sq = np.einsum("ij,ij->i", X, X)  # no temporary of X's size (np.linalg.norm squares a copy)
    bad = ~np.isfinite(sq)
    X[bad] = 0
    sq[bad] = 0
    norms = np.sqrt(sq)[:, None]
    np.divide(X, norms, out=X, where=norms > 0)
    return X


def pair_block_rows(dims: int, budget: int) -> int:
    """Rows per block for an all-pairs scan: two float32 blocks and their B x B similarities (with
    the comparison mask and the index arrays) in half the budget."""
    # 2 * B * dims * 4 (two blocks) + B * B * (4 similarities + 1 mask + 4 scratch) <= budget / 2
    a, b, c = 9.0, 8.0 * dims, -budget / 2
    rows = int((-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
    return max(16, rows)


def store_blocks(
    store: FeatureStore, layer: str, splits: Sequence[str] | None = None, *, block_rows: int = 4096
) -> Iterator[tuple[int, np.ndarray, pa.Table]]:
    """``(first row, normalised float32 block, row metadata)`` over view 0 of the chosen splits.

    Reads through :meth:`FeatureStore.batches` (each part in blocks of contiguous rows), so memory
    holds one block of the store's dtype and its float32 copy.
    """
    spec = store.layer(layer)
    read_bytes = max(1 << 16, block_rows * spec.dims * np.dtype(store.dtype).itemsize)
    start = 0
    for batch in store.batches(
        [layer],
        split=list(splits) if splits else None,
        batch_size=block_rows,
        views=0,
        columns=ROW_COLUMNS,
        read_bytes=read_bytes,
    ):
        X = normalize(batch.features[layer])
        yield start, X, batch.meta.select(list(ROW_COLUMNS))
        start += len(X)


def store_digest(store: FeatureStore) -> dict[str, Any]:
    """What a search index records of its store: the config fingerprint and a digest of the committed
    parts (names and file checksums, in order), so an index of a store that has grown or changed is stale."""
    h = hashlib.sha256()
    for part in store.parts:
        h.update(part.name.encode())
        for fname in sorted(part.files):
            h.update(fname.encode())
            h.update(str(part.files[fname].get("sha256")).encode())
    return {"fingerprint": store.metadata.get("fingerprint"), "parts_digest": h.hexdigest()[:32], "rows": store.num_rows()}


#: ``refine(i, j, similarity) -> similarity`` of :func:`all_pairs` (NaN drops a pair)
Refine = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def all_pairs(
    vectors: np.ndarray,
    threshold: float,
    block_rows: int,
    task: Any = None,
    against: Any = None,
    refine: Refine | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of rows of ``vectors`` (normalised; an array or a memory map) with inner
    product >= ``threshold``: (i, j, similarity) arrays. Two blocks of ``block_rows`` rows at a time.
    With ``against``, the pairs of a row ``i`` of ``vectors`` and a row ``j`` of ``against`` instead.
    With ``refine``, each block's pairs are handed to ``refine(i, j, similarity)`` as they are found,
    and the similarities it returns replace theirs (NaN: the pair is dropped), so memory holds the
    refined pairs only."""
    n = len(vectors)
    other = vectors if against is None else against
    m = len(other)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for a in range(0, n, block_rows):
        A = np.asarray(vectors[a : a + block_rows], dtype=np.float32)
        for b in range(a if against is None else 0, m, block_rows):
            same = against is None and b == a
            B = A if same else np.asarray(other[b : b + block_rows], dtype=np.float32)
            S = A @ B.T
            ii, jj = np.nonzero(S >= threshold)
            if same:  # each pair once, no self-pairs
                keep = jj > ii
                ii, jj = ii[keep], jj[keep]
            if len(ii):
                ss = S[ii, jj].astype(np.float32)
                ii, jj = ii.astype(np.int64) + a, jj.astype(np.int64) + b
                if refine is not None:
                    ss = np.asarray(refine(ii, jj, ss), dtype=np.float32)
                    kept = ~np.isnan(ss)
                    ii, jj, ss = ii[kept], jj[kept], ss[kept]
                found_s.append(ss)
                found_i.append(ii)
                found_j.append(jj)
            del S, B
            if task is not None:
                task.update(len(A) * min(block_rows, m - b))
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)

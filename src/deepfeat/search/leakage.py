"""Split leakage: the rows of one split that have a near-duplicate in another (train).

Used by ``evaluate``: a test row whose near-duplicate was trained on measures memory, not
generalisation, so the report gives the accuracy with and without those rows.

Example:
    >>> leaks = train_near_duplicates(open_store("feats/"), "test")      # doctest: +SKIP
    >>> len(leaks), next(iter(leaks.values()))                            # doctest: +SKIP
    (31, Leak(train_id='...', train_path='fm/train/bag/1.png', similarity=0.97))
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..store.reader import FeatureStore
from .blocks import DEFAULT_MEMORY_BUDGET, pair_block_rows, store_blocks

log = logging.getLogger(__name__)


@dataclass
class Leak:
    """The most similar row of the reference split of one leaked row."""

    train_id: str
    train_path: str | None
    similarity: float


def train_near_duplicates(
    store: FeatureStore,
    split: str,
    *,
    reference: str = "train",
    layer: str = "pre_logits",
    threshold: float = 0.9,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, Leak]:
    """{id of a ``split`` row: its closest ``reference`` row} for the rows at cosine >= ``threshold``.

    Two blocks at a time (rows of ``split`` against rows of ``reference``, view 0), each sized by
    ``memory_budget``; the reference split is re-read once per block of ``split`` rows.
    """
    dims = store.layer(layer).dims
    block = pair_block_rows(dims, memory_budget)
    found: dict[str, Leak] = {}
    for _, Q, qmeta in store_blocks(store, layer, [split], block_rows=block):
        best = np.full(len(Q), -np.inf, dtype=np.float32)
        best_id: list[str | None] = [None] * len(Q)
        best_path: list[str | None] = [None] * len(Q)
        for _, T, tmeta in store_blocks(store, layer, [reference], block_rows=block):
            S = Q @ T.T
            j = np.argmax(S, axis=1)
            s = S[np.arange(len(Q)), j]
            better = np.flatnonzero(s > best)
            if len(better):
                t_ids, t_paths = tmeta.column("id").to_pylist(), tmeta.column("path").to_pylist()
                for r in better.tolist():
                    best[r], best_id[r], best_path[r] = s[r], t_ids[j[r]], t_paths[j[r]]
        q_ids = qmeta.column("id").to_pylist()
        for r in np.flatnonzero(best >= threshold).tolist():
            found[q_ids[r]] = Leak(str(best_id[r]), best_path[r], float(min(1.0, best[r])))
    log.info(
        "leakage: %d %s rows with a near-duplicate in %s (cosine >= %g on %s)",
        len(found),
        split,
        reference,
        threshold,
        layer,
    )
    return found

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
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .. import progress
from ..store.reader import FeatureStore
from .blocks import DEFAULT_MEMORY_BUDGET, all_pairs, pair_block_rows, store_blocks
from .pixels import CANDIDATE_THRESHOLD, pyramids, row_images, verified

log = logging.getLogger(__name__)


@dataclass
class Leak:
    """The most similar row of the reference split of one leaked row."""

    train_id: str
    train_path: str | None
    similarity: float
    by: str = "features"  #: ``features`` (cosine of the layer) or ``pixels`` (thumbnails' correlation)


def train_near_duplicates(
    store: FeatureStore,
    split: str,
    *,
    reference: str = "train",
    layer: str = "pre_logits",
    threshold: float = 0.9,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    pixel_threshold: float | None = None,
    workers: int | None = None,
) -> dict[str, Leak]:
    """{id of a ``split`` row: its closest ``reference`` row} for the rows at cosine >= ``threshold``.

    Two blocks at a time (rows of ``split`` against rows of ``reference``, view 0), each sized by
    ``memory_budget``; the reference split is re-read once per block of ``split`` rows. With
    ``pixel_threshold``, the images of both splits are read again and a row whose thumbnails correlate
    with a reference row's at >= ``pixel_threshold`` leaks too (a re-encode or downscale the features
    miss: :mod:`deepfeat.search.pixels`); images that cannot be read are compared by features only.
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
    if pixel_threshold is not None:
        for qid, leak in _pixel_leaks(store, split, reference, pixel_threshold, memory_budget, workers).items():
            found.setdefault(qid, leak)
    log.info(
        "leakage: %d %s rows with a near-duplicate in %s (cosine >= %g on %s)",
        len(found),
        split,
        reference,
        threshold,
        layer,
    )
    return found


def _pixel_leaks(
    store: FeatureStore, split: str, reference: str, threshold: float, budget: int, workers: int | None
) -> dict[str, Leak]:
    """{id of a ``split`` row: its closest ``reference`` row by pixels} for correlations >= ``threshold``."""
    q_ids, q_paths, q_sha = row_images(store, split=split)
    r_ids, r_paths, r_sha = row_images(store, split=reference)
    found: dict[str, Leak] = {}
    if not q_ids or not r_ids:
        return found
    with tempfile.TemporaryDirectory(prefix="deepfeat-leakage-") as tmp:
        with progress.task(f"thumbnails ({split} and {reference})", total=len(q_ids) + len(r_ids), unit="img") as task:
            Q = pyramids(q_paths, os.path.join(tmp, "q"), workers=workers, task=task, sha256=q_sha)
            R = pyramids(r_paths, os.path.join(tmp, "r"), workers=workers, task=task, sha256=r_sha)
        block = pair_block_rows(Q.candidates.shape[1], budget)
        ci, cj, sim = all_pairs(
            Q.candidates, CANDIDATE_THRESHOLD, block, against=R.candidates, refine=verified(Q, threshold, R)
        )
    for i, j, s in sorted(zip(ci.tolist(), cj.tolist(), sim.tolist()), key=lambda t: -t[2]):
        if q_ids[i] not in found:
            found[q_ids[i]] = Leak(r_ids[j], r_paths[j], float(min(1.0, s)), by="pixels")
    return found

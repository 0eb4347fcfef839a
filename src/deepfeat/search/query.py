"""Query an index by example: image files embedded exactly as the store was, or stored row ids.

A query file goes through the same decode pool and :class:`~deepfeat.runtimes.Runtime` seam as
``predict`` (:func:`deepfeat.embed.embed_files`), with the store's model, weights (checked by
sha256), layer, pooling, preprocessing, decode policy, runtime and precision, and its features are
rounded to the store's dtype before they are normalised -- so a stored image queried as a file
finds itself at similarity 1. A query that cannot be read or decoded is an error row, never an
exception.

Example:
    >>> results = search("feats.index", ["query.jpg"], top_k=5)            # doctest: +SKIP
    >>> [(n.path, round(n.similarity, 3)) for n in results[0].neighbors]    # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .. import progress
from ..errors import UsageError
from ..params import check_int
from ..store.layerspec import LayerSpec
from ..units import parse_size
from .blocks import DEFAULT_MEMORY_BUDGET, normalize
from .index import Neighbor, SearchIndex, open_index

log = logging.getLogger(__name__)


@dataclass
class QueryResult:
    """The nearest stored rows of one query (a file path or ``id:ID``), or why it has none."""

    query: str
    neighbors: list[Neighbor] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"query": self.query, "neighbors": [asdict(n) for n in self.neighbors]}
        if self.error is not None:
            out["error"] = self.error
        return out


def index_runtime(
    index: SearchIndex,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    runtime: str = "auto",
    precision: str = "auto",
) -> tuple[Any, Any, Any]:
    """``(runtime, preprocess, decode policy)`` that compute the indexed layer as the store did.

    The store's description is wrapped in a :class:`~deepfeat.bundle.Bundle` without a head, so the
    backbone is loaded, checked and run exactly as ``predict`` does for a bundle of that store.
    """
    from ..bundle import Bundle, bundle_runtime
    from ..data.decode import DecodePolicy
    from ..data.preprocess import Preprocess

    meta = index.doc.get("store_metadata") or {}
    if meta.get("fne"):
        raise UsageError(
            f"The index {index.path!r} is of a full-network-embedding store: query it by stored "
            "ids (--id), or index the FNE's source store to query by image files."
        )
    spec = next((LayerSpec.from_dict(d) for d in meta.get("layers") or [] if d.get("name") == index.layer), None)
    if spec is None or not meta.get("model") or not meta.get("preprocess"):
        raise UsageError(f"The index {index.path!r} does not record how its store was extracted; query it by ids.")
    rt = meta.get("runtime")
    if not isinstance(rt, dict) or not isinstance(rt.get("runtime"), str):
        rt = {"runtime": "torch", "precision": str(meta.get("precision", "fp32"))}
    pre = Preprocess.from_dict(meta["preprocess"])
    pseudo = Bundle(
        path=index.path,
        metadata={
            "backbone": meta["model"],
            "runtime": rt,
            "precision": str(meta.get("precision", "fp32")),
            "dtype": str(meta.get("dtype", "float32")),
        },
        scaler=None,
        head=None,
        classes=[],
        layers=[spec],
        preprocess=pre,
    )  # type: ignore[arg-type]
    computer = bundle_runtime(pseudo, weights=weights, device=device, runtime=runtime, precision=precision)
    policy = DecodePolicy.from_dict((meta.get("config") or {}).get("decode_policy"))
    return computer, pre, policy


def embed_queries(
    index: SearchIndex,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 32,
    workers: int | None = None,
    **runtime_args: Any,
) -> tuple[list[str], np.ndarray, dict[int, str], list[tuple[str, str]]]:
    """Embed query files for ``index``: (names, normalised vectors (one per name, zero where
    failed), {position: error} of the failed, [(name, error)] of inputs discovery refused)."""
    from ..embed import embed_files
    from ..prediction import expand_with_errors

    named, refused = expand_with_errors(list(paths))
    names = [n for n, _ in named]
    Q = np.zeros((len(names), index.dims), dtype=np.float32)
    errors: dict[int, str] = {}
    if names:
        computer, pre, policy = index_runtime(index, **runtime_args)
        for batch in embed_files(
            computer,
            [loc for _, loc in named],
            preprocess=pre,
            policy=policy,
            batch_size=batch_size,
            workers=workers,
            label="embed queries",
        ):
            for i, reason, message in batch.failed:
                errors[i] = f"{reason}: {message}"
            if batch.indices:
                F = np.asarray(batch.features[index.layer], dtype=np.float32)
                bad = ~np.isfinite(F).all(axis=1)
                for row in np.flatnonzero(bad):
                    errors[batch.indices[row]] = "nonfinite_features: the model produced NaN/Inf for this input"
                Q[batch.indices] = normalize(F)
    return names, Q, errors, [(p.path, p.error or "") for p in refused]


def neighbors_of_files(
    index: SearchIndex,
    locators: Sequence[Any],
    top_k: int,
    *,
    batch_size: int = 32,
    workers: int | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    **runtime_args: Any,
) -> dict[int, list[Neighbor]]:
    """{position: nearest rows} of already-expanded inputs (``predict --neighbors``); failed inputs are left out."""
    from ..embed import embed_files

    if not locators:
        return {}
    computer, pre, policy = index_runtime(index, **runtime_args)
    out: dict[int, list[Neighbor]] = {}
    for batch in progress.track(
        embed_files(computer, list(locators), preprocess=pre, policy=policy, batch_size=batch_size, workers=workers),
        "neighbors",
        total=len(locators),
        unit="img",
        size=lambda e: len(e.indices) + len(e.failed),
    ):
        if not batch.indices:
            continue
        F = np.asarray(batch.features[index.layer], dtype=np.float32)
        ok = np.isfinite(F).all(axis=1)
        sims, rows = index.knn(normalize(F), top_k, memory_budget=memory_budget)
        for j, i in enumerate(batch.indices):
            if ok[j]:
                out[i] = [index.neighbor(int(r), float(s)) for r, s in zip(rows[j], sims[j]) if r >= 0]
    return out


def search(
    index: str | os.PathLike | SearchIndex,
    queries: Sequence[str | os.PathLike] | str = (),
    top_k: int = 10,
    *,
    ids: Sequence[str] = (),
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    runtime: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    nprobe: int | None = None,
) -> list[QueryResult]:
    """The ``top_k`` stored rows most similar (cosine) to each query, best first.

    Args:
        index: an index directory from :func:`build_index` (refused when its store has changed).
        queries: image files, folders or list files, embedded exactly as the store was.
        top_k: neighbours per query.
        ids: ids of stored rows to query with (their own row is left out of their neighbours).
        memory_budget: bytes (or ``"1GiB"``) of stored vectors scored at a time.
        weights: the backbone weights file when not at the path the store recorded.
        device / runtime / precision: as for ``predict`` (``auto``: the store's runtime and precision).
        batch_size / workers: query images per forward pass; decode processes.
        nprobe: IVF lists visited per query (kind ``ivf``; default: the index's).

    Returns one :class:`QueryResult` per query file, then one per id (``query`` = ``id:ID``), then
    error rows for inputs that discovery refused.

    Example:
        >>> for r in search("feats.index", ["cat.jpg"], top_k=3):            # doctest: +SKIP
        ...     print(r.query, [(n.label, round(n.similarity, 3)) for n in r.neighbors])
    """
    top_k = check_int(top_k, "top_k", minimum=1, where="search")
    check_int(batch_size, "batch_size", minimum=1, where="search")
    budget = parse_size(memory_budget, "memory_budget")
    if isinstance(queries, (str, os.PathLike)):
        queries = [queries]
    if isinstance(ids, str):
        ids = [ids]
    if not queries and not ids:
        raise UsageError("The 'queries' parameter of search is empty and no 'ids' were given: nothing to search for.")
    idx = index if isinstance(index, SearchIndex) else open_index(index)
    names: list[str] = []
    Q = np.zeros((0, idx.dims), dtype=np.float32)
    errors: dict[int, str] = {}
    refused: list[tuple[str, str]] = []
    if queries:
        names, Q, errors, refused = embed_queries(
            idx,
            queries,
            batch_size=batch_size,
            workers=workers,
            weights=weights,
            device=device,
            runtime=runtime,
            precision=precision,
        )
    self_rows: list[int] = [-1] * len(names)
    for i in ids:
        row = idx.row_of_id(str(i))
        names.append(f"id:{i}")
        if row is None:
            errors[len(names) - 1] = f"unknown_id: the index has no row with id {i!r}"
            self_rows.append(-1)
            Q = np.vstack([Q, np.zeros((1, idx.dims), dtype=np.float32)])
        else:
            self_rows.append(row)
            Q = np.vstack([Q, idx.vectors_of([row])])
    ok = [i for i in range(len(names)) if i not in errors]
    results = [QueryResult(n, error=errors.get(i)) for i, n in enumerate(names)]
    if ok:
        extra = 1 if any(self_rows[i] >= 0 for i in ok) else 0
        sims, rows = idx.knn(Q[ok], top_k + extra, memory_budget=budget, nprobe=nprobe)
        for j, i in enumerate(ok):
            pairs = [(int(r), float(s)) for r, s in zip(rows[j], sims[j]) if r >= 0 and r != self_rows[i]]
            results[i].neighbors = [idx.neighbor(r, s) for r, s in pairs[:top_k]]
    results += [QueryResult(path, error=err) for path, err in refused]
    log.info(
        "search: %d queries (%d failed) against %d rows", len(results), sum(r.error is not None for r in results), idx.rows
    )
    return results

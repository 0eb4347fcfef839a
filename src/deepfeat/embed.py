"""Image files -> features outside a store: the path ``predict``, ``classify`` and ``FeatureExtractor`` share.

Files are decoded in the same decode pool as ``extract`` (a codec that kills its process
fails one file, it does not take the caller down) and run through one
:class:`~deepfeat.runtimes.Runtime`, so a bundle's features are computed exactly as the
store's were when the runtime and precision are the same.

Example:
    >>> rt = build_runtime(bb, layer_specs(bb, "pre_logits"))                       # doctest: +SKIP
    >>> for batch in embed_files(rt, ["a.jpg", "b.png"], preprocess=bb.preprocess):  # doctest: +SKIP
    ...     batch.indices, batch.features["pre_logits"].shape, batch.failed
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import progress
from .data.decode import DecodePolicy
from .data.decode_pool import DecodePool
from .data.preprocess import Preprocess
from .data.worker import Decoded, Failed
from .engines.builtin import default_workers
from .runtimes import Runtime


@dataclass
class EmbeddedBatch:
    """Features of the inputs at ``indices`` (positions in the caller's list), and the ones that failed."""

    indices: list[int]
    features: dict[str, np.ndarray]
    failed: list[tuple[int, str, str]] = field(default_factory=list)  #: (index, reason, message)


def decode_workers_for(n_files: int, batch_size: int, workers: int | None = None) -> int:
    """Decode processes for ``n_files``: the extract default, but no more than there are batches (at least 1)."""
    wanted = default_workers() if workers is None else int(workers)
    return max(1, min(wanted, math.ceil(n_files / max(1, batch_size)))) if wanted > 0 else 0


def _decoded_batches(
    paths: Sequence[str | os.PathLike | tuple],
    preprocess: Preprocess,
    policy: DecodePolicy | None,
    batch_size: int,
    workers: int,
    pool: DecodePool | None = None,
) -> Iterator[tuple[list[Decoded], list[Failed]]]:
    """``(decoded, failed)`` per batch of ``paths`` (positions as ids), decoded by ``workers`` processes
    (or by ``pool``, left open), in order."""
    items = [(str(i), p if isinstance(p, tuple) else os.fspath(p), 0) for i, p in enumerate(paths)]
    batches = [items[s : s + batch_size] for s in range(0, len(items), batch_size)]
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(DecodePool(workers))
        pool.use(preprocess.to_dict(), policy or DecodePolicy())
        for _, results in pool.map(batches):
            yield ([r for r in results if isinstance(r, Decoded)], [r for r in results if isinstance(r, Failed)])


def embed_files(
    runtime: Runtime,
    paths: Sequence[str | os.PathLike | tuple],
    *,
    preprocess: Preprocess,
    policy: DecodePolicy | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    label: str | None = None,
) -> Iterator[EmbeddedBatch]:
    """Decode ``paths`` in worker processes and embed them with ``runtime``, batch by batch, in order.

    A path may also be a container locator (a sample of a shard or a Parquet file, as
    :func:`deepfeat.sources.expand_inputs` gives them). ``workers=0`` decodes in this process (no
    isolation from crashing codecs). ``label``: show progress under this name (images done of all).
    """
    if not paths:
        return
    if label is not None:
        yield from progress.track(
            embed_files(runtime, paths, preprocess=preprocess, policy=policy, batch_size=batch_size, workers=workers),
            label,
            total=len(paths),
            unit="img",
            size=lambda e: len(e.indices) + len(e.failed),
        )
        return
    n_workers = decode_workers_for(len(paths), batch_size, workers)
    for ok, failed in _decoded_batches(paths, preprocess, policy, batch_size, n_workers):
        feats: dict[str, Any] = runtime(np.stack([d.pixels[0] for d in ok])) if ok else {}
        yield EmbeddedBatch([int(d.id) for d in ok], feats, [(int(r.id), r.reason, r.message) for r in failed])


def decode_pixels(
    locators: Sequence[str | os.PathLike | tuple],
    *,
    preprocess: Preprocess,
    policy: DecodePolicy | None = None,
    workers: int = 1,
    pool: DecodePool | None = None,
) -> np.ndarray:
    """The view-0 pixels (N x H x W x 3 uint8) of the inputs that decode, in order; failures are left out.

    Decoded in a worker process as ``extract`` decodes (``workers=0``: in this process), or by the
    workers of an open ``pool`` (split evenly between them), e.g. the sample the precision guard
    measures (:mod:`deepfeat.runtimes.guard`).
    """
    if pool is not None:
        workers = max(1, pool.workers)
        batch_size = max(1, math.ceil(len(locators) / workers))
    else:
        workers, batch_size = min(1, max(0, workers)), max(1, len(locators))
    ok = [
        d.pixels[0] for batch, _ in _decoded_batches(locators, preprocess, policy, batch_size, workers, pool) for d in batch
    ]
    h, w = preprocess.input_size
    return np.stack(ok) if ok else np.zeros((0, h, w, 3), np.uint8)

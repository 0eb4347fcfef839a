"""The local engine: decode in worker processes, forward in this process, commit part by part."""
from __future__ import annotations

import collections
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..data.decode import DecodePolicy
from ..data.decode_pool import DecodePool
from ..sources.items import SourceItem
from ..sources.table import as_table
from ..store import layout
from ..store.manifest import Manifest
from .parts import PartBuilder, add_batch, count_new, part_bounds, pending_mask

if TYPE_CHECKING:  # pragma: no cover
    from ..runtimes import Runtime

log = logging.getLogger(__name__)


def run_local(plan: Any, pending: Sequence[SourceItem], out: str, manifest: Manifest, *, batch_size: int,
              workers: int, runtime: "Runtime", policy: DecodePolicy,
              progress: Callable[[dict[str, Any]], None] | None = None,
              part_seconds: float | None = None) -> tuple[int, int, int]:
    """Process ``pending`` inputs into committed parts with ``runtime``. Returns (embedded, failed, parts).

    A part is committed when its planned inputs (:func:`~deepfeat.engines.parts.part_bounds`) are done, or earlier, at a
    batch boundary, once it has been open ``part_seconds`` (so an interrupt loses at most about
    that much work); the rest of its inputs then start the next part. Batches are cut from the
    parts planned over *all* discovered inputs and keep only the pending ones, so an image is
    always computed in the same batch -- features do not depend on where a run was interrupted
    or where time closed a part (runtimes need not be batch-size independent).
    """
    if not pending:
        return 0, 0, 0
    items = as_table(plan.discovery.items)
    todo = pending_mask(items, pending)
    tagged: collections.deque[tuple[bool, list[SourceItem]]] = collections.deque()  # (ends its chunk, items)

    def batches() -> Iterator[list[tuple[str, Any, int]]]:
        """The decode batches, cut part by part as the pool asks for them (never the whole job at once)."""
        for start, stop in part_bounds(items.groups(), plan.part_size):
            cut = [idx for s in range(start, stop, batch_size)
                   if len(idx := np.arange(s, min(stop, s + batch_size)) if todo is None
                          else s + np.flatnonzero(todo[s:min(stop, s + batch_size)]))]
            for k, idx in enumerate(cut):
                chosen = [items[int(i)] for i in idx]
                tagged.append((k == len(cut) - 1, chosen))
                yield [(it.id, it.locator, plan.views_for(it)) for it in chosen]

    first = manifest.next_index()
    names: list[str] = []
    builder: PartBuilder | None = None
    opened = 0.0
    augment = (plan.augment, plan.augment_seed) if plan.views else None
    with DecodePool(workers, plan.backbone.preprocess.to_dict(), policy, augment=augment) as pool:
        for _, results in pool.map(batches()):
            last, chosen = tagged.popleft()
            if builder is None:
                names.append(layout.part_name(first + len(names)))
                builder = PartBuilder(names[-1], [], plan.layers)
                opened = time.monotonic()
            builder.items.update((it.id, it) for it in chosen)
            n_ok, n_failed = add_batch(builder, runtime, results)
            if progress:
                progress({"phase": "batch", "done": len(results), "failed": n_failed})
            if last or (part_seconds is not None and time.monotonic() - opened >= part_seconds):
                manifest.commit(builder.write(out))
                if progress:
                    progress({"phase": "part", "name": builder.name})
                builder = None
    return count_new(manifest, names)

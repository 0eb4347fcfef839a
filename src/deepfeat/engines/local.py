"""The local engine: decode in worker processes, forward in this process, commit part by part.

A runtime on the CPU computes on the cores the decoders use: decoding and the runtime then take
turns (:func:`alternates`), one batch per core decoded, then run, each on every core -- run side by
side, a decode process preempts one of the runtime's threads and the others wait for it at every
layer (measured, docs/DECISIONS.md). On a GPU both overlap, and unless the user fixed ``workers``
the number of decode processes is balanced against the runtime once the first part is committed
(:func:`balance_workers`): from the CPU seconds a worker spent per image and the seconds the
runtime spent per image over the batches so far. Which worker decodes which batch never changes
what a part contains.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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

#: batches measured before the decode workers are balanced (at the first part boundary after them)
BALANCE_AFTER_BATCHES = 4
#: decode capacity kept above what the runtime consumes (rates drift: image sizes, other load)
BALANCE_HEADROOM = 1.25
#: the most decode processes that take turns with a CPU runtime (one per core up to this)
ALTERNATE_MAX_WORKERS = 32


def alternates(device: str) -> bool:
    """Whether decoding takes turns with the runtime instead of overlapping it: the runtime computes
    on the same CPU cores.

    Example:
        >>> alternates("cpu"), alternates("cuda:0")
        (True, False)
    """
    return device == "cpu"


def start_decoders(settings: Any) -> DecodePool | None:
    """Start the run's decode workers now (``extract`` calls it before loading the model, so their
    start-up overlaps it), as ``settings.decode_pool``; None when decoding runs in this process.

    A CPU run by default uses one worker per core (:func:`alternates`); a forced ``workers`` is kept.
    """
    if settings.workers == 0:
        return None
    alternate = alternates(settings.device)
    if alternate and settings.balance_workers:
        settings.workers = max(1, min(ALTERNATE_MAX_WORKERS, os.cpu_count() or 1))
    pool = DecodePool(settings.workers, alternate=alternate).start()
    settings.decode_pool = pool
    return pool


@dataclass(frozen=True)
class Balance:
    """The decode workers a run used, and why (one line in the run's summary)."""

    workers: int
    #: "forced" (the user's --workers), "measured" (balanced on the rates below), "default" (too few
    #: batches to measure: the engine's default) or "one per core" (taking turns with a CPU runtime)
    how: str
    decode_s: float | None = None  #: CPU seconds a decode worker spent per image (median over batches)
    forward_s: float | None = None  #: seconds the runtime spent per image (median over batches)
    alternate: bool = False  #: decoding took turns with the runtime (:func:`alternates`)

    def summary(self) -> str:
        """e.g. ``2 decode workers (measured: decode 4.4 ms/img per worker, runtime 2.9 ms/img)`` or
        ``2 decode workers (one per core, taking turns with the runtime)``."""
        text = f"{self.workers} decode worker{'s' if self.workers != 1 else ''} ({self.how}"
        if self.alternate:
            text += ", taking turns with the runtime"
        if self.decode_s is not None and self.forward_s is not None:
            text += f": decode {self.decode_s * 1e3:.1f} ms/img per worker, runtime {self.forward_s * 1e3:.1f} ms/img"
        return text + ")"


def balance_workers(decode_s: float, forward_s: float, cores: int, headroom: float = BALANCE_HEADROOM) -> int:
    """Decode workers that keep the runtime fed: the runtime takes an image every ``forward_s`` seconds,
    a worker decodes one every ``decode_s`` CPU seconds, so ``decode_s / forward_s`` workers keep up
    (times ``headroom``); at least 1, at most ``cores`` (more processes than cores decode no faster).

    Example:
        >>> balance_workers(0.0044, 0.0029, cores=2)   # decode slower than the runtime: both cores
        2
        >>> balance_workers(0.0021, 0.0029, cores=16)
        1
    """
    if forward_s <= 0 or decode_s <= 0:
        return max(1, cores)
    return int(min(max(1, cores), max(1, math.ceil(decode_s / forward_s * headroom))))


def measured_balance(
    timings: Sequence[tuple[float, int]], forward: Sequence[tuple[float, int]], cores: int
) -> Balance | None:
    """:func:`balance_workers` on measured ``(seconds, images)`` batches of decoding and of the runtime
    (medians of the per-image times, so a worker's first batch -- imports, caches -- does not decide);
    None with fewer than :data:`BALANCE_AFTER_BATCHES` batches of each."""

    def per_image(batches: Sequence[tuple[float, int]]) -> float:
        return statistics.median(sec / n for sec, n in batches if n > 0)

    if min(sum(1 for _, n in timings if n), sum(1 for _, n in forward if n)) < BALANCE_AFTER_BATCHES:
        return None
    decode_s, forward_s = per_image(timings), per_image(forward)
    return Balance(balance_workers(decode_s, forward_s, cores), "measured", decode_s, forward_s)


def run_local(
    plan: Any,
    pending: Sequence[SourceItem],
    out: str,
    manifest: Manifest,
    *,
    batch_size: int,
    workers: int,
    runtime: "Runtime",
    policy: DecodePolicy,
    progress: Callable[[dict[str, Any]], None] | None = None,
    part_seconds: float | None = None,
    balance: bool = False,
    chosen: Callable[[Balance], None] | None = None,
    pool: DecodePool | None = None,
) -> tuple[int, int, int]:
    """Process ``pending`` inputs into committed parts with ``runtime``. Returns (embedded, failed, parts).

    ``balance``: ``workers`` is the engine's default, and the decode workers are balanced against the
    runtime once the first part is committed (:func:`measured_balance`; not when decoding takes turns
    with a CPU runtime: :func:`alternates`); ``chosen`` receives what ran. ``pool``: decode workers
    already started (:func:`start_decoders`), used and left open; else the run starts its own.

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
            cut = [
                idx
                for s in range(start, stop, batch_size)
                if len(
                    idx := np.arange(s, min(stop, s + batch_size))
                    if todo is None
                    else s + np.flatnonzero(todo[s : min(stop, s + batch_size)])
                )
            ]
            for k, idx in enumerate(cut):
                batch_items = [items[int(i)] for i in idx]
                tagged.append((k == len(cut) - 1, batch_items))
                yield [(it.id, it.locator, plan.views_for(it)) for it in batch_items]

    first = manifest.next_index()
    names: list[str] = []
    builder: PartBuilder | None = None
    opened = 0.0
    augment = (plan.augment, plan.augment_seed) if plan.views else None
    alternate = pool.alternate if pool is not None else alternates(runtime.device)
    if alternate:
        decided = Balance(workers, "one per core" if balance else "forced", alternate=True)
    else:
        decided = Balance(workers, "default" if balance else "forced")
    forward: list[tuple[float, int]] = []
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(DecodePool(workers, alternate=alternate))
        pool.use(plan.backbone.preprocess.to_dict(), policy, augment)
        for _, results in pool.map(batches()):
            last, batch_items = tagged.popleft()
            if builder is None:
                names.append(layout.part_name(first + len(names)))
                builder = PartBuilder(names[-1], [], plan.layers)
                opened = time.monotonic()
            builder.items.update((it.id, it) for it in batch_items)
            started = time.perf_counter()
            n_ok, n_failed = add_batch(builder, runtime, results)
            forward.append((time.perf_counter() - started, n_ok))
            if progress:
                progress({"phase": "batch", "done": len(results), "failed": n_failed})
            if last or (part_seconds is not None and time.monotonic() - opened >= part_seconds):
                manifest.commit(builder.write(out))
                if progress:
                    progress({"phase": "part", "name": builder.name})
                builder = None
                if balance and decided.how == "default":
                    measured = measured_balance(pool.timings, forward, os.cpu_count() or 1)
                    if measured is not None:
                        decided = measured
                        log.info("balanced: %s", decided.summary())
                        pool.resize(decided.workers)
    if chosen is not None:
        chosen(decided)
    return count_new(manifest, names)

"""The local engine: decode in worker processes, forward in this process, commit part by part.

A runtime on the CPU computes on the cores the decoders use. Run side by side, a decode process
preempts one of the runtime's threads and the others wait for it at every layer; taking turns (a
round of one batch per worker decoded, then the runtime on every core) avoids that but leaves the
cores idle while the one waits for the other. Which is faster depends on the image and the model
(measured: taking turns won at 224 px photos, lost at 96 px Fashion-MNIST), so a CPU run times both
over its first batches (:class:`FeedTrial`) and keeps the faster; one decode worker per core by
default. With the runtime on a GPU both always overlap, and unless the user fixed ``workers`` the
number of decode processes is balanced against the runtime once the first part is committed
(:func:`balance_workers`): from the CPU seconds a worker spent per image and the seconds the
runtime spent per image over the batches so far. Which worker decodes which batch, and how they
are fed, never changes what a part contains.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
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
from .parts import PartBuilder, add_batch, container_record, count_new, part_bounds, pending_mask

if TYPE_CHECKING:  # pragma: no cover
    from ..runtimes import Runtime

log = logging.getLogger(__name__)

#: batches measured before the decode workers are balanced (at the first part boundary after them)
BALANCE_AFTER_BATCHES = 4
#: decode capacity kept above what the runtime consumes (rates drift: image sizes, other load)
BALANCE_HEADROOM = 1.25
#: the most decode processes a CPU run starts by default (one per core up to this)
CPU_MAX_WORKERS = 32
#: batches of a CPU run not timed at its start (first calls, caches)
TRIAL_WARMUP = 2
#: batches timed in each way of feeding a CPU runtime (taking turns, then overlapped)
TRIAL_BATCHES = 6


def shares_cores(device: str) -> bool:
    """Whether the runtime computes on the CPU cores the decoders use (then :class:`FeedTrial` decides
    how they are fed).

    Example:
        >>> shares_cores("cpu"), shares_cores("cuda:0")
        (True, False)
    """
    return device == "cpu"


def start_decoders(settings: Any, import_ahead: bool = True) -> DecodePool | None:
    """Start the run's decode workers now (``extract`` calls it before loading the model, so their
    start-up overlaps it), as ``settings.decode_pool``; None when decoding runs in this process.

    A CPU run by default uses one worker per core (:func:`shares_cores`); a forced ``workers`` is kept.
    One worker starts now, and imports torch ahead if ``import_ahead`` (while the model loads, a core
    is free for it); ``extract`` starts the others once discovery has counted the job's batches (at
    most one per batch), so a job of one batch (a notebook's few images, most of the test suite) does
    not pay a worker start-up per core.
    """
    if settings.workers == 0:
        return None
    if shares_cores(settings.device) and settings.balance_workers:
        settings.workers = max(1, min(CPU_MAX_WORKERS, os.cpu_count() or 1))
    pool = DecodePool(settings.workers).import_ahead(import_ahead).start(1)
    settings.decode_pool = pool
    return pool


class FeedTrial:
    """Times the two ways of feeding a CPU runtime over a run's first batches and keeps the faster.

    After :data:`TRIAL_WARMUP` batches, and once every decode worker of the pool is up
    (``pool.all_warm()``: a worker still starting up would slow one window, not the other),
    :data:`TRIAL_BATCHES` are fed taking turns (``pool.alternate``), one batch lets the switch
    settle, :data:`TRIAL_BATCHES` more are fed overlapped; the rate of each is images over the wall
    time from the end of the batch before its window to the end of its last batch (decode, forward,
    commits: all the run does). A run that ends during the trial keeps the way it was in, and its
    summary says so.

    Example:
        >>> class Pool:
        ...     alternate = False
        ...     def all_warm(self): return True
        >>> clock = iter(range(100))
        >>> trial = FeedTrial(Pool(), clock=lambda: next(clock))
        >>> for _ in range(15): trial.taken(32)
        >>> trial.rates, trial.pool.alternate     # 192 images in 6 ticks each way: a tie keeps turns
        ({'turns': 32.0, 'overlapped': 32.0}, True)
    """

    def __init__(self, pool: Any, clock: Callable[[], float] = time.perf_counter) -> None:
        self.pool, self.clock = pool, clock
        pool.alternate = True
        self.rates: dict[str, float] = {}
        self._batches = self._images = 0
        self._since = 0.0
        self._warmed = False  # the warm-up is over (at least TRIAL_WARMUP batches and every worker up)

    @property
    def done(self) -> bool:
        return len(self.rates) == 2

    def taken(self, images: int) -> None:
        """One batch of ``images`` went through the runtime (and its part, if any, was committed)."""
        if self.done:
            return
        self._batches += 1
        if not self._warmed:
            if self._batches < TRIAL_WARMUP or not self.pool.all_warm():
                return
            self._warmed, self._batches = True, TRIAL_WARMUP  # the first window starts after this batch
        k, now = self._batches, self.clock()
        turns_end = TRIAL_WARMUP + TRIAL_BATCHES
        if k in (TRIAL_WARMUP, turns_end + 1):  # a window starts after this batch
            self._since, self._images = now, 0
            return
        self._images += images
        if k == turns_end:
            self.rates["turns"] = self._images / max(now - self._since, 1e-9)
            self.pool.alternate = False
        elif k == turns_end + 1 + TRIAL_BATCHES:
            self.rates["overlapped"] = self._images / max(now - self._since, 1e-9)
            self.pool.alternate = self.rates["turns"] >= self.rates["overlapped"]


class ContainerProgress:
    """Which containers a part's commit finishes: the part record names the containers it holds inputs
    of (by :meth:`~deepfeat.sources.table.ItemTable.container_keys`) and marks those whose last input to
    do in this run it holds, so that a resume skips finished containers without reading their ledgers
    (:func:`deepfeat.extraction.finished_containers`). The local engine commits parts in input order,
    so every input of a container before its last one to do is committed by then."""

    def __init__(self, items: Any, todo: np.ndarray | None) -> None:
        self.keys = items.container_keys()
        starts, stops, codes = items.container_runs()
        self.last: dict[int, int] = {}  # container code -> the row after its last input to do
        for a, b, c in zip(starts.tolist(), stops.tolist(), codes.tolist()):
            if todo is None:
                end = b
            else:
                to_do = np.flatnonzero(todo[a:b])
                if not len(to_do):
                    continue
                end = a + int(to_do[-1]) + 1
            self.last[c] = max(self.last.get(c, 0), end)

    def record(self, holds: set[int], done_upto: int) -> dict[str, bool]:
        """``{key: finished}`` for a part holding inputs of containers ``holds``, every input before row
        ``done_upto`` done; empty when one of them has no key (a resume then reads the part's ledger)."""
        return container_record(self.keys, holds, lambda c: done_upto >= self.last.get(c, 0))


@dataclass(frozen=True)
class Balance:
    """The decode workers a run used, and why (one line in the run's summary)."""

    workers: int
    #: "forced" (the user's --workers), "measured" (balanced on the rates below), "default" (too few
    #: batches to measure: the engine's default) or "one per core" (a CPU run's default)
    how: str
    decode_s: float | None = None  #: CPU seconds a decode worker spent per image (median over batches)
    forward_s: float | None = None  #: seconds the runtime spent per image (median over batches)
    #: a CPU run: ``"taking turns"`` or ``"overlapped"`` (what :class:`FeedTrial` kept; ``"taking turns, then
    #: overlapped"`` when the run ended during the trial), and the rates it timed
    feed: str | None = None
    feed_rates: dict[str, float] | None = None

    def summary(self) -> str:
        """e.g. ``2 decode workers (measured: decode 4.4 ms/img per worker, runtime 2.9 ms/img)`` or
        ``2 decode workers (one per core, taking turns with the runtime: measured 210 img/s taking turns,
        180 overlapped)``."""
        text = f"{self.workers} decode worker{'s' if self.workers != 1 else ''} ({self.how}"
        if self.feed is not None:
            text += f", {self.feed} with the runtime"
            rates = self.feed_rates or {}
            if len(rates) == 2:
                text += f": measured {rates['turns']:,.0f} img/s taking turns, {rates['overlapped']:,.0f} overlapped"
            else:
                text += ": the run ended before both ways were timed"
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
    runtime once the first part is committed (:func:`measured_balance`); a runtime on the CPU is fed
    as :class:`FeedTrial` measures instead (:func:`shares_cores`). ``chosen`` receives what ran.
    ``pool``: decode workers already started (:func:`start_decoders`), used and left open; else the
    run starts its own.

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
    finishing = ContainerProgress(items, todo)
    # (ends its chunk, items, the row after its last, the containers it holds inputs of)
    tagged: collections.deque[tuple[bool, list[SourceItem], int, np.ndarray]] = collections.deque()

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
                tagged.append((k == len(cut) - 1, batch_items, int(idx[-1]) + 1, np.unique(items.cont[idx])))
                yield [(it.id, it.locator, plan.views_for(it)) for it in batch_items]

    first = manifest.next_index()
    names: list[str] = []
    builder: PartBuilder | None = None
    opened = 0.0
    augment = (plan.augment, plan.augment_seed) if plan.views else None
    cpu = shares_cores(runtime.device)
    decided = Balance(workers, ("one per core" if cpu else "default") if balance else "forced")
    forward: list[tuple[float, int]] = []
    with contextlib.ExitStack() as stack:
        if pool is None:
            pool = stack.enter_context(DecodePool(workers))
        pool.use(plan.backbone.preprocess.to_dict(), policy, augment)
        trial = FeedTrial(pool) if cpu and workers > 0 else None
        for _, results in pool.map(batches()):
            last, batch_items, done_upto, touched = tagged.popleft()
            if builder is None:
                names.append(layout.part_name(first + len(names)))
                builder = PartBuilder(names[-1], [], plan.layers)
                opened = time.monotonic()
                holds: set[int] = set()
            holds.update(touched.tolist())
            builder.items.update((it.id, it) for it in batch_items)
            started = time.perf_counter()
            n_ok, n_failed = add_batch(builder, runtime, results)
            forward.append((time.perf_counter() - started, n_ok))
            if progress:
                progress({"phase": "batch", "done": len(results), "failed": n_failed})
            if last or (part_seconds is not None and time.monotonic() - opened >= part_seconds):
                record = builder.write(out)
                record.containers = finishing.record(holds, done_upto)
                manifest.commit(record)
                if progress:
                    progress({"phase": "part", "name": builder.name})
                builder = None
                if balance and decided.how == "default" and trial is None:
                    measured = measured_balance(pool.timings, forward, os.cpu_count() or 1)
                    if measured is not None:
                        decided = measured
                        log.info("balanced: %s", decided.summary())
                        pool.resize(decided.workers)
            if trial is not None and not trial.done:
                trial.taken(len(results))
                if trial.done:
                    log.info("feeding the runtime: %s", trial.rates)
    if trial is not None:
        feed = "taking turns" if pool.alternate else "overlapped"
        if not trial.done and not pool.alternate:  # the run ended in the trial's second window
            feed = "taking turns, then overlapped"
        decided = dataclasses.replace(decided, feed=feed, feed_rates=dict(trial.rates))
    if chosen is not None:
        chosen(decided)
    return count_new(manifest, names)

"""Parallel decoding with ordered results, prefetch, and recovery from dead workers.

A worker that dies (segfault in a codec, OOM kill) breaks the process pool. The pool is
rebuilt, the affected batch is retried once, then its items are tried one by one; an item
that still kills its worker is failed with reason ``worker_crash``. Nothing hangs.
"""
from __future__ import annotations

import collections
import logging
import multiprocessing as mp
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..data.decode import DecodePolicy
from ..data.worker import Decoded, Failed, prepare_batch, watch_parent

log = logging.getLogger(__name__)

Item = tuple[str, str, int]  # (id, path, number of augmented views)


class DecodePool:
    """Decode batches of ``(id, path)`` in worker processes, yielding results in order.

    ``workers=0`` decodes in the calling process (no parallelism, simplest to debug).
    """

    def __init__(self, workers: int, preprocess: dict[str, Any], policy: DecodePolicy,
                 augment: tuple[str, int] | None = None, prefetch: int | None = None) -> None:
        self.workers = max(0, int(workers))
        self.args = (preprocess, policy, augment)
        self.prefetch = prefetch or max(2, 2 * self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                         initializer=watch_parent, initargs=(os.getpid(),))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()
            pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _submit(self, batch: Sequence[Item]) -> Future:
        pool = self._pool or self._new_pool()
        try:
            return pool.submit(prepare_batch, list(batch), *self.args)
        except BrokenProcessPool:  # pragma: no cover - submit on a pool broken meanwhile
            return self._new_pool().submit(prepare_batch, list(batch), *self.args)

    def _recover(self, batch: Sequence[Item]) -> list[Decoded | Failed]:
        """The pool died on ``batch``: retry it once, then item by item."""
        log.warning("a decode worker died; retrying a batch of %d inputs", len(batch))
        self._new_pool()
        try:
            return self._submit(batch).result()
        except BrokenProcessPool:
            pass
        results: list[Decoded | Failed] = []
        for item in batch:
            self._new_pool()
            try:
                results.extend(self._submit([item]).result())
            except BrokenProcessPool:
                results.append(Failed(item[0], "worker_crash", "the decode worker died on this input twice"))
        self._new_pool()
        return results

    def map(self, batches: Iterable[Sequence[Item]]) -> Iterator[tuple[Sequence[Item], list[Decoded | Failed]]]:
        """Yield ``(batch, results)`` in input order, keeping ``prefetch`` batches in flight."""
        if self.workers == 0:
            for batch in batches:
                yield batch, prepare_batch(list(batch), *self.args)
            return
        queue: collections.deque[tuple[Sequence[Item], Future]] = collections.deque()
        it = iter(batches)
        exhausted = False
        while True:
            while not exhausted and len(queue) < self.prefetch:
                try:
                    batch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                queue.append((batch, self._submit(batch)))
            if not queue:
                return
            batch, fut = queue.popleft()
            try:
                results = fut.result()
            except BrokenProcessPool:
                results = self._recover(batch)
                # Everything still in flight died with the pool: resubmit it.
                queue = collections.deque((b, self._submit(b)) for b, _ in queue)
            yield batch, results

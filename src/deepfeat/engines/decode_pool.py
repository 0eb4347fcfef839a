"""Parallel decoding with ordered results, prefetch, and recovery from dead workers.

A worker that dies (segfault in a codec, OOM kill) breaks the process pool. The pool is
rebuilt, the affected batch is retried once, then its items are tried one by one; an item
that still kills its worker is failed with reason ``worker_crash``. Nothing hangs.
"""
from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing.context
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..data.decode import DecodePolicy
from ..data.worker import Decoded, Failed, prepare_batch, watch_parent

log = logging.getLogger(__name__)

Item = tuple[str, str, int]  # (id, path, number of augmented views)


@contextlib.contextmanager
def _main_module_hidden() -> "collections.abc.Iterator[None]":
    """Start processes without telling them about ``__main__``.

    A spawned process normally re-imports the parent's main script (as ``__mp_main__``): a
    script without an ``if __name__ == "__main__":`` guard then runs again in every worker
    (a second extract on the same store, a lock error, a pool rebuilt forever). Decode workers
    need nothing from ``__main__`` -- their task and arguments live in deepfeat -- so the pool
    starts them as if the parent were interactive, which works from a plain script, a notebook
    and ``python -c`` alike.
    """
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned decode worker that does not re-run the parent's main script."""

    def start(self) -> None:
        with _main_module_hidden():
            super().start()


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess  # type: ignore[assignment]


WORKER_CONTEXT = _WorkerContext()


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
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=WORKER_CONTEXT,
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

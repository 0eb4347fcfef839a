"""Parallel decoding with ordered results, prefetch, and recovery from dead workers.

Each decode worker is a spawned process with its own pipe; the parent sends it batches and
reads its results, and there is no background thread. So nothing can block the parent's exit:
:meth:`DecodePool.close` terminates the workers (SIGTERM, then SIGKILL after a grace period)
and returns within a few seconds whatever state they were in.

Ctrl-C: a terminal sends SIGINT to the whole process group. Workers ignore SIGINT from the
moment they exist (the parent blocks SIGINT while it starts one, the worker ignores it before
unblocking), so they never print a ``KeyboardInterrupt`` traceback; only the parent handles
the interrupt, and its ``finally`` / ``with`` blocks close the pool.

A worker that dies (segfault in a codec, OOM kill) is replaced; each batch it held is retried
once in a fresh worker, then its items are tried one by one; an item that still kills its
worker is failed with reason ``worker_crash``. Nothing hangs.

A worker says when it is ready (:data:`READY`, once its interpreter is up: 0.3 s on 2 cores).
Batches go to ready workers first, so a job does not wait for a worker that is still starting while
another could decode its batch (before, a short job's second batch waited the whole start-up of the
second worker).

torch (the resizer of a downscale) takes a worker 2-3 s of a core to import. A worker imports it in a
background thread ahead of its batches only when told (:meth:`DecodePool.import_ahead`: ``extract``
tells the worker it starts before the model loads, and the others once the first input's size says
the job downscales with torch); a job that never needs torch (small images upscaled by Pillow, as
Fashion-MNIST at 96 px) never pays for it, and one batch that needs it unannounced imports it then.
Each result says whether a background import is still running (:meth:`DecodePool.all_warm`: the local
engine times the ways to feed a CPU runtime only once none is, everywhere).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import logging
import multiprocessing.connection
import multiprocessing.context
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from ..interrupts import sigint_blocked
from .decode import DecodePolicy
from .worker import Decoded, Failed, prepare_batch, watch_parent

log = logging.getLogger(__name__)

Item = tuple[str, Any, int]  # (id, locator: a path or a container reference, number of augmented views)
Results = list[Decoded | Failed]

#: seconds a worker gets to exit after SIGTERM before it is killed
TERMINATE_GRACE_S = 2.0
#: a worker's first message: its interpreter is up and it takes batches (:data:`WARM_IMPORTS` may still be loading)
READY = ("ready",)
#: a message to a worker (no reply): import :data:`WARM_IMPORTS` in a background thread now
IMPORT = ("import",)


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
    saved: dict[str, Any] = {k: main.__dict__[k] for k in ("__file__", "__spec__") if k in main.__dict__}
    try:
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        yield
    finally:
        main.__dict__.pop("__spec__", None)
        main.__dict__.update(saved)


class _WorkerProcess(multiprocessing.context.SpawnProcess):
    """A spawned decode worker that does not re-run the parent's main script and ignores SIGINT."""

    def start(self) -> None:
        # multiprocessing starts its resource tracker with the first spawned process, and unblocks
        # SIGINT in this thread once it has (whatever the mask was): started first, outside the block,
        # so the worker is spawned with SIGINT still blocked (interrupted during its interpreter's
        # start-up, a worker printed a KeyboardInterrupt traceback)
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        with _main_module_hidden(), sigint_blocked():
            super().start()


class _WorkerContext(multiprocessing.context.SpawnContext):
    Process = _WorkerProcess


#: the spawn context of every worker process deepfeat starts (decode workers, the pixel check's readers):
#: a worker does not re-run the parent's main script and is started with SIGINT blocked
WORKER_CONTEXT = _WorkerContext()


def worker_started(parent_pid: int) -> None:
    """First call in a process of :data:`WORKER_CONTEXT` (a pool's initializer): ignore SIGINT (the parent
    handles Ctrl-C and ends its workers) and exit when the parent dies."""
    if hasattr(signal, "pthread_sigmask"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    watch_parent(parent_pid)


#: modules a decode worker started ahead of its first batch imports while it waits (the torch resizer)
WARM_IMPORTS = ("torch",)


def _warm_imports(done: threading.Event) -> None:
    """Import :data:`WARM_IMPORTS` (those that are installed), then set ``done``."""
    for name in WARM_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    done.set()


def _worker_main(conn: multiprocessing.connection.Connection, parent_pid: int, warm: bool) -> None:
    """The body of a decode worker: send :data:`READY`, then receive ``(batch, args)`` and send back
    ``("ok", results, cpu_seconds, warm)`` (``warm``: no import ahead is running) or ``("error", exc)``;
    :data:`IMPORT` (no reply) starts the imports ahead.
    The argument ``warm``: import :data:`WARM_IMPORTS` in a background thread from the start (torch takes
    2-3 s; a batch that needs no torch, such as small images upscaled by Pillow, is decoded at once,
    and one that needs it waits for that import to end)."""
    worker_started(parent_pid)
    # One thread per decode process: torch (the resizer, loaded on first use) must not start a thread
    # per core in every worker beside the runtime's own threads.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    imported: threading.Event | None = None  # set once the imports ahead have ended; None: not asked for

    def import_ahead() -> threading.Event:
        done = threading.Event()
        threading.Thread(target=_warm_imports, args=(done,), name="deepfeat-decode-imports", daemon=True).start()
        return done

    if warm:
        imported = import_ahead()
    try:
        conn.send(READY)
    except (EOFError, OSError):
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent closed the pool (or died)
            return
        if message is None:
            return
        if message == IMPORT:
            imported = imported or import_ahead()
            continue
        try:
            started = time.thread_time()
            batch, args = message
            results = prepare_batch(batch, *args)
            # + the CPU seconds it took, and whether no import ahead is running
            warmed = imported is None or imported.is_set()
            reply: tuple[Any, ...] = ("ok", results, time.thread_time() - started, warmed)
        except Exception as exc:  # noqa: BLE001 - e.g. EnvironmentFault: re-raised in the parent
            reply = ("error", exc)
        try:
            conn.send(reply)
        except (EOFError, OSError):
            return
        except Exception as exc:  # noqa: BLE001 - an exception that does not pickle
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


class _Worker:
    """One decode process, its end of the pipe, and the batches sent to it (in order)."""

    def __init__(self, warm: bool = False) -> None:
        parent_end, child_end = WORKER_CONTEXT.Pipe(duplex=True)
        self.proc = WORKER_CONTEXT.Process(
            target=_worker_main, args=(child_end, os.getpid(), warm), name="deepfeat-decode", daemon=True
        )
        try:
            self.proc.start()
        finally:
            child_end.close()
        self.conn = parent_end
        self.tasks: collections.deque[int] = collections.deque()
        #: the worker sent :data:`READY` (its first message); batches go to ready workers first
        self.ready = False
        #: the worker's latest result said no import ahead was running (read by :meth:`receive`)
        self.warm = False
        #: the worker was told to import ahead (at its start or by :meth:`import_ahead`)
        self.importing = warm

    def check_ready(self) -> bool:
        """Whether the worker is ready, reading its :data:`READY` if it has come (never blocks); False
        while it starts, and for a worker that died before it was ready (sending to it finds that out)."""
        if not self.ready:
            try:
                if self.conn.poll():
                    self._take_ready()
            except (EOFError, OSError):
                pass
        return self.ready

    def _take_ready(self) -> None:
        message = self.conn.recv()
        if message != READY:  # the protocol: READY comes before any result
            raise RuntimeError(f"a decode worker's first message was {message!r}, not {READY!r}")
        self.ready = True

    def send(self, index: int, batch: Sequence[Item], args: tuple[Any, ...]) -> bool:
        """Send a batch and how to decode it; False when the worker is gone."""
        try:
            self.conn.send((list(batch), args))
        except (OSError, EOFError):
            return False
        self.tasks.append(index)
        return True

    def import_ahead(self) -> None:
        """Tell the worker to import :data:`WARM_IMPORTS` now (once; a dead worker is found out later)."""
        if not self.importing:
            with contextlib.suppress(OSError, EOFError):
                self.conn.send(IMPORT)
            self.importing = True

    def receive(self) -> tuple[Any, ...] | None:
        """The next reply (after :data:`READY`, read here if it is still unread), or None when the worker
        died before sending it whole. Blocks until the reply comes."""
        try:
            if not self.ready:
                self._take_ready()
            reply = cast("tuple[Any, ...]", self.conn.recv())
        except (EOFError, OSError):
            return None
        if reply[0] == "ok":
            self.warm = bool(reply[3])
        return reply

    def stop(self) -> None:
        """Close the pipe, terminate the process (kill it after a grace period); never blocks long."""
        _stop_all([self])


def _stop_all(workers: Sequence[_Worker]) -> None:
    for w in workers:
        with contextlib.suppress(OSError):
            w.conn.close()
        if w.proc.is_alive():
            with contextlib.suppress(OSError):
                w.proc.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_S
    for w in workers:
        w.proc.join(max(0.0, deadline - time.monotonic()))
        if w.proc.is_alive():
            log.warning("decode worker %s did not stop on SIGTERM; killing it", w.proc.pid)
            with contextlib.suppress(OSError):
                w.proc.kill()
            w.proc.join(TERMINATE_GRACE_S)
        with contextlib.suppress(ValueError, OSError):
            w.proc.close()


def stop_resource_tracker() -> None:
    """End multiprocessing's resource tracker, started with the first spawned worker, and wait for it.

    It is a process of the command's process group that otherwise exits only after the command (when
    its pipe closes), so an interrupted command seemed to leave a process behind (3 of 8 interrupted
    extracts). Called once the command is over (``deepfeat.cli.main``), never while workers may be
    spawned; a later pool starts a new one.
    """
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    with contextlib.suppress(Exception):  # a private API: if it changes, the tracker exits after us as before
        tracker._stop()  # type: ignore[union-attr]


class DecodePool:
    """Decode batches of ``(id, locator, views)`` in worker processes, yielding results in order.

    ``workers=0`` decodes in the calling process (no parallelism, simplest to debug). Use it as
    a context manager (or call :meth:`close`): leaving it, normally or by an exception such as
    ``KeyboardInterrupt``, ends every worker.

    A pool can be started before its preprocessing is known (:meth:`start`, then :meth:`use`):
    ``extract`` starts its workers before it loads the model, so their start-up (a Python
    interpreter and torch, 1-2 s each) overlaps the model load and the precision guard, and one
    pool decodes the guard's sample and the whole job.

    ``alternate``: batches go out in rounds of one per worker, and the next round only once the
    caller has taken every result of the last one -- decoding and the caller's work (a CPU runtime
    on every core) take turns instead of competing for the cores. It may change between two
    results; the local engine times both ways (``engines.local.FeedTrial``, docs/DECISIONS.md).
    """

    def __init__(
        self,
        workers: int,
        preprocess: dict[str, Any] | None = None,
        policy: DecodePolicy | None = None,
        augment: tuple[str, int] | None = None,
        prefetch: int | None = None,
        alternate: bool = False,
    ) -> None:
        self.workers = max(0, int(workers))
        self.args: tuple[Any, ...] = ()
        if preprocess is not None:
            self.use(preprocess, policy or DecodePolicy(), augment)
        self.prefetch = prefetch or max(2, 2 * self.workers)
        self._fixed_prefetch = prefetch is not None
        self.alternate = alternate
        #: workers started from now on import :data:`WARM_IMPORTS` ahead (:meth:`import_ahead`)
        self._import_ahead = False
        self._workers: list[_Worker] = []
        #: (CPU seconds, images) of every batch decoded so far, in the order they finished
        self.timings: list[tuple[float, int]] = []

    def use(self, preprocess: dict[str, Any], policy: DecodePolicy, augment: tuple[str, int] | None = None) -> None:
        """Decode the next batches with this preprocessing (a dict of :class:`~deepfeat.data.preprocess.Preprocess`),
        policy and augmentation."""
        self.args = (preprocess, policy, augment)

    def start(self, count: int | None = None) -> "DecodePool":
        """Start ``count`` workers now (default: all), which start up while the caller does other work
        (and import what decoding needs if :meth:`import_ahead` said so); the others start when a batch
        first needs them."""
        while len(self._workers) < min(self.workers, self.workers if count is None else count):
            self._workers.append(_Worker(self._import_ahead))
        return self

    def import_ahead(self, wanted: bool = True) -> "DecodePool":
        """Whether workers import :data:`WARM_IMPORTS` (torch, for the resizer) ahead of their batches:
        ``True`` tells the running workers to begin now and those started later to begin at once;
        ``False`` leaves it to the first batch that needs it in workers started from now on (an import
        already begun runs on)."""
        self._import_ahead = bool(wanted)
        if wanted:
            for w in self._workers:
                w.import_ahead()
        return self

    def resize(self, workers: int) -> None:
        """Use ``workers`` decode processes from now on (at least 1): more are started as batches need
        them; idle ones beyond the number are ended. Results and their order do not change."""
        self.workers = max(1, int(workers))
        if not self._fixed_prefetch:
            self.prefetch = max(2, 2 * self.workers)
        idle = [w for w in self._workers if not w.tasks][: max(0, len(self._workers) - self.workers)]
        for w in idle:
            self._workers.remove(w)
        _stop_all(idle)

    def all_warm(self) -> bool:
        """Whether the pool runs all its workers and the latest result of each said no import ahead was
        running (until then a worker's start-up takes CPU from the run: :class:`~deepfeat.engines.local.FeedTrial`
        waits for this before it times anything)."""
        return len(self._workers) >= self.workers and all(w.warm for w in self._workers)

    def close(self) -> None:
        """End every worker (terminated if busy); returns within a few seconds."""
        workers, self._workers = self._workers, []
        _stop_all(workers)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------ sending and receiving
    def _send(self, index: int, batches: dict[int, Sequence[Item]], done: dict[int, Results]) -> None:
        """Give batch ``index`` to the least busy ready worker, else to the least busy (the first started
        on a tie) of those still starting; start one if the pool is not full."""
        if not self.args:
            raise RuntimeError("DecodePool.use() must set the preprocessing before batches are sent")
        if len(self._workers) < self.workers:
            self._workers.append(_Worker(self._import_ahead))
        worker = min(self._workers, key=lambda w: (not w.check_ready(), len(w.tasks)))
        if not worker.send(index, batches[index], self.args):
            worker.tasks.append(index)
            self._died(worker, batches, done)

    def _poll(self, batches: dict[int, Sequence[Item]], done: dict[int, Results]) -> None:
        """Wait until some busy worker answers or dies; record what it sent."""
        busy = [w for w in self._workers if w.tasks]
        waitables: list[Any] = [w.conn for w in busy] + [w.proc.sentinel for w in busy]
        ready = set(multiprocessing.connection.wait(waitables))
        for w in busy:
            if w.conn in ready:
                if not w.ready and w.check_ready() and not w.conn.poll():
                    continue  # it said READY; its result is still to come
                reply = w.receive()
                if reply is None:
                    self._died(w, batches, done)
                    continue
                index = w.tasks.popleft()
                kind, value = reply[0], reply[1]
                if kind == "error":
                    raise value
                if len(reply) > 2:
                    self.timings.append((float(reply[2]), len(value)))
                done[index] = value
            elif w.proc.sentinel in ready and not w.conn.poll():
                self._died(w, batches, done)

    def _died(self, worker: _Worker, batches: dict[int, Sequence[Item]], done: dict[int, Results]) -> None:
        """A worker died: replace it, and recover every batch it held."""
        lost = [i for i in worker.tasks if i in batches]
        worker.tasks.clear()
        with contextlib.suppress(ValueError):
            self._workers.remove(worker)
        _stop_all([worker])
        for index in lost:
            done[index] = self._recover(batches[index])

    def _isolated(self, batch: Sequence[Item]) -> Results | None:
        """Decode ``batch`` in a fresh worker; None when it dies too. The worker joins the pool if it lives."""
        worker = _Worker(self._import_ahead)
        try:
            if not worker.send(-1, batch, self.args):
                _stop_all([worker])
                return None
            multiprocessing.connection.wait([worker.conn, worker.proc.sentinel])
            reply = worker.receive() if worker.conn.poll() else None
        except BaseException:  # e.g. KeyboardInterrupt: this worker is not in the pool yet
            _stop_all([worker])
            raise
        if reply is None:
            _stop_all([worker])
            return None
        worker.tasks.clear()
        if len(self._workers) < self.workers:
            self._workers.append(worker)
        else:
            _stop_all([worker])
        kind, value = reply[0], reply[1]
        if kind == "error":
            raise value
        return cast("list[Decoded | Failed] | None", value)

    def _recover(self, batch: Sequence[Item]) -> Results:
        """The worker died holding ``batch``: retry it once, then item by item."""
        log.warning("a decode worker died; retrying a batch of %d inputs", len(batch))
        results = self._isolated(batch)
        if results is not None:
            return results
        results = []
        for item in batch:
            one = self._isolated([item])
            results.extend(
                one if one is not None else [Failed(item[0], "worker_crash", "the decode worker died on this input twice")]
            )
        return results

    def _to_send(self, in_flight: int) -> int:
        """Batches to send now, with ``in_flight`` sent and not yet taken by the caller."""
        if self.alternate:
            return max(1, self.workers) if in_flight == 0 else 0
        return self.prefetch - in_flight

    # ------------------------------------------------------------------ the public iterator
    def map(self, batches: Iterable[Sequence[Item]]) -> Iterator[tuple[Sequence[Item], Results]]:
        """Yield ``(batch, results)`` in input order, keeping ``prefetch`` batches in flight (``alternate``:
        one round of a batch per worker, sent once the last round is all taken)."""
        if self.workers == 0:
            for batch in batches:
                started = time.thread_time()
                results = prepare_batch(list(batch), *self.args)
                self.timings.append((time.thread_time() - started, len(results)))
                yield batch, results
            return
        it = iter(batches)
        sent: dict[int, Sequence[Item]] = {}  # in flight or done, not yet yielded
        done: dict[int, Results] = {}
        next_send = next_yield = 0
        exhausted = False
        while True:
            for _ in range(0 if exhausted else self._to_send(next_send - next_yield)):
                try:
                    batch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                sent[next_send] = batch
                self._send(next_send, sent, done)
                next_send += 1
            if next_yield == next_send:
                return
            while next_yield not in done:
                self._poll(sent, done)
            yield sent.pop(next_yield), done.pop(next_yield)
            next_yield += 1

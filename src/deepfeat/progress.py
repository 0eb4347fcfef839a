"""One progress reporter for every long command: library code reports, the command line renders.

Library code (extraction, training, evaluation, analysis, export, prediction) never prints (the
package's exported verbs install a reporter by default: :mod:`deepfeat.apiprogress`). It
opens a :func:`task` for each long loop and advances it::

    with progress.task("evaluate", total=n_rows, unit="row") as t:
        for batch in batches:
            ...
            t.update(len(batch))

and announces one-off events with :func:`note` (e.g. early stopping). Without a renderer (the
Python API) a task logs a line at INFO level every 10 % and notes are logged; the command line
installs a :class:`Reporter` (``with reporter.installed(): ...``) that renders them:

* stderr is a terminal: a tqdm bar per task (count, rate, ETA), notes printed above the bars;
* otherwise (a log file, a pipe, CI): plain lines, at most one every ``interval`` seconds
  (10 s by default, ``DEEPFEAT_PROGRESS_INTERVAL``) and one per 10 % step at most once a second,
  each with the count, the rate and the ETA, and one final line per task that took a while --
  never hundreds of ``\\r`` updates.

:func:`timer` covers calls that report nothing while they run (scikit-learn's exact solvers): it
says what is running and its estimated duration, prints the elapsed time periodically and how
long it took.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TextIO, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
#: the ``progress=`` callback of the library's long operations (extract, train, probe, train-cnn): it
#: receives one dict per event, with a ``phase`` key
ProgressFn = Callable[[dict[str, Any]], None]
DEFAULT_INTERVAL = 10.0  #: seconds between two plain progress lines (at most)


def format_duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 d 04 h``.

    Example:
        >>> format_duration(185)
        '3 min 05 s'
    """
    if seconds != seconds or seconds < 0:  # NaN
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m} min {s:02d} s"
    if seconds < 2 * 86400:
        h, rest = divmod(int(round(seconds)), 3600)
        return f"{h} h {rest // 60:02d} min"
    d, rest = divmod(int(round(seconds)), 86400)
    return f"{d} d {rest // 3600:02d} h"


def _count(n: float) -> str:
    return f"{int(n):,}" if float(n).is_integer() else f"{n:,.1f}"


class Task:
    """One long loop with an optional known ``total``; ``update(n)`` advances it by ``n`` units."""

    def __init__(self, desc: str, total: float | None, unit: str, transient: bool = False) -> None:
        self.desc = desc
        self.total = total if total and total > 0 else None
        self.unit = unit
        self.transient = transient  #: no final line (e.g. an epoch's bar: the epoch line follows)
        self.n = 0.0
        self.start = time.monotonic()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
        self._render(final=False)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._render(final=True)

    def __enter__(self) -> "Task":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # interrupted or failed: no "done" line, just stop the bar
            self.closed = True
            self._abandon()

    # rendering hooks
    def _render(self, final: bool) -> None:
        pass

    def _abandon(self) -> None:
        pass

    # what a plain line says
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def rate(self) -> float:
        e = self.elapsed()
        return self.n / e if e > 0 else 0.0

    def status(self, final: bool = False) -> str:
        """``extract: 1,200/4,000 img (30%), 41.3 img/s, 12.0 s elapsed, ETA 1 min 08 s``."""
        rate, elapsed = self.rate(), self.elapsed()
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        if final:
            return (
                f"{self.desc}: {_count(self.n)} {self.unit} in {format_duration(elapsed)} ({rate:,.1f} {self.unit}/s){extra}"
            )
        if self.total:
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            return (
                f"{self.desc}: {_count(self.n)}/{_count(self.total)} {self.unit} ({self.n / self.total:.0%}), "
                f"{rate:,.1f} {self.unit}/s, {format_duration(elapsed)} elapsed, ETA {format_duration(eta)}{extra}"
            )
        return f"{self.desc}: {_count(self.n)} {self.unit}, {rate:,.1f} {self.unit}/s, {format_duration(elapsed)}{extra}"


class _LogTask(Task):
    """The Python API's task: an INFO log line every 10 % (and the final one)."""

    def __init__(self, desc: str, total: float | None, unit: str, transient: bool = False) -> None:
        super().__init__(desc, total, unit, transient)
        self._next = 0.1

    def _render(self, final: bool) -> None:
        if final:
            if not self.transient:
                log.info("%s", self.status(final=True))
        elif self.total and self.n / self.total >= self._next:
            self._next = (int(self.n / self.total * 10) + 1) / 10
            log.info("%s", self.status())


class _PlainTask(Task):
    """Plain lines: at most one per ``interval`` s, one per 10 % step at most once a second, a final line."""

    def __init__(self, reporter: "Reporter", desc: str, total: float | None, unit: str, transient: bool = False) -> None:
        super().__init__(desc, total, unit, transient)
        self.reporter = reporter
        self._last = self.start
        self._next = 0.1
        self._printed = False

    def _render(self, final: bool) -> None:
        if final:
            # a task over in a blink (one image to predict) leaves no line; a long one always ends with one
            if not self.transient and (self._printed or self.elapsed() >= min(2.0, self.reporter.interval)):
                self.reporter.write(self.status(final=True))
            return
        now = time.monotonic()
        step = bool(self.total) and self.n / self.total >= self._next  # type: ignore[operator]
        if now - self._last >= self.reporter.interval or (step and now - self._last >= 1.0):
            self._last = now
            if self.total:
                self._next = (int(self.n / self.total * 10) + 1) / 10
            self._printed = True
            self.reporter.write(self.status())


class _BarTask(Task):
    """A tqdm bar on the terminal."""

    def __init__(self, reporter: "Reporter", desc: str, total: float | None, unit: str, transient: bool = False) -> None:
        super().__init__(desc, total, unit, transient)
        if reporter.notebook:
            from tqdm.auto import tqdm
        else:
            from tqdm import tqdm

        self.bar = tqdm(
            total=self.total, unit=unit, desc=desc, dynamic_ncols=True, file=reporter.stream, leave=not transient
        )

    def update(self, n: float = 1, **postfix: Any) -> None:
        self.n += n
        if postfix:
            self.postfix.update(postfix)
            self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(n)

    def _render(self, final: bool) -> None:
        if final:
            self.bar.close()

    def _abandon(self) -> None:
        self.bar.close()


class _QuietTask(Task):
    pass


class Reporter:
    """Renders tasks and notes for the command line (see the module docstring).

    ``mode``: ``"auto"`` (a bar when ``stream`` is a terminal or ``notebook``, plain lines otherwise),
    ``"bar"``, ``"plain"`` or ``"off"`` (``-q``: no progress, notes still printed).
    """

    def __init__(
        self, mode: str = "auto", stream: TextIO | None = None, interval: float | None = None, notebook: bool = False
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.notebook = notebook  #: a Jupyter kernel: bars are tqdm.auto's widgets
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if notebook or (isatty is not None and isatty()) else "plain"
        if mode not in ("bar", "plain", "off"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode = mode
        if interval is None:
            interval = float(os.environ.get("DEEPFEAT_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
        self.interval = float(interval)
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        """One line on the progress stream (above any bar)."""
        with self._lock:
            if self.mode == "bar":
                from tqdm import tqdm

                tqdm.write(line, file=self.stream)
            else:
                print(line, file=self.stream, flush=True)

    def task(self, desc: str, total: float | None = None, unit: str = "it", transient: bool = False) -> Task:
        if self.mode == "bar":
            return _BarTask(self, desc, total, unit, transient)
        if self.mode == "plain":
            return _PlainTask(self, desc, total, unit, transient)
        return _QuietTask(desc, total, unit, transient)

    def note(self, message: str) -> None:
        self.write(message)

    @contextlib.contextmanager
    def installed(self) -> Iterator["Reporter"]:
        """Route the library's :func:`task`, :func:`note` and :func:`timer` calls to this reporter."""
        token = _current.set(self)
        try:
            yield self
        finally:
            _current.reset(token)


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("deepfeat_progress", default=None)


def current() -> Reporter | None:
    """The installed reporter, or None (the Python API: progress goes to logging)."""
    return _current.get()


def task(desc: str, total: float | None = None, unit: str = "it", transient: bool = False) -> Task:
    """A progress task for a long loop (see the module docstring); use it as a context manager.

    ``transient``: no final line (a bar the caller follows with its own summary line).
    """
    r = _current.get()
    return r.task(desc, total, unit, transient) if r is not None else _LogTask(desc, total, unit, transient)


def track(
    items: Iterable[T],
    desc: str,
    total: float | None = None,
    unit: str = "it",
    size: Callable[[T], float] | None = None,
    transient: bool = False,
) -> Iterator[T]:
    """Yield ``items`` while advancing a :func:`task` by ``size(item)`` (1 by default) per item.

    Example:
        >>> sum(len(b) for b in track([[1, 2], [3]], "demo", total=3, size=len))
        3
    """
    with task(desc, total, unit, transient) as t:
        for item in items:
            yield item
            t.update(size(item) if size is not None else 1)


def note(message: str) -> None:
    """A one-off event worth telling the user (early stopping, a fallback)."""
    r = _current.get()
    if r is not None:
        r.note(message)
    else:
        log.info("%s", message)


@contextlib.contextmanager
def timer(what: str, estimate: float | None = None) -> Iterator[None]:
    """Around a call that reports nothing while it runs: says it started (with ``estimate`` seconds),
    prints the elapsed time every ``interval`` seconds, and how long it took."""
    r = _current.get()
    say = r.note if r is not None else (lambda m: log.info("%s", m))
    est = f" (estimated {format_duration(estimate)})" if estimate is not None else ""
    say(f"{what}: running{est}; it reports nothing until it ends")
    t0 = time.monotonic()
    stop = threading.Event()
    ticker = None
    if r is not None and r.mode != "off":

        def tick() -> None:
            while not stop.wait(r.interval):
                say(f"{what}: running for {format_duration(time.monotonic() - t0)}{est}")

        ticker = threading.Thread(target=tick, name="deepfeat-progress-timer", daemon=True)
        ticker.start()
    try:
        yield
    finally:
        stop.set()
        if ticker is not None:
            ticker.join()
    say(f"{what}: done in {format_duration(time.monotonic() - t0)}{est}")

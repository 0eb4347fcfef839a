"""Ctrl-C held back where a ``KeyboardInterrupt`` would do harm: third-party imports and native set-up.

A ``KeyboardInterrupt`` raised while Python imports torch, timm, OpenVINO or ONNX Runtime lands in the
middle of their C++ initialisation. Measured here with ``python -c "import torch, timm, openvino"``
and SIGINT at 60 points in its first 1.2 s: most runs end with the interrupt, but some end as if
nothing happened (exit 0: the interrupt is swallowed) or abort (SIGABRT, SIGSEGV). In ``deepfeat
extract`` that window is the start of the run: an interrupted start then ran the whole job.

:func:`held_interrupts` keeps the Ctrl-C until the block is over and then raises it, so the command
stops as it does anywhere else (one line, exit 130), a moment later. :func:`import_held` imports
modules that way. :func:`interruptible` is the opposite case: a long native call (scikit-learn's
exact solvers) that would hold a Ctrl-C back for minutes runs where the interrupt can leave it behind.

Example:
    >>> with held_interrupts():
    ...     import json
    >>> import_held("json").__name__
    'json'
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, TypeVar

__all__ = ["held_interrupts", "import_held", "interruptible", "sigint_blocked"]

T = TypeVar("T")


@contextlib.contextmanager
def held_interrupts() -> Iterator[None]:
    """Within the block a Ctrl-C is recorded, not raised; it is raised as ``KeyboardInterrupt`` when the block ends.

    Only in the main thread with Python's own Ctrl-C handler in place (elsewhere, or when SIGINT is
    ignored as in a background job, nothing changes).
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def import_held(*names: str) -> ModuleType:
    """Import ``names`` (the heavy ones: torch, timm, openvino...) with Ctrl-C held; returns the last."""
    module: ModuleType | None = None
    with held_interrupts():
        for name in names:
            module = importlib.import_module(name)
    assert module is not None
    return module


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread meanwhile; a Ctrl-C that arrives is delivered at the end, not lost.

    A process started meanwhile inherits the blocked mask, so it cannot be interrupted before it
    has set SIGINT to ignored (the decode workers, :mod:`deepfeat.data.decode_pool`).
    """
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def interruptible(fn: Callable[..., T], *args: Any, poll: float = 0.2, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a daemon thread, waited for in short joins that Ctrl-C interrupts.

    A native solver (liblinear, LAPACK) returns to Python only when it is done, and Python runs its
    Ctrl-C handler only then: ``train --head svm --solver exact`` went on for 285 s after a Ctrl-C.
    Here the main thread waits instead, so the ``KeyboardInterrupt`` is raised within ``poll``
    seconds; the call is left running in its daemon thread (it releases the GIL inside the native
    code) and ends with the process, which does not wait for it. Its exception, if any, is raised
    here; its warnings go through the process-wide filters as before.
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=run, name="deepfeat-native-call", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(poll)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]

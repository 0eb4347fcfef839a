"""The exclusive writer lock of a store (``flock`` on ``<store>/.lock``).

``flock`` locks vanish with the process, so a writer killed with ``kill -9`` never leaves a
stale lock behind. The lock file records the holder's pid and host for the error message.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import math
import os
import socket
import time

from ..errors import EnvironmentFault, StoreLockedError
from ..progress import format_duration

LOCK_NAME = ".lock"


def describe_holder(text: str, now: float | None = None) -> str:
    """The lock file's record for people: ``pid 4242 on host1, since 2026-11-30 18:52:21 UTC (3 min 05 s ago)``.

    Example:
        >>> describe_holder('{"pid": 7, "host": "h", "since": 0}', now=65)
        'pid 7 on h, since 1970-01-01 00:00:00 UTC (1 min 05 s ago)'
    """
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return text[:200] or "unknown"
    parts = []
    if doc.get("pid") is not None:
        parts.append(f"pid {doc['pid']}")
    if doc.get("host"):
        parts.append(f"on {doc['host']}")
    since = doc.get("since")
    if isinstance(since, (int, float)) and not isinstance(since, bool) and math.isfinite(since):
        when = datetime.datetime.fromtimestamp(since, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        age = (time.time() if now is None else now) - since
        parts[-1:] = [f"{parts[-1]}, since {when}" if parts else f"since {when}"]
        parts.append(f"({format_duration(age)} ago)" if age >= 0 else "(clock skew: in the future)")
    return " ".join(parts) or "unknown"


class StoreLock:
    """Context manager holding the exclusive writer lock of a store directory.

    Example:
        >>> with StoreLock("feats/"):  # doctest: +SKIP
        ...     pass  # only one writer in here
    """

    def __init__(self, store_dir: str) -> None:
        self.path = os.path.join(store_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "StoreLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise EnvironmentFault(f"Cannot create the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            try:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            raise StoreLockedError(
                f"The store {os.path.dirname(self.path)!r} is locked by another writer ({describe_holder(holder)}). "
                "Wait for it to finish, or stop it; a killed writer releases the lock by itself."
            ) from None
        except OSError as exc:
            os.close(fd)
            raise EnvironmentFault(f"Cannot lock {self.path}: {exc}") from exc
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
        except OSError:
            pass  # the lock itself is what matters
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

"""The exclusive writer lock of a store (``flock`` on ``<store>/.lock``).

``flock`` locks vanish with the process, so a writer killed with ``kill -9`` never leaves a
stale lock behind. The lock file records the holder's pid and host for the error message.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time

from ..errors import EnvironmentFault, StoreLockedError

LOCK_NAME = ".lock"


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
                f"The store {os.path.dirname(self.path)!r} is locked by another writer ({holder or 'unknown'}). "
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

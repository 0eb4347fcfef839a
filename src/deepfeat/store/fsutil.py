"""Crash-safe file primitives: fsync'd writes, atomic renames, hashing writers.

Any ``OSError`` raised while writing (disk full, I/O error) becomes an
:class:`~deepfeat.errors.EnvironmentFault`: it is the machine's fault, never an image's.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from typing import Any, BinaryIO

from ..errors import EnvironmentFault


def fsync_dir(path: str) -> None:
    """fsync a directory so that renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def environment_errors(what: str) -> Iterator[None]:
    """Turn ``OSError`` into ``EnvironmentFault`` with a message naming ``what``."""
    try:
        yield
    except EnvironmentFault:
        raise
    except OSError as exc:
        hint = " The disk is full: free space and rerun the same command to resume." if exc.errno == errno.ENOSPC else ""
        raise EnvironmentFault(f"{what} failed: {exc}.{hint}") from exc


class HashingWriter:
    """File-like wrapper that sha256-hashes everything written through it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: Any) -> int:
        mv = memoryview(data).cast("B")
        self.sha256.update(mv)
        self.size += mv.nbytes
        return self._f.write(mv)

    def flush(self) -> None:
        self._f.flush()

    def tell(self) -> int:
        return self.size

    def seekable(self) -> bool:
        return False


def write_bytes_durable(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (no rename)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` atomically: temp file, fsync, rename, fsync the directory."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with environment_errors(f"writing {path}"):
        try:
            write_bytes_durable(tmp, data)
            os.replace(tmp, path)
            fsync_dir(directory)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise


def remove_orphan_temps(path: str) -> list[str]:
    """Delete temp files that :func:`atomic_write_bytes` left for ``path`` in processes that died.

    A temp file is named after its writer's pid; one whose process still runs is left alone.
    """
    directory = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp-"
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix):]
        if not name.startswith(prefix) or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer is alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))
            removed.append(name)
    return removed


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)

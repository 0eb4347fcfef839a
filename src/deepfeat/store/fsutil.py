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

from ..errors import EnvironmentFault, UsageError
from ..units import format_size


def fsync_dir(path: str) -> None:
    """fsync a directory so that renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: errors that mean "no room for this write": disk full, a file size limit (RLIMIT_FSIZE), a quota
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})
#: errors that mean "this place cannot be written": a read-only filesystem, no permission
NOT_WRITABLE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
#: every OS error of a write that is the environment's fault, never the user's request: exit status 4
WRITE_ERRNOS = DISK_FULL_ERRNOS | NOT_WRITABLE_ERRNOS | {errno.EIO}


def write_error_hint(exc: OSError, resumable: bool = False) -> str:
    """What to do about a failed write, by its errno ("" when there is nothing specific to say);
    ``resumable``: the command resumes where it stopped (extract), otherwise it starts over."""
    if exc.errno in DISK_FULL_ERRNOS:
        return (
            " The disk is full (or a file size limit or quota was hit): free space and rerun the same "
            f"command{' to resume' if resumable else ''}."
        )
    if exc.errno in NOT_WRITABLE_ERRNOS:
        return " The location is not writable (read-only filesystem or no permission): choose another output."
    return ""


@contextlib.contextmanager
def environment_errors(what: str, *, resumable: bool = False) -> Iterator[None]:
    """Turn ``OSError`` into ``EnvironmentFault`` with a message naming ``what`` and what to do
    (``resumable``: a rerun resumes, as extract's store writes do)."""
    try:
        yield
    except EnvironmentFault:
        raise
    except OSError as exc:
        raise EnvironmentFault(f"{what} failed: {exc}.{write_error_hint(exc, resumable)}") from exc


def check_writable(path: str | os.PathLike[str], what: str, *, directory: bool = False, need: int = 0) -> None:
    """Up front, before any work: can ``path`` be written, with room for about ``need`` bytes?

    The one check of every command that writes (``evaluate``, ``probe``, ``analyze``, ``predict``,
    ``plot``, ``train``, ``export``). ``path`` is a file (its folder is checked) or, with
    ``directory``, a folder; a folder that does not exist yet is checked at its nearest existing
    ancestor, and nothing is created. A probe file is created and removed there (so a read-only
    mount is caught also for root, whom permissions do not stop).

    Raises:
        EnvironmentFault: not writable (read-only filesystem, no permission) or less than ``need``
            bytes free; the message names ``what`` and the path.
        UsageError: an ancestor of ``path`` is a file.
    """
    full = os.path.abspath(os.fspath(path))
    place = full if directory else os.path.dirname(full)
    while not os.path.lexists(place) and os.path.dirname(place) != place:
        place = os.path.dirname(place)
    if not os.path.isdir(place):
        raise UsageError(f"{what} {os.fspath(path)!r} cannot be written: {place!r} is a file, not a folder.")
    try:
        fd, probe = _probe_file(place)
        os.close(fd)
        os.unlink(probe)
        free = shutil.disk_usage(place).free
    except OSError as exc:
        raise EnvironmentFault(f"{what} {os.fspath(path)!r} cannot be written: {exc}.{write_error_hint(exc)}") from exc
    if need > free:
        raise EnvironmentFault(
            f"{what} {os.fspath(path)!r} needs about {format_size(need)} but its filesystem has "
            f"{format_size(free)} free; free some space or choose another output."
        )


def reserve_space(fd: int, size: int) -> None:
    """Allocate ``size`` bytes of the open file ``fd`` now (``posix_fallocate``), so that a full disk is an
    ``OSError`` here rather than a signal when a memory map or a library writes into a sparse file later.
    Filesystems without fallocate (and systems without it) are left as they are."""
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _probe_file(folder: str) -> tuple[int, str]:
    path = os.path.join(folder, f".deepfeat-write-check-{os.getpid()}-{os.urandom(4).hex()}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), path


def as_os_error(exc: BaseException) -> BaseException:
    """A library's wrapped OS error (safetensors: ``I/O error: File too large (os error 27)``; pyarrow:
    ``[Errno 28] No space left on device``) as an ``OSError`` with its errno; other errors unchanged."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    import re

    m = re.search(r"\(os error (\d+)\)|\[Errno (\d+)\]", str(exc))
    if m is None:
        return exc
    code = int(m.group(1) or m.group(2))
    return OSError(code, f"{os.strerror(code)} ({type(exc).__name__}: {exc})")


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
    removed: list[str] = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        pid = name[len(prefix) :]
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


STAGING_PREFIX = ".tmp-staging-"


@contextlib.contextmanager
def staged_directory(final: str, what: str) -> Iterator[str]:
    """Write a set of files into a hidden staging folder inside ``final``; publish them only when all succeeded.

    On success every file is renamed into ``final`` (replacing older ones of the same name); on any
    error the staging folder is deleted, so no partial file is ever visible in ``final``, and an
    ``OSError`` becomes an :class:`EnvironmentFault` (exit status 4; disk full says so). Staging
    folders of writers that died are removed at the next start.
    """
    with environment_errors(what):
        os.makedirs(final, exist_ok=True)
        names = os.listdir(final)
    for name in names:
        pid = name[len(STAGING_PREFIX) :].split("-")[0]
        if name.startswith(STAGING_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(os.path.join(final, name), ignore_errors=True)
    stage = os.path.join(final, f"{STAGING_PREFIX}{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with environment_errors(what):
            os.mkdir(stage)
            yield stage
            for name in sorted(os.listdir(stage)):
                os.replace(os.path.join(stage, name), os.path.join(final, name))
            os.rmdir(stage)
    finally:
        if os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically replace ``path`` with ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in chunks (the one implementation: stores, weights, runtime cache)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)

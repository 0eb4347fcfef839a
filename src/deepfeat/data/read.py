"""Reading one input's bytes in a decode worker, whatever source holds it.

A locator is what :attr:`deepfeat.sources.items.SourceItem.locator` gives: a file path (``str``)
or a tuple naming a container and a place in it:

* ``("tar", shard_path, offset, size)`` -- a WebDataset sample's image member, read with one
  ``pread`` on the shard that stays open in this worker (no per-image open or stat);
* ``("parquet", file_path, row_group, row, column, field)`` -- a cell of an image-bytes column
  (``field`` is ``"bytes"`` for struct columns such as Hugging Face's ``Image``, else ``None``);
  the row group's column is read once and kept while the worker stays in that row group;
* ``("hf", dataset_path, split, row, column)`` -- a row of a Hugging Face dataset saved with
  ``save_to_disk`` (memory-mapped Arrow, opened once per worker).

A path may be a URL (``s3://``, ``gs://``, ...; :mod:`deepfeat.data.remote`): a tar member is then read by
byte range -- :func:`prefetch` fetches the members of one decode batch together, adjacent members in one
request -- and a Parquet row group through a retried, read-ahead file object.

Every failure that belongs to the one input is an :class:`~deepfeat.errors.InputError` (a ledger
entry), never a crash. An object store that stays unavailable after the retries is an
:class:`~deepfeat.errors.EnvironmentFault`: the run stops and a rerun resumes. This module imports no torch.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import EnvironmentFault, InputError, UsageError
from . import remote
from .decode import read_file_bytes

__all__ = ["read_locator", "is_remote", "prefetch", "hf_library", "load_hf", "hf_splits", "open_split"]

WHOLE = ""  # the split name of a plain Hugging Face Dataset (not a DatasetDict)

_open_shard: list[Any] = [None, -1]  # [path, fd]: the shard this worker reads now
_row_group: list[Any] = [None, None]  # [(file, row_group, column), column values]
_datasets: dict[tuple[str, str], Any] = {}
_prefetched: dict[tuple[str, int, int], bytes | InputError] = {}  # remote tar members of the current batch


def _remote_failure(exc: remote.RemoteError) -> InputError | EnvironmentFault:
    """An object that vanished or is refused fails its inputs; a store still failing stops the run."""
    if exc.reason == "missing":
        return InputError("vanished", f"the object {exc.url!r} no longer exists")
    if exc.reason == "too_large":
        return InputError("too_large", exc.message)
    if exc.reason == "denied":
        return InputError("unreadable", exc.message)
    return EnvironmentFault(f"cannot read {exc.url}: {exc.message}")


def is_remote(locator: str | tuple[Any, ...]) -> bool:
    """Whether the input at ``locator`` is read over the network (its file or container is a URL).

    Example:
        >>> is_remote(("tar", "s3://lake/000.tar", 1536, 2210)), is_remote("photos/cat.jpg")
        (True, False)
    """
    path = locator if isinstance(locator, str) else (locator[1] if len(locator) > 1 else None)
    return isinstance(path, str) and remote.is_url(path)


def prefetch(locators: Sequence[str | tuple[Any, ...]], max_bytes: int) -> None:
    """Fetch the remote tar members among ``locators`` (one decode batch) before they are read.

    Members of one object are read together, adjacent ones in one ranged request
    (:func:`deepfeat.data.remote.read_ranges`); :func:`read_locator` then takes them from memory.
    Local locators are left alone.

    Raises:
        EnvironmentFault: the object store is unreachable or keeps failing after the retries.
    """
    _prefetched.clear()
    wanted: dict[str, list[tuple[int, int]]] = {}
    for loc in locators:
        if isinstance(loc, tuple) and loc[0] == "tar" and remote.is_url(loc[1]) and int(loc[3]) <= max_bytes:
            wanted.setdefault(loc[1], []).append((int(loc[2]), int(loc[3])))
    for url, ranges in wanted.items():
        ranges = sorted(set(ranges))
        try:
            blobs: list[bytes | InputError] = list(remote.read_ranges(url, ranges))
        except remote.RemoteError as exc:
            failure = _remote_failure(exc)
            if isinstance(failure, EnvironmentFault):
                raise failure from exc
            blobs = [failure] * len(ranges)
        for (offset, size), blob in zip(ranges, blobs):
            _prefetched[(url, offset, size)] = blob


def _shard_fd(path: str) -> int:
    if _open_shard[0] != path:
        if _open_shard[1] >= 0:
            os.close(_open_shard[1])
        _open_shard[:] = [None, -1]
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise InputError("vanished", f"the shard {path!r} no longer exists") from exc
        except PermissionError as exc:
            raise InputError("unreadable", f"cannot open the shard {path!r}: {exc.strerror}") from exc
        _open_shard[:] = [path, fd]
    return int(_open_shard[1])


def _read_remote_member(url: str, offset: int, size: int) -> bytes:
    got = _prefetched.pop((url, offset, size), None)
    if got is None:
        try:
            got = remote.read_ranges(url, [(offset, size)])[0]
        except remote.RemoteError as exc:
            failure = _remote_failure(exc)
            raise failure from exc
    if isinstance(got, InputError):
        raise got
    if len(got) < size:
        raise InputError("truncated", f"the shard {url!r} ends inside this member ({len(got)} of {size} bytes)")
    return got


def _read_tar(path: str, offset: int, size: int, max_bytes: int) -> bytes:
    if size > max_bytes:
        raise InputError("too_large", f"{size} bytes, more than the limit of {max_bytes}")
    if remote.is_url(path):
        return _read_remote_member(path, offset, size)
    fd = _shard_fd(path)
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        if exc.errno == errno.EIO:
            raise EnvironmentFault(f"I/O error reading the shard {path!r}: {exc.strerror}") from exc
        raise InputError("unreadable", f"cannot read the shard {path!r}: {exc.strerror or exc}") from exc
    if len(data) < size:
        raise InputError("truncated", f"the shard {path!r} ends inside this member ({len(data)} of {size} bytes)")
    return data


def _cell_bytes(value: Any, field: str | None, where: str) -> bytes:
    if field is not None and isinstance(value, dict):
        value = value.get(field)
    if value is None:
        raise InputError("unidentified", f"{where}: the image cell is empty")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InputError("unidentified", f"{where}: the image cell holds {type(value).__name__}, not image bytes")


def _read_parquet(path: str, row_group: int, row: int, column: str, field: str | None, max_bytes: int) -> bytes:
    key = (path, row_group, column)
    if _row_group[0] != key:
        import pyarrow.parquet as pq

        _row_group[:] = [None, None]
        try:
            if remote.is_url(path):
                with remote.open_object(path) as fh:
                    table = pq.ParquetFile(fh).read_row_group(row_group, columns=[column])
            else:
                table = pq.ParquetFile(path).read_row_group(row_group, columns=[column])
        except remote.RemoteError as exc:
            raise _remote_failure(exc) from exc
        except FileNotFoundError as exc:
            raise InputError("vanished", f"the Parquet file {path!r} no longer exists") from exc
        except OSError as exc:
            raise InputError("unreadable", f"cannot read row group {row_group} of {path!r}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - a corrupt row group fails its rows, not the run
            raise InputError("decode_error", f"row group {row_group} of {path!r} cannot be read: {exc}") from exc
        _row_group[:] = [key, table.column(column)]
    values = _row_group[1]
    if row >= len(values):
        raise InputError("vanished", f"{path!r} row group {row_group} has no row {row} any more")
    data = _cell_bytes(values[row].as_py(), field, f"{path!r} row group {row_group} row {row}")
    if len(data) > max_bytes:
        raise InputError("too_large", f"{len(data)} bytes, more than the limit of {max_bytes}")
    return data


def _read_hf(path: str, split: str, row: int, column: str, max_bytes: int) -> bytes:
    key = (path, split)
    if key not in _datasets:
        _datasets.clear()
        _datasets[key] = open_split(path, split, column)
    ds = _datasets[key]
    if row >= len(ds):
        raise InputError("vanished", f"the dataset {path!r} split {split!r} has no row {row} any more")
    data = _cell_bytes(ds[row][column], "bytes", f"{path!r} split {split!r} row {row}")
    if len(data) > max_bytes:
        raise InputError("too_large", f"{len(data)} bytes, more than the limit of {max_bytes}")
    return data


def read_locator(locator: str | tuple[Any, ...], max_bytes: int) -> bytes:
    """The encoded image bytes of one input (see the module docstring for locators).

    Raises:
        InputError: the input cannot be read (vanished, unreadable, truncated, too large, empty).
        EnvironmentFault: the machine, not the input, is at fault (I/O error, out of memory).

    Example:
        >>> read_locator(("tar", "data/000000.tar", 1536, 2210), 1 << 30)  # doctest: +SKIP
        b'\\xff\\xd8\\xff...'
    """
    if isinstance(locator, str):
        if remote.is_url(locator):
            try:
                return remote.read_object(locator, max_bytes)
            except remote.RemoteError as exc:
                raise _remote_failure(exc) from exc
        return read_file_bytes(locator, max_bytes)
    kind = locator[0]
    if kind == "tar":
        return _read_tar(locator[1], int(locator[2]), int(locator[3]), max_bytes)
    if kind == "parquet":
        return _read_parquet(locator[1], int(locator[2]), int(locator[3]), locator[4], locator[5], max_bytes)
    if kind == "hf":
        return _read_hf(locator[1], locator[2], int(locator[3]), locator[4], max_bytes)
    raise ValueError(f"unknown input locator {locator!r}")


# ---------------------------------------------------------------- Hugging Face datasets
def hf_library() -> Any:
    try:
        import datasets
    except ImportError as exc:
        raise UsageError(
            "Reading a Hugging Face dataset needs the 'datasets' library: "
            "pip install 'deepfeat[hf]' (or pip install datasets)."
        ) from exc
    return datasets


@contextlib.contextmanager
def _hf_offline(datasets: Any) -> Iterator[None]:
    """``datasets`` and ``huggingface_hub`` offline meanwhile (their settings are read when imported, so
    the environment variables alone came too late: a missing name waited ~25 s for the Hub)."""
    import huggingface_hub.constants as hub

    saved = (datasets.config.HF_DATASETS_OFFLINE, datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE)
    datasets.config.HF_DATASETS_OFFLINE = datasets.config.HF_HUB_OFFLINE = hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_OFFLINE, datasets.config.HF_HUB_OFFLINE, hub.HF_HUB_OFFLINE = saved


def load_hf(path: str) -> Any:
    """A Dataset or DatasetDict from a ``save_to_disk`` folder, or from the local cache, offline."""
    datasets = hf_library()
    if os.path.isdir(path):
        try:
            return datasets.load_from_disk(path)
        except FileNotFoundError as exc:
            raise UsageError(f"{path!r} is not a dataset written by save_to_disk ({exc}).") from exc
    try:
        with _hf_offline(datasets):
            return datasets.load_dataset(path)
    except Exception as exc:  # noqa: BLE001 - any failure to find it offline is one message
        raise UsageError(
            f"No Hugging Face dataset {path!r}: not a save_to_disk folder, and not in the local "
            f"cache ({type(exc).__name__}: {exc}). Save it with Dataset.save_to_disk and pass "
            "hf:FOLDER."
        ) from exc


def hf_splits(obj: Any) -> dict[str, Any]:
    if hasattr(obj, "keys") and not hasattr(obj, "features"):
        return {str(k): obj[k] for k in obj.keys()}
    return {WHOLE: obj}


def open_split(path: str, split: str, column: str) -> Any:
    """One split of the dataset, its image column giving encoded bytes (used by decode workers)."""
    datasets = hf_library()
    ds = hf_splits(load_hf(path))[split]
    feature = ds.features[column]
    if isinstance(feature, datasets.Image):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds

"""Discovered inputs as columns: the driver holds containers and a few numbers per input, never an object.

An :class:`ItemTable` is what a source's ``discover()`` puts in :attr:`Discovery.items`: a
:class:`~collections.abc.Sequence` of :class:`~deepfeat.sources.items.SourceItem` that stores, per
input, only its id digest (10 bytes), label and split codes, its size, two locator numbers (a tar
offset and size, a Parquet row group and row, a dataset row) and, where the source needs it, one or
two byte strings (a relative path, a tar member name). Everything an input shares with its
neighbours -- the shard or Parquet file, the column, the root folder -- is stored once, in its
:class:`Container`. ``table[i]`` builds the :class:`SourceItem` of one input when a part is cut or
a batch is decoded; planning, resume and the job estimate work on the columns
(docs/SCALE.md, docs/DECISIONS.md).

Example:
    >>> b = TableBuilder()
    >>> c = b.container(FileRows("/data"))
    >>> b.add(c, "cat/1.jpg", label="cat", text="cat/1.jpg")
    >>> t = b.build()
    >>> t[0].path, t[0].label, len(t)
    ('/data/cat/1.jpg', 'cat', 1)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
from array import array
from collections.abc import Iterator, Sequence
from typing import Any, overload

import numpy as np
import pyarrow as pa

from .items import SourceItem, id_digest

__all__ = ["Container", "FileRows", "PathRows", "ObjectRows", "ItemTable", "TableBuilder", "as_table", "hex_keys", "members"]

_FLUSH = 1 << 16  #: rows a builder buffers in Python lists before it packs them into arrays


class Container:
    """Where a run of inputs lives (a folder, a shard, a Parquet file, a split of a dataset).

    ``group`` is the :attr:`SourceItem.group` of its inputs (``None``: files that parts may split
    anywhere); :meth:`item` makes the item of one row from the table's columns.
    """

    group: str | None = None

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        raise NotImplementedError  # pragma: no cover - every container kind implements it


class FileRows(Container):
    """Image files under ``root``: ``text`` is the relative path, the file is ``root/text``."""

    def __init__(self, root: str) -> None:
        self.root = root

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        assert text is not None
        return SourceItem(id=iid, path=os.path.join(self.root, text), relpath=text, label=label, split=split, size=size)


class PathRows(Container):
    """Image files named by a table: ``text`` is the relative path (the id's), ``text2`` the file."""

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        assert text is not None and text2 is not None
        return SourceItem(id=iid, path=text2, relpath=text, label=label, split=split, size=size)


class ObjectRows(Container):
    """Items a custom source built itself, kept as they are (row ``a`` of ``items``)."""

    def __init__(self, items: Sequence[SourceItem], group: str | None = None) -> None:
        self.items = items
        self.group = group

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        return self.items[a]


def _binary(data: np.ndarray, offsets: np.ndarray, valid: np.ndarray | None) -> pa.Array:
    """A large_binary array over numpy buffers (zero copy: Arrow's pool, which keeps what it frees, is not used)."""
    mask = None if valid is None or valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(offsets) - 1, [mask, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _take_text(array: pa.Array | None, idx: np.ndarray) -> pa.Array | None:
    """The strings of ``array`` at ``idx``, gathered with numpy, ``_FLUSH`` rows at a time."""
    if array is None:
        return None
    bufs = array.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64, count=len(array) + 1, offset=8 * array.offset)
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.empty(0, np.uint8)
    valid = None if array.null_count == 0 else ~np.asarray(array.is_null().to_numpy(zero_copy_only=False))
    starts, lengths = offsets[:-1][idx], np.diff(offsets)[idx]
    out_offsets = np.zeros(len(idx) + 1, np.int64)
    np.cumsum(lengths, out=out_offsets[1:])
    out = np.empty(int(out_offsets[-1]), np.uint8)
    for s in range(0, len(idx), _FLUSH):
        st, ln = starts[s : s + _FLUSH], lengths[s : s + _FLUSH]
        if not len(st) or not ln.sum():
            continue
        base = out_offsets[s : s + len(st)]
        gather = np.repeat(st - base, ln) + np.arange(base[0], base[0] + ln.sum())
        out[base[0] : base[0] + ln.sum()] = data[gather]
    return _binary(out, out_offsets, None if valid is None else valid[idx])


def _text(array: pa.Array | None, i: int) -> str | None:
    if array is None:
        return None
    value = array[i].as_py()
    return None if value is None else os.fsdecode(value)


class ItemTable(Sequence[SourceItem]):
    """The inputs of a discovery as columns (see the module docstring); ``table[i]`` is one :class:`SourceItem`."""

    def __init__(
        self,
        containers: list[Container],
        cont: np.ndarray,
        hi: np.ndarray,
        lo: np.ndarray,
        label: np.ndarray,
        split: np.ndarray,
        labels: list[str],
        splits: list[str],
        size: np.ndarray,
        a: np.ndarray,
        b: np.ndarray,
        text: pa.Array | None = None,
        text2: pa.Array | None = None,
        hex_ids: bool = True,
    ) -> None:
        self.containers, self.cont, self.hi, self.lo = containers, cont, hi, lo
        self.label, self.split, self.labels, self.splits = label, split, labels, splits
        self.size, self.a, self.b, self.text, self.text2 = size, a, b, text, text2
        #: the ids are deepfeat's blake2b-80 digests (False: a custom source's ids, kept in its items)
        self.hex_ids = hex_ids
        self._container_keys: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.cont)

    @overload
    def __getitem__(self, i: int) -> SourceItem: ...

    @overload
    def __getitem__(self, i: slice) -> "ItemTable": ...

    def __getitem__(self, i: int | slice) -> "SourceItem | ItemTable":
        if isinstance(i, slice):
            return self.take(np.arange(len(self))[i])
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {i} of {n}")
        c = self.containers[int(self.cont[i])]
        if not self.hex_ids:
            return c.item("", None, None, 0, int(self.a[i]), 0, None, None)
        iid = (int(self.hi[i]).to_bytes(8, "big") + int(self.lo[i]).to_bytes(2, "big")).hex()
        lab, spl = int(self.label[i]), int(self.split[i])
        return c.item(
            iid,
            self.labels[lab] if lab >= 0 else None,
            self.splits[spl] if spl >= 0 else None,
            int(self.size[i]),
            int(self.a[i]),
            int(self.b[i]),
            _text(self.text, i),
            _text(self.text2, i),
        )

    def __iter__(self) -> Iterator[SourceItem]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ItemTable, list, tuple)):
            return len(self) == len(other) and all(x == y for x, y in zip(self, other))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking sequence, like list

    def __repr__(self) -> str:
        return f"ItemTable({len(self)} inputs in {len(self.containers)} containers)"

    def take(self, indices: np.ndarray) -> "ItemTable":
        """The rows at ``indices`` (in that order), sharing the containers."""
        idx = np.asarray(indices, dtype=np.int64)
        return ItemTable(
            self.containers,
            self.cont[idx],
            self.hi[idx],
            self.lo[idx],
            self.label[idx],
            self.split[idx],
            self.labels,
            self.splits,
            self.size[idx],
            self.a[idx],
            self.b[idx],
            _take_text(self.text, idx),
            _take_text(self.text2, idx),
            self.hex_ids,
        )

    def sorted_by_text(self) -> "ItemTable":
        """The rows in the byte order of ``text`` (the folder walker's order: relative path bytes).

        The keys are sorted as Python bytes for the moment of the sort (Arrow's own sort keeps ~130 B
        per input in its allocator afterwards; these are freed).
        """
        if self.text is None or len(self) < 2:
            return self
        keys = np.empty(len(self), dtype=object)
        keys[:] = self.text.to_pylist()
        order = np.argsort(keys, kind="stable")
        del keys
        table = self.take(order)
        del order
        _release_freed_memory()
        return table

    # -- what planning reads, without an object per input ------------------------------------------
    def groups(self) -> np.ndarray:
        """Per row, the index of its container when parts must keep it whole, else -1."""
        grouped = np.array([c.group is not None for c in self.containers] + [False], dtype=bool)
        if grouped[:-1].all():  # shards, Parquet files: the container codes themselves, no copy
            return self.cont
        out = self.cont.astype(np.promote_types(self.cont.dtype, np.int8))  # in the narrowest type that holds -1
        out[~grouped[self.cont]] = -1
        return out

    def container_keys(self) -> list[str | None]:
        """Per container, a key naming it and exactly the inputs it holds: ``group|inputs|digest`` (blake2b
        of its inputs' id digests, in order), or None for loose files (no group) and ids that are not
        deepfeat's digests. A store records the keys of the containers its parts finished, so that a
        resume skips them without reading their ledgers (:func:`deepfeat.extraction.finished_containers`):
        the same key means the same ids, so a shard or Parquet file read with other options (another
        ``id_field``), rewritten, or grown gets another key and is checked id by id as before.
        Computed once per table (a resume asks for them, then the engine that runs it)."""
        if self._container_keys is not None:
            return list(self._container_keys)
        keys: list[str | None] = [None] * len(self.containers)
        if not self.hex_ids:
            self._container_keys = keys
            return list(keys)
        hashers: dict[int, Any] = {}
        counts: dict[int, int] = {}
        starts, stops, codes = self.container_runs()
        for a, b, c in zip(starts.tolist(), stops.tolist(), codes.tolist()):
            if not 0 <= c < len(self.containers) or self.containers[c].group is None:
                continue
            h = hashers.setdefault(c, hashlib.blake2b(digest_size=16))
            h.update(np.ascontiguousarray(self.hi[a:b]).tobytes())
            h.update(np.ascontiguousarray(self.lo[a:b]).tobytes())
            counts[c] = counts.get(c, 0) + (b - a)
        for c, h in hashers.items():
            keys[c] = f"{self.containers[c].group}|{counts[c]}|{h.hexdigest()}"
        self._container_keys = keys
        return list(keys)

    def container_runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start, stop, container code) of each run of consecutive rows of one container, in table order."""
        n = len(self.cont)
        if not n:
            empty = np.zeros(0, np.int64)
            return empty, empty, empty
        starts = np.concatenate(([0], np.flatnonzero(self.cont[1:] != self.cont[:-1]) + 1))
        stops = np.append(starts[1:], n)
        return starts, stops, self.cont[starts].astype(np.int64)

    def keys(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(first 8 digest bytes as uint64, last 2 as uint16) of every id; None when the ids are not digests."""
        return (self.hi, self.lo) if self.hex_ids else None

    def id_chunks(self, chunk: int = _FLUSH) -> Iterator[pa.Array]:
        """The ids as Arrow string arrays, ``chunk`` at a time."""
        for s in range(0, len(self), chunk):
            yield pa.array([self[i].id for i in range(s, min(len(self), s + chunk))], type=pa.string())

    def split_counts(self) -> dict[str | None, int]:
        """Inputs per split (``None``: inputs without one)."""
        if not self.hex_ids:
            counts: dict[str | None, int] = {}
            for it in self:
                counts[it.split] = counts.get(it.split, 0) + 1
            return counts
        codes, n = np.unique(self.split, return_counts=True)
        return {(self.splits[c] if c >= 0 else None): int(k) for c, k in zip(codes.tolist(), n.tolist())}

    def used_labels(self) -> list[str]:
        """Sorted distinct labels (``None`` left out)."""
        if not self.hex_ids:
            return sorted({it.label for it in self if it.label is not None})
        return sorted(self.labels[c] for c in np.unique(self.label).tolist() if c >= 0)

    def used_splits(self) -> list[str]:
        """Sorted distinct splits (``None`` left out)."""
        return sorted(s for s in self.split_counts() if s is not None)

    def nbytes(self) -> int:
        """Bytes of the per-input columns (the containers not counted)."""
        arrays = (self.cont, self.hi, self.lo, self.label, self.split, self.size, self.a, self.b)
        return int(sum(x.nbytes for x in arrays) + sum(t.nbytes for t in (self.text, self.text2) if t is not None))


_NARROW = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64)


def _narrow(a: np.ndarray) -> np.ndarray:
    """``a`` in the smallest integer type that holds its values (row groups fit a byte, rows 4 bytes...)."""
    if not len(a):
        return a.astype(np.int8)
    lo, hi = int(a.min()), int(a.max())
    for t in _NARROW:
        info = np.iinfo(t)
        if info.min <= lo and hi <= info.max:
            return a.astype(t)
    return a


def _release_freed_memory() -> None:
    """Give the heap pages freed by the packing back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    The builder frees its packed chunks once the columns are concatenated; glibc keeps such pages in
    the process unless asked, which would count them in the driver's resident memory for the whole run.
    """
    trim = _MALLOC_TRIM[0]
    if trim is None:
        try:
            trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):
            trim = False
        _MALLOC_TRIM[0] = trim
    if trim:
        trim(0)


_MALLOC_TRIM: list[Any] = [None]
#: chunks copied into a column between two trims (16 x 65,536 rows: at most ~8 MB of a column held twice)
_TRIM_EVERY = 16


class TableBuilder:
    """Collects inputs row by row (packing every 65,536 rows into arrays) and builds the :class:`ItemTable`."""

    def __init__(self) -> None:
        self.containers: list[Container] = []
        self._labels: dict[str, int] = {}
        self._splits: dict[str, int] = {}
        self._chunks: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        # compact buffers (array.array, bytearray): no Python object per row survives the row
        self._digests = bytearray()
        self._ints = {
            "cont": array("i"),
            "label": array("i"),
            "split": array("h"),
            "size": array("q"),
            "a": array("q"),
            "b": array("q"),
        }
        self._texts = {k: (bytearray(), array("q", [0]), array("b")) for k in ("text", "text2")}  # data, ends, null

    def __len__(self) -> int:
        return sum(len(c["cont"]) for c in self._chunks) + len(self._ints["cont"])

    def container(self, c: Container) -> int:
        """Register a container; returns its index for :meth:`add`."""
        self.containers.append(c)
        return len(self.containers) - 1

    def add(
        self,
        cont: int,
        relpath: str,
        *,
        label: str | None = None,
        split: str | None = None,
        size: int = 0,
        a: int = 0,
        b: int = 0,
        text: str | None = None,
        text2: str | None = None,
    ) -> None:
        """One input of container ``cont``; its id is :func:`~deepfeat.sources.items.item_id` of ``relpath``."""
        self._digests += id_digest(relpath)
        ints = self._ints
        ints["cont"].append(cont)
        ints["label"].append(-1 if label is None else self._labels.setdefault(label, len(self._labels)))
        ints["split"].append(-1 if split is None else self._splits.setdefault(split, len(self._splits)))
        ints["size"].append(size)
        ints["a"].append(a)
        ints["b"].append(b)
        for key, value in (("text", text), ("text2", text2)):
            data, ends, null = self._texts[key]
            if value is not None:
                data += os.fsencode(value)
            ends.append(len(data))
            null.append(value is None)
        if len(ints["cont"]) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        ints = self._ints
        if not ints["cont"]:
            return
        digest = np.frombuffer(bytes(self._digests), dtype=np.uint8).reshape(-1, 10)
        chunk: dict[str, Any] = {k: _narrow(np.array(v, dtype=v.typecode)) for k, v in ints.items()}
        chunk["hi"] = np.ascontiguousarray(digest[:, :8]).view(">u8").ravel().astype(np.uint64)
        chunk["lo"] = (digest[:, 8].astype(np.uint16) << 8) | digest[:, 9]
        for key, (data, ends, null) in self._texts.items():
            chunk[key] = (
                None
                if all(null)
                else (np.frombuffer(bytes(data), dtype=np.uint8), np.array(ends, dtype=np.int64), np.array(null, dtype=bool))
            )
        self._chunks.append(chunk)
        self._reset()

    def build(self, sort_by_text: bool = False) -> ItemTable:
        """The table of every input added: in the order added, or in the byte order of ``text``."""
        self._flush()
        chunks, self._chunks = self._chunks, []
        sizes = [len(c["cont"]) for c in chunks]
        n = sum(sizes)

        def cat(key: str, dtype: Any) -> np.ndarray:
            """The column of every chunk, in the narrowest integer type that holds them all."""
            if chunks and key not in ("hi", "lo"):
                dtype = np.result_type(*(c[key].dtype for c in chunks))
            out = np.empty(n, dtype)
            at = 0
            for k, c in enumerate(chunks, start=1):
                part = c.pop(key)
                out[at : at + len(part)] = part
                at += len(part)
                del part
                if k % _TRIM_EVERY == 0:  # the copied chunks' pages go back now: the column is not held twice
                    _release_freed_memory()
            _release_freed_memory()
            return out

        def text(key: str) -> pa.Array | None:
            pieces = [c.pop(key) for c in chunks]
            if all(p is None for p in pieces):
                return None
            data = (
                np.concatenate([p[0] for p in pieces if p is not None])
                if any(p is not None for p in pieces)
                else np.empty(0, np.uint8)
            )
            offsets = np.empty(n + 1, np.int64)
            offsets[0] = 0
            valid = np.empty(n, bool)
            at, base = 0, 0
            for p, k in zip(pieces, sizes):
                if p is None:
                    offsets[at + 1 : at + k + 1] = base
                    valid[at : at + k] = False
                else:
                    offsets[at + 1 : at + k + 1] = base + p[1][1:]
                    valid[at : at + k] = ~p[2]
                    base += int(p[1][-1])
                at += k
            return _binary(data, offsets, valid)

        table = ItemTable(
            self.containers,
            cat("cont", np.int32),
            cat("hi", np.uint64),
            cat("lo", np.uint16),
            cat("label", np.int32),
            cat("split", np.int16),
            list(self._labels),
            list(self._splits),
            cat("size", np.int64),
            cat("a", np.int64),
            cat("b", np.int64),
            text("text"),
            text("text2"),
        )
        chunks.clear()
        if sort_by_text:
            table = table.sorted_by_text()  # the unsorted columns are freed here
        _release_freed_memory()
        return table


def as_table(items: Sequence[SourceItem]) -> ItemTable:
    """``items`` as an :class:`ItemTable`: itself, or a custom source's list, whose objects are kept as they
    are (``table[i]`` is the very object; the ids as digests when they are deepfeat's, so that resume
    compares digests; runs of one ``group`` stay one container)."""
    if isinstance(items, ItemTable):
        return items
    n = len(items)
    keys = _digest_keys([it.id for it in items])
    labels = sorted({it.label for it in items if it.label is not None})
    splits = sorted({it.split for it in items if it.split is not None})
    lab = {v: k for k, v in enumerate(labels)}
    spl = {v: k for k, v in enumerate(splits)}
    label = np.array([lab[it.label] if it.label is not None else -1 for it in items], dtype=np.int32)
    split = np.array([spl[it.split] if it.split is not None else -1 for it in items], dtype=np.int16)
    containers: list[Container] = []
    cont = np.empty(n, dtype=np.int32)
    last: object = object()
    for i, it in enumerate(items):
        if it.group != last:
            containers.append(ObjectRows(items, it.group))
            last = it.group
        cont[i] = len(containers) - 1
    hi, lo = keys if keys is not None else (np.zeros(n, np.uint64), np.zeros(n, np.uint16))
    return ItemTable(
        containers,
        cont,
        hi,
        lo,
        label,
        split,
        labels,
        splits,
        np.zeros(n, np.int64),
        np.arange(n, dtype=np.int64),
        np.zeros(n, np.int64),
        hex_ids=keys is not None,
    )


_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
_HEX_VALUE[np.frombuffer(b"0123456789abcdef", dtype=np.uint8)] = np.arange(16, dtype=np.uint8)


def hex_keys(arrays: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(first 8 digest bytes as uint64, last 2 as uint16) of 20-hex-digit ids given as Arrow string arrays,
    chunk by chunk; None if any id is not one."""
    his, los = [], []
    for chunk in arrays:
        for s in range(0, len(chunk), _FLUSH):
            ids = chunk.slice(s, _FLUSH)
            if ids.null_count:
                return None
            offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32, count=len(ids) + 1, offset=4 * ids.offset)
            if not (np.diff(offsets) == 20).all():
                return None
            nibbles = _HEX_VALUE[
                np.frombuffer(ids.buffers()[2], dtype=np.uint8, count=20 * len(ids), offset=int(offsets[0]))
            ]
            if (nibbles == 255).any():
                return None
            digest = (nibbles[0::2] << 4 | nibbles[1::2]).reshape(len(ids), 10)
            his.append(np.ascontiguousarray(digest[:, :8]).view(">u8").ravel().astype(np.uint64))
            los.append(digest[:, 8].astype(np.uint16) << 8 | digest[:, 9])
    if not his:
        return np.empty(0, np.uint64), np.empty(0, np.uint16)
    return np.concatenate(his), np.concatenate(los)


def _digest_keys(ids: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    return hex_keys(pa.array(ids[s : s + _FLUSH], type=pa.string()) for s in range(0, len(ids), _FLUSH))


def members(keys: tuple[np.ndarray, np.ndarray], of: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """For each key, whether it is one of ``of`` (both as :func:`hex_keys` gives them)."""
    hi, lo = keys
    order = np.argsort(of[0], kind="stable")
    of_hi, of_lo = of[0][order], of[1][order]
    del order
    found = np.zeros(len(hi), dtype=bool)
    for s in range(0, len(hi), _FLUSH):
        h, low = hi[s : s + _FLUSH], lo[s : s + _FLUSH]
        left = np.searchsorted(of_hi, h, side="left")
        right = np.searchsorted(of_hi, h, side="right")
        single = np.flatnonzero(right - left == 1)
        found[s + single] = of_lo[left[single]] == low[single]
        for i in np.flatnonzero(right - left > 1):  # the same first 8 bytes: rare (a few pairs in 10^9 ids)
            found[s + i] = bool((of_lo[left[i] : right[i]] == low[i]).any())
    return found

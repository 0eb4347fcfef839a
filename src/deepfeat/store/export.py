"""Exporting a feature store to npy, HDF5, Parquet or CSV, part by part (``deepfeat export``).

The store is never loaded as a whole: each committed part's selected rows are read
(memory-mapped), written to the output, and dropped. Outputs are written under a temporary
name next to ``out`` and moved into place with :func:`os.replace` only when complete, so a
failed export leaves nothing that looks finished. Layer and file names come from the store's
metadata; labels and ids are data only, never parts of a path.

Before anything is written, the output's folder must be writable and its filesystem must have room
for the export's estimated size (:func:`estimate_export_bytes`); the ``npy`` and ``hdf5`` files are
then preallocated (``posix_fallocate``), so a full disk is an :class:`EnvironmentFault` (exit
status 4), never a signal: writing into a sparse memory map or letting HDF5 hit ``ENOSPC`` in its
cache ended the process with SIGBUS / SIGSEGV.

Formats:

``npy``      ``out/`` is a directory: ``<layer key>.npy`` (rows x dims, the store's dtype) per
             layer plus ``rows.parquet`` (the row metadata, aligned row by row), written with
             ordinary file I/O.
``hdf5``     one file: ``features/<layer key>`` (rows x dims, chunked) and ``meta/id``,
             ``meta/label``, ``meta/split``, ``meta/path`` (UTF-8 strings, ``""`` when missing),
             ``meta/view`` (int16); the store's metadata JSON in the ``deepfeat_metadata``
             attribute. Needs ``h5py``.
``parquet``  one file: the row metadata columns plus one ``fixed_size_list<float32>`` column per
             layer (named after the layer), one row group per part; the store's metadata JSON in
             the schema metadata under ``deepfeat``.
``csv``      one file: header ``id,label,split,view,path,sha256,<layer>_0,<layer>_1,...``, one row
             per vector (the row metadata of the other formats: which image each row is), values
             with 9 significant digits (exact for float32 and float16). Large and slow.

Example:
    >>> export_store("feats/", "feats.parquet", "parquet", layers=["pre_logits"], split="train")  # doctest: +SKIP
    ['feats.parquet']
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import progress
from ..errors import StoreError, UsageError
from ..params import check_choice, param_error
from ..units import format_size
from . import layout
from .fsutil import check_writable, environment_errors, fsync_dir, reserve_space
from .layerspec import LayerSpec
from .manifest import PartRecord
from .reader import FeatureStore, open_store

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("npy", "hdf5", "parquet", "csv")
#: Metadata columns of the CSV prefix (those of Parquet's row metadata that say which image a row is).
CSV_META_COLUMNS = ("id", "label", "split", "view", "path", "sha256")
#: Text columns of the HDF5 ``meta/`` group (besides ``view``).
HDF5_META_COLUMNS = ("id", "label", "split", "path")
#: Bytes per value of a CSV export (up to 9 significant digits, sign, exponent and the comma).
CSV_BYTES_PER_VALUE = 12
HDF5_INSTALL_HINT = "pip install h5py"
_NPY_EXPORT_FILES = (layout.ROWS_FILE,)


# ------------------------------------------------------------------------------- selection
class _Selection:
    """The parts, layers, splits and views an export covers, and how many rows that is."""

    def __init__(
        self,
        store: FeatureStore,
        layers: str | Sequence[str] | None,
        split: str | Sequence[str] | None,
        views: str | int | Sequence[int],
    ) -> None:
        self.store = store
        self.specs = _resolve_layers(store, layers)
        if split is None:
            self.splits: list[str] | None = None
        else:
            self.splits = [split] if isinstance(split, str) else list(split)
            unknown = [s for s in self.splits if s not in store.splits]
            if unknown:
                raise UsageError(f"The store has no split {unknown[0]!r}; it has: {', '.join(store.splits) or 'none'}.")
        if isinstance(views, str):
            if views != "all":
                raise param_error("views", "'all', an int or a list of ints", views, "export_store")
            self.views: list[int] | None = None
        elif isinstance(views, (int, np.integer)):
            self.views = [int(views)]
        else:
            self.views = [int(v) for v in views]
        self.parts = [p for p in store.iter_parts() if self.splits is None or any(p.splits.get(s) for s in self.splits)]
        # outputs are sized from the manifest's row counts: its sizes must hold before anything is allocated
        store.check_sizes(self.parts, self.specs)
        self.total = self._count()
        self._meta_bytes: int | None = None

    def _count(self) -> int:
        if self.views is None:
            if self.splits is None:
                return sum(p.rows for p in self.parts)
            return sum(p.splits.get(s, 0) for p in self.parts for s in self.splits)
        return sum(int(self._mask(self.store.read_rows(p, ["split", "view"])).sum()) for p in self.parts)

    def _mask(self, meta: pa.Table) -> np.ndarray:
        mask = np.ones(meta.num_rows, dtype=bool)
        if self.splits is not None:
            values = np.asarray([s or "" for s in meta.column("split").to_pylist()], dtype=object)
            mask &= np.isin(values, np.asarray(self.splits, dtype=object))
        if self.views is not None:
            mask &= np.isin(meta.column("view").to_numpy(zero_copy_only=False), self.views)
        return mask

    def meta_bytes(self) -> int:
        """In-memory size of the selected rows' metadata (an upper bound of what it takes on disk)."""
        if self._meta_bytes is None:
            total = 0
            for part in self.parts:
                meta = self.store.read_rows(part)
                if meta.num_rows:
                    total += int(meta.nbytes * int(self._mask(meta).sum()) / meta.num_rows)
            self._meta_bytes = total
        return self._meta_bytes

    def chunks(self) -> Iterator[tuple[PartRecord, pa.Table, dict[str, np.ndarray]]]:
        """Per part: (part, selected row metadata, {layer key: selected rows x dims}), with progress."""
        return progress.track(self._chunks(), "export", total=self.total, unit="rows", size=lambda c: c[1].num_rows)

    def _chunks(self) -> Iterator[tuple[PartRecord, pa.Table, dict[str, np.ndarray]]]:
        for part in self.parts:
            meta = self.store.read_rows(part)
            idx = np.flatnonzero(self._mask(meta))
            if not len(idx):
                continue
            whole = len(idx) == meta.num_rows
            first, last = int(idx[0]), int(idx[-1]) + 1
            feats = {}
            for spec in self.specs:
                arr = self.store.read_features(part, spec, first, last)
                feats[spec.key] = arr if whole else arr[idx - first]
            yield part, (meta if whole else meta.take(pa.array(idx))), feats


def _resolve_layers(store: FeatureStore, layers: str | Sequence[str] | None) -> list[LayerSpec]:
    specs = store.select_layers(layers, "export_store")
    for spec in specs:
        if layout.layer_key(spec.key) != spec.key or spec.key in (".", ".."):
            raise StoreError(f"The store's metadata has an unsafe file key {spec.key!r} for layer {spec.name!r}.")
    return specs


# ------------------------------------------------------------------------------- output handling
def _check_out(store_path: str, out: str, is_dir: bool, overwrite: bool) -> None:
    real_store = os.path.realpath(store_path)
    real_out = os.path.realpath(out)
    if real_out == real_store or real_out.startswith(real_store + os.sep) or real_store.startswith(real_out + os.sep):
        raise UsageError(f"The export output {out!r} must be outside the store {store_path!r} (and not contain it).")
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise UsageError(f"The export output {out!r} already exists; pass overwrite=True (--overwrite) to replace it.")
    if os.path.isdir(out) and not os.path.islink(out):
        if not is_dir:
            raise UsageError(f"The export output {out!r} is a directory; give a file name for this format.")
        foreign = [e for e in os.listdir(out) if not (e.endswith(".npy") or e in _NPY_EXPORT_FILES)]
        if foreign:
            raise UsageError(
                f"The export output {out!r} holds files that are not an npy export ({foreign[0]!r}...); "
                "refusing to replace it. Choose another output."
            )


def _tmp_name(out: str) -> str:
    parent, base = os.path.split(os.path.abspath(out))
    return os.path.join(parent, f".{base}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _discard(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _publish(tmp: str, out: str) -> None:
    """Move the finished temp output to ``out`` (replacing an old export when allowed)."""
    old = None
    if os.path.isdir(out) and not os.path.islink(out):
        old = _tmp_name(out) + ".old"
        os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(os.path.dirname(os.path.abspath(out)))


def _metadata_json(store: FeatureStore, sel: _Selection) -> str:
    return json.dumps(
        {
            "store": os.path.abspath(store.path),
            "metadata": store.metadata,
            "export": {
                "layers": [s.to_dict() for s in sel.specs],
                "splits": sel.splits,
                "views": sel.views if sel.views is not None else "all",
                "rows": sel.total,
            },
        },
        default=str,
    )


def _row_schema(store: FeatureStore, sel: _Selection) -> pa.Schema:
    return layout.ROWS_SCHEMA.with_metadata({"deepfeat": _metadata_json(store, sel)})


def _strings(meta: pa.Table, column: str) -> list[str]:
    return ["" if v is None else str(v) for v in meta.column(column).to_pylist()]


# ------------------------------------------------------------------------------- writers
def _write_npy(store: FeatureStore, sel: _Selection, tmp: str, out: str) -> list[str]:
    """One ``.npy`` per layer, header then rows appended part by part (no memory map: a full disk is an
    ``OSError``, not a SIGBUS); each file is preallocated to its final size first."""
    os.makedirs(tmp)
    dtype = np.dtype(store.dtype)
    schema = _row_schema(store, sel)
    pos = 0
    with contextlib.ExitStack() as stack:
        files = {}
        for s in sel.specs:
            f = stack.enter_context(open(os.path.join(tmp, f"{s.key}.npy"), "wb"))
            header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (sel.total, s.dims)}
            np.lib.format.write_array_header_1_0(f, header)
            f.flush()
            reserve_space(f.fileno(), f.tell() + sel.total * s.dims * dtype.itemsize)
            files[s.key] = f
        writer = stack.enter_context(pq.ParquetWriter(os.path.join(tmp, layout.ROWS_FILE), schema, compression="zstd"))
        for _part, meta, feats in sel.chunks():
            n = meta.num_rows
            if pos + n > sel.total:
                raise StoreError(f"{store.path}: more rows than the manifest announces ({pos + n} > {sel.total})")
            for key, arr in feats.items():
                files[key].write(np.ascontiguousarray(arr, dtype=dtype).data.cast("B"))
            writer.write_table(meta.cast(schema))
            pos += n
        if pos == 0:
            writer.write_table(schema.empty_table())
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
    _check_count(store, pos, sel.total)
    return [os.path.join(out, f"{s.key}.npy") for s in sel.specs] + [os.path.join(out, layout.ROWS_FILE)]


def _check_count(store: FeatureStore, written: int, expected: int) -> None:
    if written != expected:
        raise StoreError(
            f"{store.path}: exported {written} rows but the manifest announces {expected}; "
            "run 'deepfeat info --verify' on the store."
        )


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError:
        raise UsageError(f"Exporting to HDF5 needs the h5py package: {HDF5_INSTALL_HINT}") from None
    return h5py


def _write_hdf5(store: FeatureStore, sel: _Selection, tmp: str, out: str) -> list[str]:
    h5py = _import_h5py()
    dtype = np.dtype(store.dtype)
    text = h5py.string_dtype("utf-8")
    n = sel.total
    # HDF5 that meets ENOSPC while flushing its cache can end the process with SIGSEGV: the file is
    # created, preallocated to the estimated size, then filled in place (HDF5 truncates it at close)
    with h5py.File(tmp, "w"):
        pass
    fd = os.open(tmp, os.O_RDWR)
    try:
        reserve_space(fd, estimate_export_bytes(store, sel, "hdf5"))
    finally:
        os.close(fd)
    with h5py.File(tmp, "r+") as f:
        f.attrs["format"] = "deepfeat-export"
        f.attrs["deepfeat_metadata"] = _metadata_json(store, sel)
        f.attrs["rows"] = n
        feats_group = f.create_group("features")
        datasets = {}
        for s in sel.specs:
            chunk_rows = max(1, min(max(n, 1), (1 << 20) // max(1, s.dims * dtype.itemsize)))
            ds = feats_group.create_dataset(
                s.key, shape=(n, s.dims), maxshape=(None, s.dims), dtype=dtype, chunks=(chunk_rows, s.dims)
            )
            ds.attrs["layer"] = s.name
            ds.attrs["pool"] = s.pool
            ds.attrs["shape"] = list(s.shape)
            datasets[s.key] = ds
        meta_group = f.create_group("meta")
        chunk = (max(1, min(max(n, 1), 65536)),)
        meta_ds = {
            c: meta_group.create_dataset(c, shape=(n,), maxshape=(None,), dtype=text, chunks=chunk)
            for c in HDF5_META_COLUMNS
        }
        view_ds = meta_group.create_dataset(
            "view", shape=(n,), maxshape=(None,), dtype=np.int16, chunks=(max(1, min(max(n, 1), 65536)),)
        )
        pos = 0
        for _part, meta, feats in sel.chunks():
            k = meta.num_rows
            if pos + k > n:
                raise StoreError(f"{store.path}: more rows than the manifest announces ({pos + k} > {n})")
            for key, arr in feats.items():
                datasets[key][pos : pos + k] = arr
            for c, ds in meta_ds.items():
                ds[pos : pos + k] = np.array(_strings(meta, c), dtype=object)
            view_ds[pos : pos + k] = meta.column("view").to_numpy(zero_copy_only=False).astype(np.int16)
            pos += k
    _check_count(store, pos, n)
    return [out]


def _write_parquet(store: FeatureStore, sel: _Selection, tmp: str, out: str) -> list[str]:
    taken = set(layout.ROWS_SCHEMA.names)
    columns: dict[str, str] = {}
    for s in sel.specs:
        name = s.name if s.name not in taken else f"features.{s.key}"
        taken.add(name)
        columns[s.key] = name
    fields = list(layout.ROWS_SCHEMA) + [
        pa.field(
            columns[s.key],
            pa.list_(pa.float32(), s.dims),
            metadata={"layer": s.name, "pool": s.pool, "store_dtype": store.dtype},
        )
        for s in sel.specs
    ]
    schema = pa.schema(fields, metadata={"deepfeat": _metadata_json(store, sel)})
    pos = 0
    with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
        for _part, meta, feats in sel.chunks():
            arrays = [meta.column(c) for c in layout.ROWS_SCHEMA.names]
            for s in sel.specs:
                flat = pa.array(np.ascontiguousarray(feats[s.key], dtype=np.float32).reshape(-1))
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, s.dims))
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            pos += meta.num_rows
        if pos == 0:
            writer.write_table(schema.empty_table())
    _check_count(store, pos, sel.total)
    return [out]


def _write_csv(store: FeatureStore, sel: _Selection, tmp: str, out: str) -> list[str]:
    total_dims = sum(s.dims for s in sel.specs)
    log.warning(
        "CSV export writes %d rows x %d values as text: large (~%s) and slow; prefer npy, parquet or hdf5",
        sel.total,
        total_dims,
        format_size(sel.total * total_dims * CSV_BYTES_PER_VALUE),
    )
    pos = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(list(CSV_META_COLUMNS) + [f"{s.name}_{i}" for s in sel.specs for i in range(s.dims)])
        for _part, meta, feats in sel.chunks():
            values = np.concatenate([feats[s.key].astype(np.float32, copy=False) for s in sel.specs], axis=1)
            text = np.char.mod("%.9g", values)
            prefix = zip(*(meta.column(c).to_pylist() if c == "view" else _strings(meta, c) for c in CSV_META_COLUMNS))
            for cells, row in zip(prefix, text):
                writer.writerow([*cells, *row.tolist()])
            pos += meta.num_rows
    _check_count(store, pos, sel.total)
    return [out]


_WRITERS: dict[str, tuple[bool, Callable[[FeatureStore, _Selection, str, str], list[str]]]] = {
    "npy": (True, _write_npy),
    "hdf5": (False, _write_hdf5),
    "parquet": (False, _write_parquet),
    "csv": (False, _write_csv),
}


# ------------------------------------------------------------------------------- public API
def export_store(
    path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    format: str,
    layers: str | Sequence[str] | None = None,
    split: str | Sequence[str] | None = None,
    views: str | int | Sequence[int] = "all",
    *,
    overwrite: bool = False,
    verify: bool = True,
) -> list[str]:
    """Export the chosen layers / splits / views of a store, streaming part by part.

    Args:
        path: the store directory.
        out: a directory for ``npy``, a file for ``hdf5``, ``parquet`` and ``csv``.
        format: one of :data:`FORMATS` (see the module docstring for each layout).
        layers: layer names (a list or ``"a,b"``; keys work too); default every layer.
        split: a split name or list of them; default every row.
        views: ``"all"``, a view index or a list of them.
        overwrite: replace an existing ``out`` (otherwise a :class:`UsageError`).
        verify: check each part's sha256 against the manifest as it is read.

    Returns:
        The paths written (for ``npy`` one ``.npy`` per layer and ``rows.parquet``).

    Raises:
        UsageError: unknown format, layer or split; ``out`` exists; h5py missing for hdf5.
        StoreError: the store is missing or damaged.

    Example:
        >>> export_store("feats/", "out_npy", "npy", layers="pre_logits")   # doctest: +SKIP
        ['out_npy/pre_logits.npy', 'out_npy/rows.parquet']
    """
    check_choice(format, "format", FORMATS, where="export_store")
    is_dir, write = _WRITERS[format]
    path, out = os.fspath(path), os.fspath(out)
    if not out:
        raise UsageError("The export output path is empty.")
    if format == "hdf5":
        _import_h5py()
    store = open_store(path, verify=verify)
    sel = _Selection(store, layers, split, views)
    _check_out(path, out, is_dir, overwrite)
    check_writable(out, "the export", directory=is_dir, need=estimate_export_bytes(store, sel, format))
    parent = os.path.dirname(os.path.abspath(out))
    with environment_errors(f"exporting {path} to {out}"):
        os.makedirs(parent, exist_ok=True)
        tmp = _tmp_name(out)
        try:
            written = write(store, sel, tmp, out)
            _publish(tmp, out)
        except BaseException:
            _discard(tmp)
            raise
    log.info("exported %d rows x %d layer(s) of %s to %s (%s)", sel.total, len(sel.specs), path, out, format)
    return written


def estimate_export_bytes(store: FeatureStore, sel: _Selection, format: str) -> int:
    """About how many bytes the export will occupy (a little more, never much less): the feature values
    in the format's encoding plus the row metadata, with room for HDF5's own structures."""
    dims = sum(s.dims for s in sel.specs)
    per_value = {
        "npy": np.dtype(store.dtype).itemsize,
        "hdf5": np.dtype(store.dtype).itemsize,
        "parquet": 4,
        "csv": CSV_BYTES_PER_VALUE,
    }[format]
    values = sel.total * dims * per_value
    meta = sel.meta_bytes()
    if format == "hdf5":  # variable-length strings live in a global heap (~16 B per string), chunk B-trees
        return int(values * 1.02 + meta + sel.total * 16 * len(HDF5_META_COLUMNS) + (1 << 20))
    return int(values + meta + (64 << 10))


def read_export_metadata(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The store metadata embedded in an npy (``rows.parquet``), parquet or hdf5 export.

    Example:
        >>> read_export_metadata("feats.parquet")["metadata"]["dtype"]   # doctest: +SKIP
        'float16'
    """
    out = os.fspath(out)
    if os.path.isdir(out):
        out = os.path.join(out, layout.ROWS_FILE)
    if out.endswith((".h5", ".hdf5", ".hdf")) or (os.path.isfile(out) and _is_hdf5(out)):
        h5py = _import_h5py()
        with h5py.File(out, "r") as f:
            meta: dict[str, Any] = json.loads(f.attrs["deepfeat_metadata"])
            return meta
    md = pq.read_schema(out).metadata or {}
    if b"deepfeat" not in md:
        raise UsageError(f"{out!r} carries no deepfeat metadata (not an npy/parquet/hdf5 export).")
    found: dict[str, Any] = json.loads(md[b"deepfeat"])
    return found


def _is_hdf5(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89HDF\r\n\x1a\n"

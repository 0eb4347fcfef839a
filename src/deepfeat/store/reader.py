"""Reading a feature store in batches without loading it.

Example:
    >>> store = open_store("feats/")                                   # doctest: +SKIP
    >>> for batch in store.batches(layers=["pre_logits"], split="train", batch_size=512):  # doctest: +SKIP
    ...     X, y = batch.features["pre_logits"], batch.labels          # numpy arrays
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..errors import StoreError, UsageError
from ..params import check_int, param_error
from . import layout, trust
from .fsutil import sha256_file
from .layerspec import LayerSpec
from .manifest import Manifest, PartRecord

#: batches of (features by layer, metadata rows)
Batches = Iterator[tuple[dict[str, np.ndarray], pa.Table]]

log = logging.getLogger(__name__)

#: Bytes of feature rows :meth:`FeatureStore.batches` reads from a part at a time.
DEFAULT_READ_BYTES = 32 << 20
#: Largest uncompressed size per row a store's Parquet footer may declare (paths, messages...).
MAX_PARQUET_ROW_BYTES = 64 << 10


@dataclass
class Batch:
    """A batch of rows: ``features`` {layer: rows x dims}, ``labels`` (str or None), ``meta``."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    meta: pa.Table
    ids: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.meta.num_rows)

    def concat(self, layers: Sequence[str] | None = None, dtype: Any = np.float32) -> np.ndarray:
        """The chosen layers' features side by side as one rows x sum(dims) array."""
        names = list(layers) if layers is not None else list(self.features)
        return np.concatenate([self.features[n].astype(dtype, copy=False) for n in names], axis=1)


class FeatureStore:
    """Read-only view of a committed store (see docs/STORE_FORMAT.md)."""

    def __init__(self, path: str | os.PathLike[str], verify: bool = True) -> None:
        self.path = os.fspath(path)
        if not os.path.lexists(os.path.join(self.path, layout.METADATA_FILE)):
            raise StoreError(f"{self.path!r} is not a deepfeat feature store (no {layout.METADATA_FILE}).")
        # Everything the store says about itself is checked before it names a file (store/trust.py).
        self.metadata: dict[str, Any] = trust.check_metadata(trust.read_store_json(self.path, layout.METADATA_FILE))
        self.layers = [LayerSpec.from_dict(d) for d in self.metadata["layers"]]
        self.manifest = Manifest(self.path, self.metadata)
        self.verify = verify
        self._verified: set[str] = set()
        self._headers: dict[tuple[str, str], tuple[str, int, np.dtype]] = {}

    # -- description ----------------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        return [spec.name for spec in self.layers]

    def layer(self, name: str) -> LayerSpec:
        for spec in self.layers:
            if spec.name == name:
                return spec
        raise UsageError(f"The store has no layer {name!r}; it has: {', '.join(self.layer_names)}.")

    def select_layers(self, layers: str | Sequence[str] | None, where: str) -> list[LayerSpec]:
        """The stored layers a verb uses, in the order given: None or ``"all"`` (the documented shortcut)
        is every layer; a comma-separated string or a list names layers (or their file keys).

        Raises:
            UsageError: no name, a name given twice, or a layer the store does not have (listing them).
        """
        if layers is None or (isinstance(layers, str) and layers.strip().lower() == "all"):
            return list(self.layers)
        names = [n.strip() for n in layers.split(",") if n.strip()] if isinstance(layers, str) else list(layers)
        expected = f"'all' or layers of the store ({', '.join(self.layer_names)})"
        if not names:
            raise param_error("layers", expected, layers, where)
        if len(set(names)) != len(names):
            raise param_error("layers", "distinct layer names", layers, where)
        by_key = {spec.key: spec for spec in self.layers}
        by_name = {spec.name: spec for spec in self.layers}
        unknown = [n for n in names if n not in by_name and n not in by_key]
        if unknown:
            raise UsageError(
                f"The store has no layer {unknown[0]!r} (the 'layers' parameter of {where}); it has: "
                f"{', '.join(self.layer_names)} ('all' names every one)."
            )
        return [by_name[n] if n in by_name else by_key[n] for n in names]

    @property
    def parts(self) -> list[PartRecord]:
        return list(self.manifest.parts)

    @property
    def dtype(self) -> str:
        return str(self.metadata["dtype"])

    def num_rows(self, split: str | None = None) -> int:
        if split is None:
            return sum(p.rows for p in self.manifest.parts)
        return sum(p.splits.get(split, 0) for p in self.manifest.parts)

    @property
    def splits(self) -> list[str]:
        return sorted({s for p in self.manifest.parts for s in p.splits if s})

    def rows(self, columns: Sequence[str] | None = None) -> pa.Table:
        """Row metadata of every stored vector, in store order."""
        tables = [self.read_rows(p, columns) for p in self.manifest.parts if p.rows]
        if not tables:
            schema = layout.ROWS_SCHEMA if columns is None else pa.schema([layout.ROWS_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        return pa.concat_tables(tables)

    @property
    def classes(self) -> list[str]:
        labels = self.rows(["label"]).column("label")
        return sorted(v for v in pc.unique(labels).to_pylist() if v is not None)

    def ledger(self) -> pa.Table:
        """The fate of every discovered input: embedded | failed | excluded, with reasons."""
        tables = [self.read_ledger(p) for p in self.manifest.parts]
        excluded = self.read_excluded()
        if excluded is not None:
            tables.append(excluded)
        if not tables:
            return layout.LEDGER_SCHEMA.empty_table()
        return pa.concat_tables([t.cast(layout.LEDGER_SCHEMA) for t in tables])

    def done_ids(self) -> set[str]:
        """Ids of every input a committed part records (embedded or failed): what a resume skips."""
        return {i for chunk in self.done_id_chunks() for i in chunk.to_pylist()}

    def done_id_chunks(self, parts: Iterable[PartRecord] | None = None) -> Iterator[pa.Array]:
        """The ids of :meth:`done_ids` as Arrow string arrays, one ledger at a time (no Python object per
        id: what a resume of millions of inputs reads, see :func:`deepfeat.extraction.resume_filter`);
        only those of ``parts`` when given."""
        for part in self.manifest.parts if parts is None else parts:
            for chunk in self.read_ledger(part, ["id"]).column("id").chunks:
                yield chunk.cast(pa.string())

    def failures_by_reason(self) -> dict[str, int]:
        """Failed inputs of the committed parts, counted by reason (sorted by reason)."""
        reasons: dict[str, int] = {}
        for part in self.manifest.parts:
            if part.failed:
                t = self.read_ledger(part, ["status", "reason"])
                for status, reason in zip(t.column("status").to_pylist(), t.column("reason").to_pylist()):
                    if status == "failed":
                        reasons[reason] = reasons.get(reason, 0) + 1
        return dict(sorted(reasons.items()))

    def read_excluded(self) -> pa.Table | None:
        """The inputs excluded at discovery (``excluded.parquet``), or None when the store has none."""
        path = self.member(layout.EXCLUDED_FILE)
        return _read_table(path, layout.EXCLUDED_FILE) if os.path.isfile(path) else None

    # -- reading --------------------------------------------------------------------------
    def member(self, *names: str) -> str:
        """The path of a file of the store, refused unless it resolves inside the store to a regular file.

        Every file a reader opens goes through here (see :func:`deepfeat.store.trust.member`);
        names come from the checked manifest and metadata or are the format's own constants.
        """
        return trust.member(self.path, *names)

    def part_file(self, part: PartRecord, fname: str) -> str:
        """Path of one file of a committed part (checked like :meth:`member`)."""
        return trust.member(self.path, layout.PARTS_DIR, part.name, fname, what=f"part {part.name}: {fname}")

    def _check_file(self, part: PartRecord, fname: str) -> str:
        info = part.files.get(fname)
        if info is None:
            raise StoreError(f"part {part.name} has no file {fname} in the manifest")
        path = self.part_file(part, fname)
        try:
            size = os.path.getsize(path)
        except OSError:
            raise StoreError(f"part {part.name}: {fname} is missing from {self.path}") from None
        if size != info["bytes"]:
            raise StoreError(
                f"part {part.name}: {fname} has {size} bytes, the manifest says {info['bytes']} (truncated or "
                "replaced). Re-extract that part (delete it from manifest.json and rerun extract) or restore it."
            )
        if self.verify and path not in self._verified:
            if sha256_file(path) != info["sha256"]:
                raise StoreError(f"part {part.name}: {fname} fails its sha256 checksum (corrupted on disk).")
            self._verified.add(path)
        return path

    def read_rows(self, part: PartRecord, columns: Sequence[str] | None = None) -> pa.Table:
        """Row metadata (``rows.parquet``) of one part, checksum-verified on first read.

        The Parquet footer must announce the manifest's row count before any column is read.
        """
        path = self._check_file(part, layout.ROWS_FILE)
        return _read_table(path, f"part {part.name}: {layout.ROWS_FILE}", columns, part.rows)

    def read_ledger(self, part: PartRecord, columns: Sequence[str] | None = None) -> pa.Table:
        """The ledger (``ledger.parquet``: every input of the part and its fate) of one part."""
        path = self._check_file(part, layout.LEDGER_FILE)
        return _read_table(path, f"part {part.name}: {layout.LEDGER_FILE}", columns, part.items)

    def check_sizes(self, parts: Sequence[PartRecord] | None = None, layers: Sequence[LayerSpec] | None = None) -> None:
        """Check that the feature files of ``parts`` have the sizes the manifest records (no data read).

        Callers that size an output from the manifest's row counts (an export) call this first, so
        a manifest that claims more rows than its files hold fails before anything is allocated.
        """
        for part in self.manifest.parts if parts is None else parts:
            if not part.rows:
                continue
            for spec in self.layers if layers is None else layers:
                fname = f"{spec.key}.npy"
                path = self.part_file(part, fname)
                try:
                    size = os.path.getsize(path)
                except OSError:
                    raise StoreError(f"part {part.name}: {fname} is missing from {self.path}") from None
                if size != part.files[fname]["bytes"]:
                    raise StoreError(
                        f"part {part.name}: {fname} has {size} bytes, the manifest says "
                        f"{part.files[fname]['bytes']} (truncated, replaced or a false manifest)."
                    )

    def _npy_header(self, part: PartRecord, spec: LayerSpec) -> tuple[str, int, np.dtype]:
        """(path, data offset, dtype) of a part's feature file, its shape checked against the manifest."""
        key = (part.name, spec.key)
        cached = self._headers.get(key)
        if cached is not None:
            return cached
        path = self._check_file(part, f"{spec.key}.npy")
        with open(path, "rb") as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
            except Exception as exc:  # noqa: BLE001 - numpy raises several types on a hostile header
                raise StoreError(f"part {part.name}: {spec.key}.npy is not a valid .npy file ({exc}).") from None
            offset = f.tell()
        if fortran or dtype.hasobject or tuple(shape) != (part.rows, spec.dims):
            raise StoreError(
                f"part {part.name}: {spec.key}.npy has shape {tuple(shape)} "
                f"{'(Fortran order) ' if fortran else ''}of {dtype}, expected C-order "
                f"({part.rows}, {spec.dims}) numbers"
            )
        if dtype != np.dtype(self.dtype):
            raise StoreError(f"part {part.name}: {spec.key}.npy holds {dtype} values, the store's dtype is {self.dtype}")
        if offset + part.rows * spec.dims * dtype.itemsize != part.files[f"{spec.key}.npy"]["bytes"]:
            raise StoreError(
                f"part {part.name}: {spec.key}.npy's header and size disagree "
                f"({offset} + {part.rows} x {spec.dims} x {dtype.itemsize} bytes)."
            )
        self._headers[key] = (path, offset, dtype)
        return path, offset, dtype

    def read_features(self, part: PartRecord, layer: str | LayerSpec, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one layer of one part, read into memory (only those rows).

        Reads with plain file I/O rather than a memory map, so the bytes held are exactly the
        rows asked for: a reader's memory does not grow with the size of a part.

        Example:
            >>> part = store.parts[0]                                            # doctest: +SKIP
            >>> store.read_features(part, "pre_logits", 0, 256).shape            # doctest: +SKIP
            (256, 1280)
        """
        spec = layer if isinstance(layer, LayerSpec) else self.layer(layer)
        path, offset, dtype = self._npy_header(part, spec)
        stop = part.rows if stop is None else min(int(stop), part.rows)
        start = max(0, int(start))
        out = np.empty((max(0, stop - start), spec.dims), dtype=dtype)
        if out.size:
            with open(path, "rb") as f:
                f.seek(offset + start * spec.dims * dtype.itemsize)
                got = f.readinto(out.data.cast("B"))
            if got != out.nbytes:
                raise StoreError(f"part {part.name}: {spec.key}.npy ended early (read {got} of {out.nbytes} bytes).")
        return out

    def iter_parts(self) -> Iterator[PartRecord]:
        return iter(p for p in self.manifest.parts if p.rows)

    def batches(
        self,
        layers: Sequence[str] | str | None = None,
        split: str | Sequence[str] | None = None,
        batch_size: int = 1024,
        *,
        views: str | int | Sequence[int] = "all",
        shuffle: bool = False,
        seed: int = 0,
        shuffle_buffer: int = 8192,
        columns: Sequence[str] = ("id", "label", "split", "view"),
        read_bytes: int = DEFAULT_READ_BYTES,
    ) -> Iterator[Batch]:
        """Yield batches of rows for the chosen layers, splits and views, part by part.

        Parts are read in blocks of contiguous rows of at most ``read_bytes`` (all chosen layers
        together), so memory holds one block plus the shuffle buffer, whatever the size of a part
        or of the store. With ``shuffle`` the order of parts and of blocks within a part is
        permuted, rows are permuted within a block, and batches are drawn from a buffer of
        ``shuffle_buffer`` rows that mixes consecutive blocks.
        """
        specs = [self.layer(n) for n in ([layers] if isinstance(layers, str) else (layers or self.layer_names))]
        splits = None if split is None else ([split] if isinstance(split, str) else list(split))
        if splits is not None:
            unknown = [s for s in splits if s not in self.splits and s != ""]
            if unknown:
                raise UsageError(f"The store has no split {unknown[0]!r}; it has: {', '.join(self.splits) or 'none'}.")
        batch_size = check_int(batch_size, "batch_size", minimum=1, where="FeatureStore.batches")
        rng = np.random.default_rng(seed)
        parts = list(self.iter_parts())
        if shuffle:
            parts = [parts[i] for i in rng.permutation(len(parts))]
        cols = list(dict.fromkeys(list(columns) + ["label", "split", "view", "id"]))
        row_bytes = max(1, sum(s.dims for s in specs) * np.dtype(self.dtype).itemsize)
        block_rows = max(1, int(read_bytes) // row_bytes)

        def chunks() -> Iterator[tuple[dict[str, np.ndarray], pa.Table]]:
            for part in parts:
                if splits is not None and not any(part.splits.get(s) for s in splits):
                    continue
                meta = self.read_rows(part, cols)
                mask = np.ones(meta.num_rows, dtype=bool)
                if splits is not None:
                    split_values = [v or "" for v in meta.column("split").to_pylist()]
                    mask &= np.isin(np.asarray(split_values, dtype=object), splits)
                if views != "all":
                    wanted = np.asarray([views] if isinstance(views, int) else list(views), dtype=np.int64)
                    mask &= np.isin(meta.column("view").to_numpy(), wanted)
                idx = np.flatnonzero(mask)
                if not len(idx):
                    continue
                starts = np.arange(0, part.rows, block_rows)
                if shuffle:
                    starts = rng.permutation(starts)
                for start in starts.tolist():
                    lo, hi = np.searchsorted(idx, [start, start + block_rows])
                    sel = idx[lo:hi]
                    if not len(sel):
                        continue
                    first, last = int(sel[0]), int(sel[-1]) + 1
                    local = sel - first
                    if shuffle:
                        perm = rng.permutation(len(sel))
                        local, sel = local[perm], sel[perm]
                    whole = not shuffle and len(sel) == last - first
                    feats = {}
                    for s in specs:
                        block = self.read_features(part, s, first, last)
                        feats[s.name] = block if whole else block[local]
                    yield feats, meta.take(pa.array(sel))

        source = chunks()
        if shuffle:
            source = _shuffle_buffer(source, shuffle_buffer, batch_size, rng)
        else:
            source = _rebatch(source, batch_size)
        for feats, meta in source:
            yield Batch(
                features=feats,
                labels=np.asarray(meta.column("label").to_pylist(), dtype=object),
                meta=meta,
                ids=meta.column("id").to_pylist(),
            )

    def load(
        self,
        layers: Sequence[str] | str | None = None,
        split: str | None = None,
        views: str | int = 0,
    ) -> tuple[np.ndarray, np.ndarray, pa.Table]:
        """Everything selected in memory: (X concatenated float32, labels, meta). For small stores."""
        xs, ys, metas = [], [], []
        names = [layers] if isinstance(layers, str) else layers
        for b in self.batches(names, split=split, views=views, batch_size=8192):
            xs.append(b.concat(names))
            ys.append(b.labels)
            metas.append(b.meta)
        if not xs:
            raise UsageError(f"The store {self.path!r} has no rows for split={split!r}.")
        return np.concatenate(xs), np.concatenate(ys), pa.concat_tables(metas)


def _read_table(path: str, what: str, columns: Sequence[str] | None = None, rows: int | None = None) -> pa.Table:
    """:func:`read_parquet` for a store's own files: any failure is a :class:`StoreError` naming ``what``.

    With ``rows``, the footer's row count must equal it and the footer's uncompressed size must
    be plausible for that many rows before a column is decoded.
    """
    try:
        if rows is not None:
            meta = pq.read_metadata(path)
            if meta.num_rows != rows:
                raise StoreError(f"{what} has {meta.num_rows} rows, the manifest says {rows}.")
            declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
            if declared > MAX_PARQUET_ROW_BYTES * max(rows, 1) + (1 << 20):
                raise StoreError(f"{what} declares {declared:,} bytes for {rows} rows; refusing to decode it.")
        table = read_parquet(path, columns)
    except StoreError:
        raise
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise StoreError(f"{what} cannot be read as Parquet ({exc}).") from None
    if rows is not None and table.num_rows != rows:
        raise StoreError(f"{what} has {table.num_rows} rows, the manifest says {rows}.")
    return table


def read_parquet(path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A small Parquet file read with the system allocator.

    Arrow's default pool (mimalloc / jemalloc) keeps freed pages for reuse per thread; over the
    many small files of a large store that retained memory grows with the store, which breaks
    the promise that a reader's memory does not. The system pool hands memory back.
    """
    dataset = pads.dataset(path, format="parquet")
    return dataset.to_table(
        columns=list(columns) if columns else None, use_threads=False, memory_pool=pa.system_memory_pool()
    )


def _concat_chunks(chunks: list[tuple[dict[str, np.ndarray], pa.Table]]) -> tuple[dict[str, np.ndarray], pa.Table]:
    feats = {k: np.concatenate([c[0][k] for c in chunks]) for k in chunks[0][0]}
    return feats, pa.concat_tables([c[1] for c in chunks])


def _rebatch(source: Iterable[tuple[dict[str, np.ndarray], pa.Table]], batch_size: int) -> Batches:
    pending: list[tuple[dict[str, np.ndarray], pa.Table]] = []
    count = 0
    for feats, meta in source:
        pending.append((feats, meta))
        count += meta.num_rows
        while count >= batch_size:
            feats_all, meta_all = _concat_chunks(pending)
            yield {k: v[:batch_size] for k, v in feats_all.items()}, meta_all.slice(0, batch_size)
            rest = meta_all.num_rows - batch_size
            pending = [({k: v[batch_size:] for k, v in feats_all.items()}, meta_all.slice(batch_size))] if rest else []
            count = rest
    if count:
        yield _concat_chunks(pending)


def _shuffle_buffer(
    source: Iterable[tuple[dict[str, np.ndarray], pa.Table]], buffer_rows: int, batch_size: int, rng: np.random.Generator
) -> Batches:
    """Mix rows of consecutive chunks in a bounded buffer and emit shuffled batches."""
    buf: list[tuple[dict[str, np.ndarray], pa.Table]] = []
    count = 0
    for feats, meta in source:
        buf.append((feats, meta))
        count += meta.num_rows
        if count >= max(buffer_rows, batch_size):
            feats_all, meta_all = _concat_chunks(buf)
            perm = rng.permutation(meta_all.num_rows)
            n_out = (meta_all.num_rows // batch_size) * batch_size
            for s in range(0, n_out, batch_size):
                sel = perm[s : s + batch_size]
                yield {k: v[sel] for k, v in feats_all.items()}, meta_all.take(pa.array(sel))
            keep = perm[n_out:]
            buf = [({k: v[keep] for k, v in feats_all.items()}, meta_all.take(pa.array(keep)))] if len(keep) else []
            count = len(keep)
    if count:
        feats_all, meta_all = _concat_chunks(buf)
        perm = rng.permutation(meta_all.num_rows)
        for s in range(0, len(perm), batch_size):
            sel = perm[s : s + batch_size]
            yield {k: v[sel] for k, v in feats_all.items()}, meta_all.take(pa.array(sel))


def source_paths(meta: pa.Table) -> list[str | None]:
    """Each row's source path, exact: ``path_bytes`` (lossless) when the table has it, else ``path``."""
    paths = meta.column("path").to_pylist()
    raw = meta.column("path_bytes").to_pylist() if "path_bytes" in meta.column_names else [None] * len(paths)
    return [os.fsdecode(r) if r else p for p, r in zip(paths, raw)]


def open_store(path: str | os.PathLike[str], verify: bool = True) -> FeatureStore:
    """Open a feature store for reading (checksums are verified as parts are first read).

    Example:
        >>> store = open_store("feats/")   # doctest: +SKIP
        >>> store.num_rows("train")        # doctest: +SKIP
        2000
    """
    return FeatureStore(path, verify=verify)

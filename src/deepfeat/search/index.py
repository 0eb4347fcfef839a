"""A nearest-neighbour index of one layer of a store, on disk, read block by block (never loaded whole).

Layout of an index directory (numpy and pyarrow read it without deepfeat)::

    INDEX/
      index.json     what it indexes: store path, fingerprint and parts digest, layer, rows, dims,
                     dtype, kind, and the store's model/preprocessing/runtime (to embed queries)
      vectors.bin    rows x dims L2-normalised vectors, C order, in the store's dtype (float16 |
                     float32): np.memmap(path, dtype, mode="r", shape=(rows, dims))
      rows.parquet   id, path, split, label of every row, aligned with vectors.bin
      faiss.index    kind "ivf" only: a faiss IVF index (8-bit scalar or product codes), memory-mapped

``kind`` is ``exact`` (numpy, blockwise), ``flat`` (faiss's exact kernels, blockwise) or ``ivf``
(faiss inverted lists; its candidates are re-ranked exactly from ``vectors.bin``). Search never
holds more than the memory budget of vectors: blocks and rows are read from ``vectors.bin`` with
plain file I/O (:class:`RowFile`), not faulted in through a memory map.

Example:
    >>> idx = build_index("feats/", "feats.index")          # doctest: +SKIP
    >>> sims, rows = open_index("feats.index").knn(Q, 10)   # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import progress
from ..errors import StoreError, UsageError
from ..params import check_choice, check_int
from ..store.reader import FeatureStore, open_store
from ..units import format_size, parse_size
from .blocks import DEFAULT_MEMORY_BUDGET, ROW_COLUMNS, store_blocks, store_digest

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
VECTORS_FILE = "vectors.bin"
ROWS_FILE = "rows.parquet"
FAISS_FILE = "faiss.index"
FORMAT = "deepfeat-index"
FORMAT_VERSION = 1
#: index kinds; ``auto`` picks ``exact`` without faiss, else ``flat`` up to :data:`IVF_MIN_ROWS` rows, else ``ivf``
KINDS = ("auto", "exact", "flat", "ivf")
#: stores with more rows than this get an IVF index when faiss is installed (kind="auto")
IVF_MIN_ROWS = 200_000
#: candidates per requested neighbour that an IVF search re-ranks exactly (8-bit codes; product codes)
IVF_RERANK = 2
IVF_RERANK_PQ = 10
#: rows gathered from the memory map of ``vectors.bin`` before its pages are dropped (RSS: at most
#: this many rows' pages, plus the read-around the kernel still does)
TAKE_CHUNK = 256
#: IVF lists visited per query by default (measured at 1 M x 1,280: docs/SEARCH.md)
IVF_NPROBE = 8
#: Lloyd iterations of faiss's k-means for the IVF lists (faiss's default is 25: the build's longest step)
IVF_KMEANS_ITERATIONS = 10


def faiss_available() -> bool:
    """Whether faiss (the ``deepfeat[search]`` extra) can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_kind(kind: str, rows: int) -> str:
    """The index kind ``kind`` means for a store of ``rows`` rows here (``auto``: see :data:`KINDS`)."""
    check_choice(kind, "kind", KINDS, where="build_index")
    if kind in ("flat", "ivf") and not faiss_available():
        raise UsageError(
            f"The index kind {kind!r} needs faiss: pip install 'deepfeat[search]' (or faiss-cpu), or use kind 'exact'."
        )
    if kind != "auto":
        return kind
    if not faiss_available():
        return "exact"
    return "ivf" if rows > IVF_MIN_ROWS else "flat"


def build_index(
    store: str | os.PathLike | FeatureStore,
    out: str | os.PathLike,
    layer: str = "pre_logits",
    kind: str = "auto",
    splits: Sequence[str] | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    overwrite: bool = False,
) -> "SearchIndex":
    """Index view 0 of one layer of a store for cosine nearest-neighbour search; returns the opened index.

    Streams the store block by block (never more than ``memory_budget`` of vectors in memory) into
    ``out`` (see the module docstring), then, for kind ``ivf``, trains faiss's coarse quantiser on a
    sample that fits the budget and adds the vectors block by block.

    Args:
        store: a store directory or an open :class:`~deepfeat.store.reader.FeatureStore`.
        out: the index directory to write (refused if it exists, unless ``overwrite``).
        layer: the stored layer to index.
        kind: ``auto``, ``exact``, ``flat`` or ``ivf`` (see :data:`KINDS`).
        splits: only rows of these splits (default: every row).
        memory_budget: bytes (or ``"2GiB"``) of vectors held at a time.
        overwrite: replace an existing ``out``.

    Example:
        >>> index = build_index("feats/", "feats.index")                       # doctest: +SKIP
        >>> index.rows, index.kind                                             # doctest: +SKIP
        (70000, 'flat')
    """
    budget = parse_size(memory_budget, "memory_budget")
    check_choice(kind, "kind", KINDS, where="build_index")
    st = store if isinstance(store, FeatureStore) else open_store(store)
    spec = st.layer(layer)
    if isinstance(splits, str):
        splits = [s for s in splits.split(",") if s]
    out = os.fspath(out)
    if os.path.exists(out):
        if not overwrite:
            raise UsageError(
                f"The 'out' parameter of build_index names an existing path {out!r}; pass overwrite=True to replace it."
            )
        if not os.path.isfile(os.path.join(out, INDEX_FILE)) and os.listdir(out):
            raise UsageError(f"{out!r} exists and is not a deepfeat index; refusing to replace it.")
        shutil.rmtree(out)
    resolved = resolve_kind(kind, st.num_rows())
    t0 = time.perf_counter()
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    dtype = np.dtype("float16" if st.dtype == "float16" else "float32")
    # a block is held as read (store dtype), re-batched, and as float32: an eighth of the budget each
    block_rows = max(16, int(budget // 8 // max(1, spec.dims * 4)))
    rows = 0
    writer: pq.ParquetWriter | None = None
    try:
        with (
            open(os.path.join(tmp, VECTORS_FILE), "wb") as vf,
            progress.task("index", total=st.num_rows(), unit="row") as task,
        ):
            for _, X, meta in store_blocks(st, layer, splits, block_rows=block_rows):
                vf.write(X.astype(dtype, copy=False).tobytes())
                table = meta.cast(pa.schema([(c, pa.string()) for c in ROW_COLUMNS]))
                if writer is None:
                    writer = pq.ParquetWriter(os.path.join(tmp, ROWS_FILE), table.schema)
                writer.write_table(table)
                rows += len(X)
                task.update(len(X))
        if writer is None:
            pq.write_table(pa.schema([(c, pa.string()) for c in ROW_COLUMNS]).empty_table(), os.path.join(tmp, ROWS_FILE))
        else:
            writer.close()
            writer = None
        if not rows:
            raise UsageError(
                f"The store {st.path!r} has no rows to index" + (f" in the splits {', '.join(splits)}." if splits else ".")
            )
        doc: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "store": os.path.abspath(st.path),
            **store_digest(st),
            "indexed_rows": rows,
            "layer": layer,
            "dims": spec.dims,
            "dtype": str(dtype),
            "kind": resolved,
            "metric": "cosine",
            "splits": list(splits) if splits else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "store_metadata": {
                k: st.metadata.get(k)
                for k in ("model", "preprocess", "layers", "dtype", "runtime", "precision", "config", "fne")
            },
        }
        if resolved == "ivf":
            doc["ivf"] = _build_ivf(tmp, rows, spec.dims, dtype, budget)
        doc["seconds"] = round(time.perf_counter() - t0, 3)
        with open(os.path.join(tmp, INDEX_FILE), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, default=str)
        os.replace(tmp, out)
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("index: %d rows of %s (%d dims) as %s in %.1f s", rows, layer, spec.dims, resolved, doc["seconds"])
    return SearchIndex(out, check_store=False)


def ivf_codes(rows: int, dims: int, budget: int) -> str:
    """The IVF codes that fit ``budget``: ``SQ8`` (one byte per value) when the codes take at most
    three quarters of it (the lists are reserved at their final size before filling, so they never
    double), else ``PQ<m>``: m one-byte codes per vector, the largest divisor of dims that a quarter
    of the budget holds for every row (at most dims/4)."""
    if rows * dims <= budget * 3 // 4:
        return "SQ8"
    m_max = max(1, min(dims // 4, int(budget // 4 // rows)))
    return f"PQ{max(d for d in range(1, m_max + 1) if dims % d == 0)}"


def _build_ivf(folder: str, rows: int, dims: int, dtype: np.dtype, budget: int) -> dict[str, Any]:
    """Train and fill a faiss IVF index (8-bit scalar or product codes) over ``vectors.bin``, block by block.

    Two passes over the vectors: the first assigns every row to its list (kept: 8 bytes a row) and
    counts the lists, which are then reserved at their final size; the second encodes each block
    into its precomputed lists. Growing the lists as rows arrive (``index.add``) doubles each list's
    capacity as it fills: measured at 1 M x 1,280 SQ8 (2,048 lists), a peak RSS of 2.0 GiB for 1.2 GiB
    of codes.
    """
    import faiss

    vectors = RowFile(os.path.join(folder, VECTORS_FILE), dtype, rows, dims)  # read, not mapped: RSS stays bounded
    nlist = int(min(max(16, 4 * math.sqrt(rows)), rows // 39 or 1))
    sample_rows = min(rows, max(39 * nlist, 1), max(1000, int(budget // 4 // (dims * 4))))
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(rows, size=sample_rows, replace=False))
    quantizer = faiss.IndexFlatIP(dims)
    codes = ivf_codes(rows, dims, budget)
    if codes == "SQ8":
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dims, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
    else:
        index = faiss.IndexIVFPQ(quantizer, dims, nlist, int(codes[2:]), 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = IVF_KMEANS_ITERATIONS
    with progress.timer(f"training the IVF quantiser ({nlist} lists, {codes}) on {sample_rows:,} rows"):
        index.train(vectors.take(sample))
    block = max(1024, int(budget // 16 // (dims * 4)))
    assign = np.empty(rows, dtype=np.int64)
    with progress.task("index (ivf lists)", total=rows, unit="row") as task:
        for s in range(0, rows, block):
            X = np.ascontiguousarray(vectors[s : s + block], dtype=np.float32)
            assign[s : s + len(X)] = index.quantizer.assign(X, 1).ravel()
            task.update(len(X))
    invlists = index.invlists
    for list_no, size in enumerate(np.bincount(assign, minlength=nlist).tolist()):
        if size:  # std::vector keeps its capacity when shrunk: reserved at the final size
            invlists.resize(list_no, size)
            invlists.resize(list_no, 0)
    with progress.task("index (ivf codes)", total=rows, unit="row") as task:
        for s in range(0, rows, block):
            X = np.ascontiguousarray(vectors[s : s + block], dtype=np.float32)
            ids = np.arange(s, s + len(X), dtype=np.int64)
            index.add_core(len(X), faiss.swig_ptr(X), faiss.swig_ptr(ids), faiss.swig_ptr(assign[s : s + len(X)]))
            task.update(len(X))
    faiss.write_index(index, os.path.join(folder, FAISS_FILE))
    return {
        "nlist": nlist,
        "nprobe": min(nlist, IVF_NPROBE),
        "train_rows": sample_rows,
        "quantizer": codes,
        "rerank": IVF_RERANK if codes == "SQ8" else IVF_RERANK_PQ,
        "kmeans_iterations": IVF_KMEANS_ITERATIONS,
    }


class RowFile:
    """Rows of a raw C-order matrix file, read slice by slice (``rows[a:b]``) with plain file I/O."""

    def __init__(self, path: str, dtype: np.dtype, rows: int, dims: int) -> None:
        self.path, self.dtype, self.shape = path, np.dtype(dtype), (rows, dims)

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """``rows`` (any order) as float32, gathered from a memory map in chunks of :data:`TAKE_CHUNK` rows.

        The map is advised ``MADV_RANDOM`` and its pages are dropped (``MADV_DONTNEED``) after every
        chunk, so the process holds one chunk's pages at a time (measured: about 50 MB above the
        result for 20,000 random rows of a 1 M x 1,280 index), where gathering 1,000 random rows
        through a plain ``np.memmap`` left 1.3 GB resident (the kernel's read-around). From the page
        cache it costs 18-28 µs a row (one Python ``preadv`` per row: 25-45 µs, shared machine). Rows
        not in the page cache are all requested from the disk at once first (:func:`_prefetch`), so
        their reads overlap: 20,000 cold random rows of that index in 0.36 s instead of 9.6 s one
        page fault after another (virtio disk, page cache dropped before each).
        """
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows outside 0..{self.shape[0] - 1} of {self.path}")
        mm = self._map()
        view = None
        try:
            _prefetch(mm, rows, self.shape[1] * self.dtype.itemsize)
            view = np.frombuffer(mm, dtype=self.dtype, count=self.shape[0] * self.shape[1]).reshape(self.shape)
            for s in range(0, len(rows), TAKE_CHUNK):
                out[s : s + TAKE_CHUNK] = view[rows[s : s + TAKE_CHUNK]]
                if hasattr(mm, "madvise"):
                    mm.madvise(mmap.MADV_DONTNEED)
        finally:
            del view  # the map cannot close while an array looks at it
            mm.close()
        return out

    def _map(self) -> mmap.mmap:
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < self.shape[0] * self.shape[1] * self.dtype.itemsize:
                raise StoreError(f"{self.path} is shorter than {self.shape[0]} x {self.shape[1]} {self.dtype} values.")
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            mm.madvise(mmap.MADV_RANDOM)
        return mm

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, step = key.indices(self.shape[0])
        if step != 1:
            raise IndexError("RowFile reads contiguous rows only")
        n = max(0, stop - start)
        row_bytes = self.shape[1] * self.dtype.itemsize
        with open(self.path, "rb") as f:
            f.seek(start * row_bytes)
            out = np.fromfile(f, dtype=self.dtype, count=n * self.shape[1])
        if out.size != n * self.shape[1]:
            raise StoreError(f"{self.path} ended early (rows {start}:{stop}).")
        return out.reshape(n, self.shape[1])


def _read_ahead(path: str) -> None:
    """Ask the kernel to read the whole file into the page cache now, sequentially (``POSIX_FADV_WILLNEED``):
    a batch of queries that visits most IVF lists then finds them cached instead of faulting them in one
    list at a time (1,000 queries at 1 M rows from a dropped page cache: 696 queries/s instead of 476)."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


def _prefetch(mm: mmap.mmap, rows: np.ndarray, row_bytes: int) -> None:
    """Ask the kernel to read the pages of ``rows`` of the map now (``MADV_WILLNEED``), adjacent
    rows as one range: the reads are queued together instead of one page fault at a time. The pages
    go to the page cache, not to this process's resident memory."""
    if not hasattr(mmap, "MADV_WILLNEED") or not hasattr(mm, "madvise"):
        return
    page = mmap.PAGESIZE
    starts = np.unique(rows) * row_bytes
    lo, hi = starts // page * page, starts + row_bytes
    breaks = np.flatnonzero(lo[1:] > hi[:-1]) + 1  # a gap between one row's last page and the next row's first
    for a, b in zip(lo[np.r_[0, breaks]].tolist(), hi[np.r_[breaks - 1, len(hi) - 1]].tolist()):
        mm.madvise(mmap.MADV_WILLNEED, a, min(b, len(mm)) - a)


@dataclass
class Neighbor:
    """One stored row near a query."""

    path: str | None
    id: str
    split: str | None
    label: str | None
    similarity: float


class SearchIndex:
    """An index directory opened for search (vectors memory-mapped, rows in memory).

    Refuses (``StoreError``) an index whose store, at its recorded path, has another fingerprint or
    other committed parts than when it was built: rebuild it with ``deepfeat index``.
    """

    def __init__(self, path: str | os.PathLike, *, check_store: bool = True) -> None:
        self.path = os.fspath(path)
        doc_path = os.path.join(self.path, INDEX_FILE)
        try:
            with open(doc_path, encoding="utf-8") as f:
                self.doc: dict[str, Any] = json.load(f)
        except FileNotFoundError:
            raise UsageError(
                f"{self.path!r} is not a deepfeat index (no {INDEX_FILE}); build one with "
                "'deepfeat index STORE --out INDEX'."
            ) from None
        except (OSError, ValueError) as exc:
            raise StoreError(f"{doc_path} cannot be read ({exc}).") from None
        if self.doc.get("format") != FORMAT or self.doc.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{self.path!r} is not a deepfeat index of format version {FORMAT_VERSION}.")
        self.rows = int(self.doc["indexed_rows"])
        self.dims = int(self.doc["dims"])
        self.kind = str(self.doc["kind"])
        self.layer = str(self.doc["layer"])
        vec_path = os.path.join(self.path, VECTORS_FILE)
        dtype = np.dtype(self.doc["dtype"])
        if not os.path.isfile(vec_path) or os.path.getsize(vec_path) != self.rows * self.dims * dtype.itemsize:
            raise StoreError(f"{vec_path} is missing or does not hold {self.rows} x {self.dims} {dtype} values.")
        self.vectors = np.memmap(vec_path, dtype=dtype, mode="r", shape=(self.rows, self.dims))
        #: the same rows read with plain file I/O, for the scans: the bytes held are the block's only
        #: (a memory map keeps every page it touched resident until the kernel needs them back)
        self.blocks = RowFile(vec_path, dtype, self.rows, self.dims)
        self.meta = pq.read_table(os.path.join(self.path, ROWS_FILE))
        if self.meta.num_rows != self.rows:
            raise StoreError(f"{self.path}: {ROWS_FILE} has {self.meta.num_rows} rows, the index {self.rows}.")
        self._cols: dict[str, list[Any]] | None = None  # Python lists of the row metadata, made on demand
        self._faiss: Any = None
        if check_store:
            self.check_fresh()

    @property
    def store_path(self) -> str:
        return str(self.doc["store"])

    def check_fresh(self) -> None:
        """Raise ``StoreError`` when the indexed store (if still at its path) changed since the build."""
        store_dir = self.store_path
        if not os.path.isdir(store_dir):
            log.warning("the store %s of the index %s is gone; searching the index as it is", store_dir, self.path)
            return
        now = store_digest(open_store(store_dir, verify=False))
        for key in ("fingerprint", "parts_digest"):
            if now.get(key) != self.doc.get(key):
                raise StoreError(
                    f"The index {self.path!r} is stale: the store {store_dir!r} has changed since it was built "
                    f"(its {key.replace('_', ' ')} differs: {str(self.doc.get(key))[:16]} then, "
                    f"{str(now.get(key))[:16]} now). Rebuild it: deepfeat index {store_dir} --out {self.path} "
                    "--overwrite"
                )

    # -- rows ------------------------------------------------------------------------------
    def columns(self) -> dict[str, list[Any]]:
        """{column: values} of the row metadata (id, path, split, label), aligned with the vectors."""
        if self._cols is None:
            self._cols = {c: self.meta.column(c).to_pylist() for c in ROW_COLUMNS}
        return dict(self._cols)

    def neighbor(self, row: int, similarity: float) -> Neighbor:
        """The row's metadata (read from the Arrow table: no Python object per indexed row) and a similarity."""
        c = {name: self.meta.column(name)[row].as_py() for name in ROW_COLUMNS}
        return Neighbor(
            path=c["path"],
            id=c["id"],
            split=c["split"],
            label=c["label"],
            similarity=round(min(1.0, max(-1.0, float(similarity))), 6),
        )

    def row_of_id(self, row_id: str) -> int | None:
        """The row of a stored id (a scan of the id column), or None."""
        import pyarrow.compute as pc

        pos = pc.index(self.meta.column("id"), pa.scalar(str(row_id), pa.string())).as_py()
        return None if pos is None or pos < 0 else int(pos)

    def vectors_of(self, rows: Sequence[int]) -> np.ndarray:
        """The normalised vectors of ``rows`` as float32 (read from the file, see :meth:`RowFile.take`)."""
        return self.blocks.take(rows)

    # -- search ----------------------------------------------------------------------------
    def knn(
        self,
        Q: np.ndarray,
        k: int,
        *,
        memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
        kind: str | None = None,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar rows of each normalised query: (similarities, rows), each m x k,
        best first (rows -1 and similarity -inf where the index has fewer rows than ``k``).

        ``kind`` overrides the index's own (``exact`` and ``flat`` always work on any index).
        """
        Q = np.ascontiguousarray(Q, dtype=np.float32)
        k = check_int(k, "top_k", minimum=1, where="search")
        budget = parse_size(memory_budget, "memory_budget")
        kind = kind or self.kind
        if kind == "ivf":
            return self._knn_ivf(Q, k, budget, nprobe)
        if kind == "flat" and not faiss_available():
            kind = "exact"
        return exact_knn(self.blocks, Q, k, budget, use_faiss=(kind == "flat"))

    def _knn_ivf(self, Q: np.ndarray, k: int, budget: int, nprobe: int | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if self._faiss is None:
            path = os.path.join(self.path, FAISS_FILE)
            try:
                self._faiss = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            except RuntimeError:  # a faiss build without memory-mapped IVF lists
                self._faiss = faiss.read_index(path)
        self._faiss.nprobe = int(nprobe or self.doc.get("ivf", {}).get("nprobe", 8))
        m = len(Q)
        if m * self._faiss.nprobe >= self._faiss.nlist // 2:
            _read_ahead(os.path.join(self.path, FAISS_FILE))  # most lists will be visited: one sequential read
        cand = min(self.rows, k * int(self.doc.get("ivf", {}).get("rerank", IVF_RERANK)))
        sims = np.full((m, k), -np.inf, dtype=np.float32)
        rows = np.full((m, k), -1, dtype=np.int64)
        # queries in groups whose candidates' vectors (float32) fit a quarter of the budget
        step = max(1, min(m, int(budget // 4 // max(1, cand * self.dims * 8))))
        for s in range(0, m, step):
            Qg = Q[s : s + step]
            _, C = self._faiss.search(Qg, cand)
            C = C.astype(np.int64)
            valid = C >= 0
            uniq, inv = np.unique(np.where(valid, C, 0), return_inverse=True)
            V = self.vectors_of(uniq)  # each candidate read once per group (float32)
            exact = np.einsum("qd,qcd->qc", Qg, V[inv.reshape(C.shape)])  # each query against its own candidates
            exact[~valid] = -np.inf
            C = np.where(valid, C, -1)
            if exact.shape[1] < k:  # fewer rows than k
                pad = ((0, 0), (0, k - exact.shape[1]))
                exact, C = np.pad(exact, pad, constant_values=-np.inf), np.pad(C, pad, constant_values=-1)
            order = _top_order(exact, C, k)
            sims[s : s + step] = np.take_along_axis(exact, order, axis=1)
            rows[s : s + step] = np.take_along_axis(C, order, axis=1)
        rows[~np.isfinite(sims)] = -1
        return sims, rows


def exact_knn(
    vectors: np.ndarray, Q: np.ndarray, k: int, budget: int, *, use_faiss: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products of ``Q`` against ``vectors`` (any array or memory map), block by block.

    Each block of stored rows is copied to float32 (at most about half of ``budget`` with the
    similarities), scored with numpy (or faiss's ``knn`` kernel) and merged into the running top-k.
    """
    m, n = len(Q), len(vectors)
    k_eff = min(k, n)
    best_s = np.full((m, k), -np.inf, dtype=np.float32)
    best_i = np.full((m, k), -1, dtype=np.int64)
    if not m or not n:
        return best_s, best_i
    # a quarter of the budget for a block of stored rows (float32 + its conversion from the store's dtype),
    # a quarter for a group of queries' similarities to it (and their sort keys): each block is read
    # once per group, and a group is as many queries as fit
    rows_per_block = min(n, max(16, budget // 4 // (8 * vectors.shape[1])))
    q_step = max(1, min(m, budget // 4 // (rows_per_block * 16 + vectors.shape[1] * 4 + k * 24)))
    for qs in range(0, m, q_step):
        Qg = Q[qs : qs + q_step]
        gs, gi = best_s[qs : qs + q_step], best_i[qs : qs + q_step]
        for bs in range(0, n, rows_per_block):
            block = np.asarray(vectors[bs : bs + rows_per_block], dtype=np.float32)
            kk = min(k_eff, len(block))
            if use_faiss:
                import faiss

                s, i = faiss.knn(Qg, np.ascontiguousarray(block), kk, metric=faiss.METRIC_INNER_PRODUCT)
                i = i.astype(np.int64) + bs
            else:
                S = Qg @ block.T
                if kk < S.shape[1]:
                    i = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
                else:
                    i = np.broadcast_to(np.arange(S.shape[1]), S.shape).copy()
                s = np.take_along_axis(S, i, axis=1)
                i = i + bs
                del S
            cs = np.concatenate([gs, s], axis=1)
            ci = np.concatenate([gi, i], axis=1)
            # best first; ties by the lower row (deterministic across the numpy and faiss paths)
            order = _top_order(cs, ci, k)
            gs[:] = np.take_along_axis(cs, order, axis=1)
            gi[:] = np.take_along_axis(ci, order, axis=1)
    best_i[~np.isfinite(best_s)] = -1
    return best_s, best_i


def _top_order(cs: np.ndarray, ci: np.ndarray, k: int) -> np.ndarray:
    """Column order of the ``k`` best entries per row: highest similarity first, then the lowest row."""
    ci_key = np.where(ci < 0, np.iinfo(np.int64).max, ci)
    return np.lexsort((ci_key, -cs), axis=1)[:, :k]


def open_index(path: str | os.PathLike, check_store: bool = True) -> SearchIndex:
    """Open an index directory for search (refused when its store changed since the build).

    Example:
        >>> index = open_index("feats.index")    # doctest: +SKIP
        >>> index.rows, index.layer              # doctest: +SKIP
        (70000, 'pre_logits')
    """
    return SearchIndex(path, check_store=check_store)


def describe(index: SearchIndex) -> str:
    """One line about an index."""
    size = index.rows * index.dims * index.vectors.dtype.itemsize
    return (
        f"{index.rows:,} rows x {index.dims:,} dims of {index.layer} ({index.kind}, {format_size(size)} of "
        f"vectors) from {index.store_path}"
    )

"""The full-network embedding (Garcia-Gasulla et al., arXiv 1705.07706) as a store transform.

``store -> streaming per-feature mean/std over the training split -> standardise every row ->
ternarise to int8 {-1, 0, 1} -> a new store`` with the same parts, ids, labels, splits and views.

* Statistics: Chan's parallel merge of per-batch (count, mean, M2) in float64 over the rows of
  ``stats_split`` (view 0 only: augmented views do not bias the statistics), population std
  (ddof=0, as scikit-learn's StandardScaler). A feature whose minimum equals its maximum over
  those rows has zero variance: its std is stored as 0 and its standardised value is 0.
* Ternarisation: ``z > hi -> 1``, ``z < lo -> -1``, else 0 (paper: lo=-0.25, hi=0.15).
* The new store has one layer ``fne`` (int8, the source layers concatenated in order); its
  metadata records the source store's fingerprint and layers, the thresholds and the name and
  sha256 of ``fne-stats.safetensors`` (mean, std, min, max; float64) stored beside the metadata.
* Memory: one batch of at most ``batch_size`` rows and at most :data:`BATCH_BYTES` (32 MiB) as
  float64 at a time, plus the int8 output of one part; it does not grow with the store.
* Writing reuses the store's lock, part writer and manifest commit: a killed run resumes,
  committed parts are kept, a different configuration is refused unless ``overwrite``.

Example:
    >>> import deepfeat
    >>> # fm_all/: docs/ANALYSIS.md's quick start, efficientnet_lite0 --layers all --pool avg
    >>> s = deepfeat.full_network_embedding("fm_all/", "fm_fne/")       # doctest: +SKIP
    >>> s.dims, s.rows                                                  # doctest: +SKIP
    (22288, 4000)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import progress
from ..agreement import reduced_precision_note
from ..errors import StoreError, UsageError
from ..moments import merge_moments
from ..params import check_int, param_error
from ..store import layout, trust
from ..store.fsutil import atomic_write_bytes, check_writable
from ..store.reader import FeatureStore, LayerSpec, open_store
from ..store.session import StoreWriter
from ..store.writer import write_part

log = logging.getLogger(__name__)

FNE_LAYER = "fne"
STATS_FILE = "fne-stats.safetensors"
DEFAULT_THRESHOLDS = (-0.25, 0.15)


# ----------------------------------------------------------------------------- statistics
class RunningStats:
    """Per-feature count, mean, M2 (Chan et al. merge, float64), min and max, fed batch by batch.

    Example:
        >>> rs = RunningStats(3)
        >>> rs.update(np.ones((4, 3)))
        >>> rs.std.tolist()
        [0.0, 0.0, 0.0]
    """

    def __init__(self, dims: int) -> None:
        self.n = 0
        self.mean_ = np.zeros(dims, dtype=np.float64)
        self.m2 = np.zeros(dims, dtype=np.float64)
        self.min_ = np.full(dims, np.inf)
        self.max_ = np.full(dims, -np.inf)

    def update(self, X: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        if X.shape[0] == 0:
            return
        self.n, self.mean_, self.m2 = merge_moments(self.n, self.mean_, self.m2, X)
        np.minimum(self.min_, X.min(axis=0), out=self.min_)
        np.maximum(self.max_, X.max(axis=0), out=self.max_)

    @property
    def constant(self) -> np.ndarray:
        """Features whose every value was equal (zero variance, decided exactly by min == max)."""
        return self.max_ <= self.min_

    @property
    def std(self) -> np.ndarray:
        """Population std (ddof=0); exactly 0 for constant features."""
        if self.n == 0:
            raise UsageError("No rows to compute statistics from.")
        std = np.sqrt(np.maximum(self.m2 / self.n, 0.0))
        std[self.constant] = 0.0
        return std


def standardize(X: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(X - mean) / std`` in float64; features with ``std == 0`` become 0."""
    X = np.asarray(X, dtype=np.float64)
    ok = std > 0
    z = np.zeros_like(X)
    z[:, ok] = (X[:, ok] - mean[ok]) / std[ok]
    return z


def ternarize(z: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """int8 {-1, 0, 1}: ``z < lo -> -1``, ``z > hi -> 1``, else 0."""
    lo, hi = thresholds
    out = np.zeros(z.shape, dtype=np.int8)
    out[z > hi] = 1
    out[z < lo] = -1
    return out


def fne_transform(
    features: np.ndarray, mean: np.ndarray, std: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> np.ndarray:
    """Raw concatenated features (rows x dims) -> the int8 full-network embedding."""
    return ternarize(standardize(features, mean, std), thresholds)


def parse_thresholds(thresholds: str | Sequence[float], where: str | None = None) -> tuple[float, float]:
    """``"-0.25,0.15"`` or ``(-0.25, 0.15)`` -> (lo, hi), checked: lo <= hi (``where``: the calling function)."""
    try:
        vals = [float(v) for v in thresholds.split(",")] if isinstance(thresholds, str) else [float(v) for v in thresholds]
    except (TypeError, ValueError):
        vals = []
    if len(vals) != 2 or not all(np.isfinite(vals)) or vals[0] > vals[1]:
        raise param_error("thresholds", "two numbers lo,hi with lo <= hi (e.g. -0.25,0.15)", thresholds, where)
    return vals[0], vals[1]


def resolve_store_layers(store: FeatureStore, layers: str | Sequence[str] | None, what: str) -> list[LayerSpec]:
    """The chosen layers of a store (default or ``"all"``: all), with a helpful error for unknown names."""
    return store.select_layers(layers, what)


#: Upper bound on the bytes of one float64 batch that the analysis and FNE passes hold at a time.
BATCH_BYTES = 32 << 20


def batch_rows(dims: int, batch_size: int, max_bytes: int = BATCH_BYTES) -> int:
    """Rows per batch so that one float64 batch of ``dims`` columns takes at most ``max_bytes``.

    At least 1 row and at most ``batch_size`` rows.

    Example:
        >>> batch_rows(1280, 2048), batch_rows(22288, 2048), batch_rows(10**8, 2048)
        (2048, 188, 1)
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    return max(1, min(batch_size, int(max_bytes) // (8 * max(1, int(dims)))))


def split_batches(
    store: FeatureStore, specs: Sequence[LayerSpec], split: str | None, batch_size: int = 4096
) -> Iterable[tuple[np.ndarray, np.ndarray]]:
    """(rows x sum(dims) float64, labels) of view 0 of ``split`` (None: every row), in store order.

    A batch holds at most ``batch_size`` rows and at most :data:`BATCH_BYTES` bytes as float64
    (see :func:`batch_rows`); the store is read in blocks of at most that many bytes too.
    """
    names = [s.name for s in specs]
    rows = batch_rows(sum(s.dims for s in specs), batch_size, BATCH_BYTES)
    for b in store.batches(names, split=split, batch_size=rows, views=0, read_bytes=BATCH_BYTES):
        yield b.concat(names, dtype=np.float64), b.labels


def feature_stats(
    store: FeatureStore, specs: Sequence[LayerSpec], split: str | None, batch_size: int = 4096
) -> RunningStats:
    """Streaming per-feature statistics of the chosen layers over view 0 of ``split``."""
    rs = RunningStats(sum(s.dims for s in specs))
    for X, _ in progress.track(
        split_batches(store, specs, split, batch_size), "fne: statistics", unit="rows", size=lambda b: len(b[0])
    ):
        rs.update(X)
    if rs.n == 0:
        raise UsageError(f"The store {store.path!r} has no rows in split {split!r} to compute statistics from.")
    return rs


# ----------------------------------------------------------------------------- the transform
@dataclass
class FNESummary:
    """What :func:`full_network_embedding` wrote."""

    out: str
    source: str
    layers: list[str]
    dims: int
    thresholds: tuple[float, float]
    stats_rows: int
    zero_variance: int
    rows: int = 0
    parts_written: int = 0
    parts_skipped: int = 0
    resumed: bool = False
    seconds: float = 0.0
    value_counts: dict[int, int] = field(default_factory=dict)


def _manifest_digest(store: FeatureStore) -> str:
    h = hashlib.sha256()
    for p in store.parts:
        h.update(p.name.encode())
        for fname in sorted(p.files):
            h.update(f"{fname}:{p.files[fname]['sha256']}".encode())
    return h.hexdigest()


def _save_stats(path: str, mean: np.ndarray, std: np.ndarray, minimum: np.ndarray, maximum: np.ndarray) -> str:
    from safetensors.numpy import save

    data = save(
        {
            "mean": np.ascontiguousarray(mean, np.float64),
            "std": np.ascontiguousarray(std, np.float64),
            "min": np.ascontiguousarray(minimum, np.float64),
            "max": np.ascontiguousarray(maximum, np.float64),
        }
    )
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


def load_fne_stats(store: FeatureStore | str | os.PathLike) -> dict[str, Any]:
    """The FNE parameters of an FNE store: {'mean', 'std' (float64 arrays), 'thresholds', 'source_layers'}."""
    from safetensors.numpy import load

    store = store if isinstance(store, FeatureStore) else open_store(store)
    info = store.metadata.get("fne")
    if not info:
        raise UsageError(f"The store {store.path!r} is not a full-network embedding (no 'fne' metadata).")
    path = store.member(info["stats_file"])  # a plain name checked with the metadata (store/trust.py)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        raise StoreError(f"The FNE statistics {path} are missing.") from None
    if hashlib.sha256(data).hexdigest() != info["stats_sha256"]:
        raise StoreError(f"The FNE statistics {path} fail their sha256 checksum.")
    t = load(data)
    return {
        "mean": t["mean"],
        "std": t["std"],
        "thresholds": tuple(info["thresholds"]),
        "source_dtype": info.get("source_dtype"),
        "source_layers": [LayerSpec.from_dict(d) for d in info["source_layers"]],
    }


def full_network_embedding(
    store: str | os.PathLike | FeatureStore,
    out: str | os.PathLike,
    thresholds: str | Sequence[float] = DEFAULT_THRESHOLDS,
    layers: str | Sequence[str] | None = None,
    stats_split: str | None = "train",
    overwrite: bool = False,
    batch_size: int = 4096,
) -> FNESummary:
    """Write the full-network embedding of ``store`` (its ``layers``, default all) as a new int8 store.

    Args:
        store: source store (e.g. ``deepfeat extract ... --layers all --pool avg``).
        out: new store directory; rerunning the same call resumes it.
        thresholds: ``(lo, hi)`` on the standardised values (paper: -0.25, 0.15).
        layers: source layers, concatenated in this order (default: all of them).
        stats_split: split whose view-0 rows give the mean/std (None: every row).
        overwrite: delete an ``out`` written with another configuration.
        batch_size: most rows per float64 batch of the statistics and transform passes; a batch is
            also capped at :data:`BATCH_BYTES` (32 MiB), so wide stores use fewer rows.

    Returns:
        An :class:`FNESummary`.
    """
    t0 = time.perf_counter()
    lo_hi = parse_thresholds(thresholds, "full_network_embedding")
    check_int(batch_size, "batch_size", minimum=1, where="full_network_embedding")
    src = store if isinstance(store, FeatureStore) else open_store(store)
    made_by = src.metadata.get("fne")
    if made_by:  # its values are already -1/0/1: standardising and ternarising them again is noise
        origin = made_by.get("source_store") if isinstance(made_by, dict) else None
        raise UsageError(
            f"The store {src.path!r} is already a full-network embedding (written by fne from "
            f"{origin or 'another store'!r}); run fne on the store of extracted features instead."
        )
    specs = resolve_store_layers(src, layers, "full_network_embedding")
    note = reduced_precision_note(src.metadata, src.path)
    if note:
        log.warning(note)
    if stats_split is not None and stats_split not in src.splits:
        raise param_error(
            "stats_split",
            f"a split of the store ({', '.join(src.splits) or 'none'}) or None",
            stats_split,
            "full_network_embedding",
        )
    out = os.fspath(out)
    if os.path.abspath(out) == os.path.abspath(src.path):
        raise UsageError("The 'out' parameter of full_network_embedding must differ from the source store.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"The output {out!r} exists and is not a directory.")
    dims = sum(s.dims for s in specs)
    check_writable(out, "fne's output store", directory=True)
    block = batch_rows(dims, batch_size, BATCH_BYTES)  # rows transformed at a time: one float64 block <= BATCH_BYTES
    src_meta = src.metadata
    config = {
        "transform": "fne",
        "source_fingerprint": src_meta.get("fingerprint"),
        "source_parts": _manifest_digest(src),
        "source_layers": [s.to_dict() for s in specs],
        "thresholds": list(lo_hi),
        "stats_split": stats_split,
        "stats": "chan-float64-ddof0-view0",
        "dtype": "int8",
        "decode_policy": src_meta.get("config", {}).get("decode_policy"),
    }
    fne_spec = LayerSpec(FNE_LAYER, FNE_LAYER, (dims,), "fne", dims)
    with StoreWriter(out) as writer:
        meta_path = os.path.join(out, layout.METADATA_FILE)
        old = None
        if os.path.exists(meta_path) and not overwrite:
            try:
                old = trust.read_store_json(out, layout.METADATA_FILE)  # the store's reader of its own documents
            except StoreError:
                old = None
            old = old if isinstance(old, dict) else None
        stats_path = os.path.join(out, STATS_FILE)
        rs = None
        if (
            old is not None
            and old.get("config") == config
            and old.get("fne", {}).get("stats_sha256")
            and os.path.isfile(stats_path)
        ):
            log.info("fne: resuming %s with its saved statistics", out)
        else:
            rs = feature_stats(src, specs, stats_split, batch_size)
        metadata = {
            k: v
            for k, v in src_meta.items()
            if k not in ("layers", "dtype", "config", "fingerprint", "created", "format", "format_version")
        }
        metadata.update({"layers": [fne_spec.to_dict()], "dtype": "int8"})
        if rs is not None:
            zero_var = int(rs.constant.sum())
            fne_info = {
                "source_store": os.path.abspath(src.path),
                "source_fingerprint": src_meta.get("fingerprint"),
                "source_layers": [s.to_dict() for s in specs],
                "source_dtype": src.dtype,
                "thresholds": list(lo_hi),
                "stats_split": stats_split,
                "stats_rows": rs.n,
                "zero_variance": zero_var,
                "stats_file": STATS_FILE,
            }
        else:
            fne_info = dict(old["fne"])  # type: ignore[index]
        resumed = writer.open(config, {**metadata, "fne": {**fne_info, "stats_sha256": ""}}, overwrite)
        if rs is not None:
            sha = _save_stats(stats_path, rs.mean_, rs.std, rs.min_, rs.max_)
            writer.update_metadata(fne={**fne_info, "stats_sha256": sha})  # the statistics' checksum
        dst = open_store(out)
        params = load_fne_stats(dst)
        mean, std = params["mean"], params["std"]
        manifest = writer.manifest
        assert manifest is not None
        excluded = src.read_excluded()
        if excluded is not None:
            writer.write_excluded(excluded)
        summary = FNESummary(
            out=out,
            source=src.path,
            layers=[s.name for s in specs],
            dims=dims,
            thresholds=lo_hi,
            stats_rows=int(fne_info["stats_rows"]),
            zero_variance=int(fne_info["zero_variance"]),
            resumed=resumed,
        )
        counts = np.zeros(3, dtype=np.int64)
        done = manifest.names
        for part in progress.track(src.parts, "fne", total=src.num_rows(), unit="rows", size=lambda p: p.rows):
            if part.name in done:
                summary.parts_skipped += 1
                continue
            ledger = src.read_ledger(part)
            if part.rows:
                rows = src.read_rows(part)
                feats = {}
                arr = np.empty((part.rows, dims), dtype=np.int8)
                for start in range(0, part.rows, block):
                    stop = min(start + block, part.rows)
                    raw = np.concatenate([src.read_features(part, s, start, stop).astype(np.float64) for s in specs], axis=1)
                    arr[start:stop] = fne_transform(raw, mean, std, lo_hi)
                feats[FNE_LAYER] = arr
                counts += np.bincount(arr.ravel().astype(np.int64) + 1, minlength=3)
            else:
                rows, feats = layout.ROWS_SCHEMA.empty_table(), {}
            writer.commit(write_part(out, part.name, feats, rows, ledger))
            summary.parts_written += 1
    summary.rows = sum(p.rows for p in manifest.parts)
    summary.value_counts = {-1: int(counts[0]), 0: int(counts[1]), 1: int(counts[2])}
    summary.seconds = time.perf_counter() - t0
    log.info(
        "fne: %d parts written, %d kept, %d rows x %d dims in %.1f s",
        summary.parts_written,
        summary.parts_skipped,
        summary.rows,
        dims,
        summary.seconds,
    )
    return summary

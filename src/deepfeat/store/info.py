"""What a feature store holds (``deepfeat info``) and whether it is intact (``deepfeat info --verify``).

:func:`store_info` summarises a store from its metadata, manifest, row tables and ledgers
without touching the feature arrays; :func:`format_info` renders that summary as text;
:func:`verify_store` re-reads every committed file and lists what is wrong with it.

Example:
    >>> info = store_info("feats/")                        # doctest: +SKIP
    >>> print(format_info(info))                           # doctest: +SKIP
    >>> verify_store("feats/")                             # doctest: +SKIP
    []
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ..errors import StoreError
from ..units import format_size
from . import layout
from .fsutil import read_json
from .reader import LayerSpec
from .writer import Manifest, PartRecord

log = logging.getLogger(__name__)

#: How ``None`` labels / splits are shown (and keyed in :meth:`StoreInfo.to_dict`).
NONE_KEY = "(none)"
#: Rows of the array checked for NaN/Inf at a time by :func:`verify_store`.
_VERIFY_BLOCK_ROWS = 65536


@dataclass
class ReasonSummary:
    """How many inputs failed (or were excluded) for one reason, with a few example paths."""

    reason: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class StoreInfo:
    """Summary of a feature store (see :func:`store_info`). ``to_dict()`` gives plain JSON types.

    Counts by ``split``/``label`` use :data:`NONE_KEY` for a missing value. ``items_total`` ==
    ``embedded + failed + excluded`` always holds: the three come from the same ledger.
    """

    path: str
    format_version: int | None
    created: str | None
    fingerprint: str | None
    model_name: str | None
    model_family: str | None
    architecture: str | None
    weights: str | None
    weights_sha256: str | None
    preprocess: dict[str, Any]
    dtype: str
    precision: str | None
    views: int
    layers: list[dict[str, Any]]
    rows_total: int = 0
    rows_by_split: dict[str, int] = field(default_factory=dict)
    rows_by_class: dict[str, dict[str, int]] = field(default_factory=dict)  #: split -> class -> rows
    rows_by_view: dict[int, int] = field(default_factory=dict)
    items_total: int = 0
    embedded: int = 0
    failed: int = 0
    excluded: int = 0
    failures_by_reason: dict[str, ReasonSummary] = field(default_factory=dict)
    exclusions_by_reason: dict[str, ReasonSummary] = field(default_factory=dict)
    parts: int = 0
    empty_parts: int = 0
    bytes_on_disk: int = 0
    feature_bytes: int = 0
    estimated_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted class labels present in the stored rows."""
        return sorted({c for per in self.rows_by_class.values() for c in per})

    @property
    def splits(self) -> list[str]:
        return sorted(self.rows_by_split)

    @property
    def accounted(self) -> bool:
        """``embedded + failed + excluded == items_total`` (true by construction)."""
        return self.embedded + self.failed + self.excluded == self.items_total

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``json.dumps(info.to_dict())`` works).

        Example:
            >>> json.dumps(store_info("feats/").to_dict())   # doctest: +SKIP
        """
        d = asdict(self)
        d["rows_by_view"] = {str(k): v for k, v in self.rows_by_view.items()}
        d["classes"] = self.classes
        d["accounted"] = self.accounted
        return d


def _key(value: Any) -> str:
    return NONE_KEY if value is None or value == "" else str(value)


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            total += st.st_size
    return total


def _load_metadata(path: str) -> dict[str, Any]:
    meta_path = os.path.join(path, layout.METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise StoreError(f"{path!r} is not a deepfeat feature store (no {layout.METADATA_FILE}).")
    try:
        return read_json(meta_path)
    except ValueError as exc:
        raise StoreError(f"{meta_path} is unreadable: {exc}") from None


def _add_reason(table: dict[str, ReasonSummary], reason: str | None, path: str | None, max_examples: int | None) -> None:
    key = reason or "unknown"
    entry = table.setdefault(key, ReasonSummary(key))
    entry.count += 1
    if path is not None and (max_examples is None or len(entry.examples) < max_examples):
        entry.examples.append(path)


def store_info(path: str | os.PathLike, max_examples: int | None = 3) -> StoreInfo:
    """Summarise the store at ``path``: model, layers, rows per split/class/view, ledger, sizes.

    Reads the metadata, the manifest, each part's ``rows.parquet`` (split/label/view columns
    only) and ledger, and ``excluded.parquet``; feature arrays are never opened and checksums
    are not verified (use :func:`verify_store`). Unreadable part files become ``warnings``.

    Args:
        path: the store directory.
        max_examples: example paths kept per failure / exclusion reason (``None``: all).

    Example:
        >>> info = store_info("feats/")                        # doctest: +SKIP
        >>> info.rows_by_split, info.failures_by_reason["unidentified"].count   # doctest: +SKIP
        ({'test': 9, 'train': 15}, 2)
    """
    path = os.fspath(path)
    meta = _load_metadata(path)
    model = meta.get("model") or {}
    config = meta.get("config") or {}
    layers = [LayerSpec.from_dict(d).to_dict() for d in meta.get("layers", [])]
    info = StoreInfo(
        path=path,
        format_version=meta.get("format_version"),
        created=meta.get("created"),
        fingerprint=meta.get("fingerprint"),
        model_name=model.get("name"),
        model_family=model.get("family"),
        architecture=model.get("architecture"),
        weights=model.get("weights"),
        weights_sha256=model.get("weights_sha256"),
        preprocess=dict(meta.get("preprocess") or {}),
        dtype=str(meta.get("dtype", "float32")),
        precision=meta.get("precision"),
        views=_view_count(config.get("views", meta.get("views", 0))),
        layers=layers,
    )
    manifest = Manifest(path)
    info.parts = len(manifest.parts)
    info.empty_parts = sum(1 for p in manifest.parts if not p.rows)
    info.rows_total = sum(p.rows for p in manifest.parts)
    info.feature_bytes = sum(f["bytes"] for p in manifest.parts for n, f in p.files.items() if n.endswith(".npy"))
    by_class: dict[str, dict[str, int]] = {}
    by_split: dict[str, int] = {}
    by_view: dict[int, int] = {}
    seen_ids: set[str] = set()
    for part in manifest.parts:
        pdir = os.path.join(path, layout.PARTS_DIR, part.name)
        if part.rows:
            try:
                rows = pq.read_table(os.path.join(pdir, layout.ROWS_FILE), columns=["split", "label", "view"])
            except Exception as exc:  # noqa: BLE001 - a damaged part must not hide the rest
                info.warnings.append(f"part {part.name}: {layout.ROWS_FILE} is unreadable ({exc}); run verify")
                for s, n in part.splits.items():
                    by_split[_key(s)] = by_split.get(_key(s), 0) + n
            else:
                if rows.num_rows != part.rows:
                    info.warnings.append(f"part {part.name}: {layout.ROWS_FILE} has {rows.num_rows} rows, "
                                         f"the manifest says {part.rows}")
                for s, c, v in zip(rows.column("split").to_pylist(), rows.column("label").to_pylist(),
                                   rows.column("view").to_pylist()):
                    s, c = _key(s), _key(c)
                    by_split[s] = by_split.get(s, 0) + 1
                    per = by_class.setdefault(s, {})
                    per[c] = per.get(c, 0) + 1
                    by_view[int(v)] = by_view.get(int(v), 0) + 1
        try:
            ledger = pq.read_table(os.path.join(pdir, layout.LEDGER_FILE), columns=["id", "path", "status", "reason"])
        except Exception as exc:  # noqa: BLE001
            info.warnings.append(f"part {part.name}: {layout.LEDGER_FILE} is unreadable ({exc}); run verify")
            info.embedded += part.embedded
            info.failed += part.failed
            continue
        embedded = failed = 0
        for item_id, p, status, reason in zip(*(ledger.column(c).to_pylist() for c in ("id", "path", "status", "reason"))):
            if item_id in seen_ids:
                info.warnings.append(f"part {part.name}: input {p!r} is also recorded in an earlier part")
            seen_ids.add(item_id)
            if status == "embedded":
                embedded += 1
            elif status == "failed":
                failed += 1
                _add_reason(info.failures_by_reason, reason, p, max_examples)
            else:
                info.warnings.append(f"part {part.name}: ledger status {status!r} for {p!r}")
        if (embedded, failed) != (part.embedded, part.failed):
            info.warnings.append(f"part {part.name}: the ledger has {embedded} embedded / {failed} failed, "
                                 f"the manifest says {part.embedded} / {part.failed}")
        info.embedded += embedded
        info.failed += failed
    excluded_path = os.path.join(path, layout.EXCLUDED_FILE)
    if os.path.isfile(excluded_path):
        try:
            ex = pq.read_table(excluded_path, columns=["path", "reason"])
        except Exception as exc:  # noqa: BLE001
            info.warnings.append(f"{layout.EXCLUDED_FILE} is unreadable ({exc})")
        else:
            for p, reason in zip(ex.column("path").to_pylist(), ex.column("reason").to_pylist()):
                info.excluded += 1
                _add_reason(info.exclusions_by_reason, reason, p, max_examples)
    info.items_total = info.embedded + info.failed + info.excluded
    info.rows_by_split = dict(sorted(by_split.items()))
    info.rows_by_class = {s: dict(sorted(per.items())) for s, per in sorted(by_class.items())}
    info.rows_by_view = dict(sorted(by_view.items()))
    info.failures_by_reason = dict(sorted(info.failures_by_reason.items(), key=lambda kv: (-kv[1].count, kv[0])))
    info.exclusions_by_reason = dict(sorted(info.exclusions_by_reason.items(), key=lambda kv: (-kv[1].count, kv[0])))
    row_bytes = sum(int(d["dims"]) for d in layers) * np.dtype(info.dtype).itemsize
    # Augmented views exist only for some splits: view 0 has one row per embedded input and
    # every augmented view index has as many rows as view 1.
    plain, augmented = info.rows_by_view.get(0, 0), info.rows_by_view.get(1, 0)
    # The estimate printed before a run counts every input (failed ones too).
    info.estimated_bytes = (plain + info.failed + augmented * info.views) * row_bytes
    info.bytes_on_disk = _dir_bytes(path)
    uneven = [v for v in range(1, info.views + 1) if info.rows_by_view.get(v, 0) != augmented]
    if not info.warnings and (plain != info.embedded or uneven):
        info.warnings.append(f"{plain} view-0 rows for {info.embedded} embedded inputs"
                             + (f"; augmented views {uneven} have other row counts than view 1" if uneven else ""))
    return info


def _view_count(views: Any) -> int:
    """Augmented views per input from the store config (0, or {"count": K, ...})."""
    if isinstance(views, dict):
        return int(views.get("count", 0))
    return int(views or 0)


def failed_inputs(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every failed and excluded input of the store: dicts with path, status, reason, message.

    Example:
        >>> [f["reason"] for f in failed_inputs("feats/")]     # doctest: +SKIP
        ['unidentified', 'not_image_extension']
    """
    path = os.fspath(path)
    _load_metadata(path)
    out: list[dict[str, Any]] = []
    tables = [os.path.join(path, layout.PARTS_DIR, p.name, layout.LEDGER_FILE) for p in Manifest(path).parts if p.failed]
    excluded = os.path.join(path, layout.EXCLUDED_FILE)
    if os.path.isfile(excluded):
        tables.append(excluded)
    for t in tables:
        for r in pq.read_table(t, columns=["path", "label", "split", "status", "reason", "message"]).to_pylist():
            if r["status"] != "embedded":
                out.append(r)
    return out


# ------------------------------------------------------------------------------- formatting
def _table(header: list[str], rows: Iterable[list[Any]], indent: str = "  ", right: Iterable[int] = ()) -> list[str]:
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(header)]
    right = set(right)

    def fmt(cells: list[str]) -> str:
        return indent + "  ".join(c.rjust(w) if i in right else c.ljust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [fmt([str(h) for h in header]), indent + "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]


def _kv(pairs: Iterable[tuple[str, Any]], indent: str = "  ") -> list[str]:
    pairs = [(str(k), str(v)) for k, v in pairs]
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{indent}{k.ljust(width)}  {v}".rstrip() for k, v in pairs]


def _fmt_pre(pre: Mapping[str, Any]) -> str:
    if not pre:
        return "unknown"
    size = pre.get("input_size") or []
    parts = ["x".join(str(v) for v in size) if size else "?"]
    for k in ("crop_pct", "interpolation"):
        if k in pre:
            parts.append(f"{k} {pre[k]}")
    for k in ("mean", "std"):
        if k in pre:
            parts.append(f"{k} ({', '.join(f'{float(v):g}' for v in pre[k])})")
    rest = {k: v for k, v in pre.items() if k not in ("input_size", "crop_pct", "interpolation", "mean", "std")}
    if rest:
        parts.append(json.dumps(rest, sort_keys=True))
    return ", ".join(parts)


def format_info(info: StoreInfo, failures: bool = False, max_classes: int = 60) -> str:
    """Render :func:`store_info`'s result as sections of aligned text (what ``deepfeat info`` prints).

    Args:
        info: the summary.
        failures: list every failed and excluded input (re-reads the ledger) instead of examples.
        max_classes: classes shown in the split x class table before eliding the rest.

    Example:
        >>> print(format_info(store_info("feats/")))           # doctest: +SKIP
        Store  feats/
        ...
    """
    out: list[str] = [f"Store  {info.path}"]
    out.append(f"  format v{info.format_version}, created {info.created or '?'}, "
               f"fingerprint {(info.fingerprint or '?')[:16]}")
    out += ["", "Model"]
    name = info.model_name or "?"
    extra = ", ".join(x for x in (info.model_family, info.architecture) if x)
    out += _kv([
        ("name", f"{name} ({extra})" if extra else name),
        ("weights", info.weights or "?"),
        ("weights sha256", info.weights_sha256 or "?"),
        ("preprocess", _fmt_pre(info.preprocess)),
        ("dtype", info.dtype),
        ("precision", info.precision or "?"),
        ("views", f"{1 + info.views} per input" if info.views else "1 per input (no augmentation)"),
    ])
    out += ["", f"Layers ({len(info.layers)}, {sum(int(d['dims']) for d in info.layers):,} dims per row)"]
    out += _table(["layer", "key", "shape", "pool", "dims"],
                  [[d["name"], d["key"], "x".join(str(v) for v in d["shape"]), d["pool"], f"{int(d['dims']):,}"]
                   for d in info.layers], right=[4])
    out += ["", f"Rows ({info.rows_total:,} in {info.parts} part{'s' * (info.parts != 1)}"
                + (f", {info.empty_parts} with no rows" if info.empty_parts else "") + ")"]
    splits = list(info.rows_by_split)
    if splits:
        classes = info.classes
        shown = classes[:max_classes]
        rows = [[c] + [f"{info.rows_by_class.get(s, {}).get(c, 0):,}" for s in splits]
                + [f"{sum(info.rows_by_class.get(s, {}).get(c, 0) for s in splits):,}"] for c in shown]
        if len(classes) > len(shown):
            rest = classes[len(shown):]
            rows.append([f"... {len(rest)} more classes"]
                        + [f"{sum(info.rows_by_class.get(s, {}).get(c, 0) for c in rest):,}" for s in splits]
                        + [f"{sum(info.rows_by_class.get(s, {}).get(c, 0) for s in splits for c in rest):,}"])
        rows.append(["total"] + [f"{info.rows_by_split[s]:,}" for s in splits] + [f"{info.rows_total:,}"])
        out += _table(["class \\ split"] + splits + ["total"], rows, right=range(1, len(splits) + 2))
        if len(info.rows_by_view) > 1 or info.views:
            out.append("  per view: " + ", ".join(f"view {v}: {n:,}" for v, n in info.rows_by_view.items()))
    else:
        out.append("  (no rows)")
    out += ["", "Inputs (from the ledger)"]
    out += _table(["status", "items"], [
        ["embedded", f"{info.embedded:,}"], ["failed", f"{info.failed:,}"], ["excluded", f"{info.excluded:,}"],
        ["total", f"{info.items_total:,}"]], right=[1])
    listing = failed_inputs(info.path) if failures else None
    for title, table, status in (("Failures by reason", info.failures_by_reason, "failed"),
                                 ("Exclusions by reason", info.exclusions_by_reason, "excluded")):
        if not table:
            continue
        out += ["", title]
        if listing is not None:
            out += _table(["reason", "path", "message"],
                          [[r["reason"] or "unknown", r["path"], (r["message"] or "")[:100]]
                           for r in listing if r["status"] == status])
        else:
            out += _table(["reason", "items", "examples"],
                          [[s.reason, f"{s.count:,}", "; ".join(s.examples) + (" ..." if s.count > len(s.examples) else "")]
                           for s in table.values()], right=[1])
    out += ["", "Size"]
    ratio = f" ({info.feature_bytes / info.estimated_bytes:.2f}x the estimate)" if info.estimated_bytes else ""
    out += _kv([
        ("on disk (all files)", format_size(info.bytes_on_disk)),
        ("feature arrays", format_size(info.feature_bytes) + ratio),
        ("estimate", format_size(info.estimated_bytes) + " (items x views x dims x bytes per value)"),
    ])
    if info.warnings:
        out += ["", "Warnings"] + [f"  ! {w}" for w in info.warnings]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- verification
def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _check_file(pdir: str, part: PartRecord, fname: str, problems: list[str]) -> bool:
    """Size and sha256 of one file against the manifest; True when both match."""
    where = f"part {part.name}: {fname}"
    entry = part.files.get(fname)
    fpath = os.path.join(pdir, fname)
    if entry is None:
        problems.append(f"{where} is not listed in the manifest")
        return False
    try:
        size = os.path.getsize(fpath)
    except OSError as exc:
        problems.append(f"{where} is missing ({exc.strerror or exc})")
        return False
    if size != int(entry.get("bytes", -1)):
        problems.append(f"{where} has {size} bytes, the manifest says {entry.get('bytes')} (truncated or replaced)")
        return False
    try:
        digest = _sha256(fpath)
    except OSError as exc:
        problems.append(f"{where} cannot be read ({exc.strerror or exc})")
        return False
    if digest != entry.get("sha256"):
        problems.append(f"{where} fails its sha256 checksum (manifest {str(entry.get('sha256'))[:12]}..., "
                        f"file {digest[:12]}...): corrupted on disk")
        return False
    return True


def _check_array(pdir: str, part: PartRecord, spec: LayerSpec, dtype: str, problems: list[str]) -> None:
    fname = f"{spec.key}.npy"
    where = f"part {part.name}: {fname}"
    try:
        arr = np.load(os.path.join(pdir, fname), mmap_mode="r", allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable array is a problem to report
        problems.append(f"{where} cannot be loaded ({exc})")
        return
    if arr.shape != (part.rows, spec.dims):
        problems.append(f"{where} has shape {arr.shape}, expected ({part.rows}, {spec.dims})")
        return
    if str(arr.dtype) != dtype:
        problems.append(f"{where} has dtype {arr.dtype}, the store's dtype is {dtype}")
    if arr.dtype.kind != "f":
        return
    bad_rows = 0
    for s in range(0, arr.shape[0], _VERIFY_BLOCK_ROWS):
        bad_rows += int((~np.isfinite(arr[s:s + _VERIFY_BLOCK_ROWS])).any(axis=1).sum())
    if bad_rows:
        problems.append(f"{where} has NaN/Inf values in {bad_rows} row(s)")


def verify_store(path: str | os.PathLike) -> list[str]:
    """Check every committed part; return the problems found (an empty list means healthy).

    For each part in the manifest: every expected file exists and has the manifest's size and
    sha256; ``rows.parquet`` and ``ledger.parquet`` have the manifest's row / item / split
    counts; each ``<key>.npy`` has shape ``rows x dims`` and the store's dtype and holds no
    NaN/Inf. Each problem names the part and the file. Arrays are memory-mapped and scanned
    in blocks, so memory stays bounded.

    Raises:
        StoreError: ``path`` is not a store at all (no metadata file).

    Example:
        >>> verify_store("feats/")                             # doctest: +SKIP
        []
        >>> verify_store("damaged/")                           # doctest: +SKIP
        ['part 00000001: pre_logits.npy fails its sha256 checksum (...)']
    """
    path = os.fspath(path)
    meta = _load_metadata(path)
    problems: list[str] = []
    try:
        specs = [LayerSpec.from_dict(d) for d in meta["layers"]]
        dtype = str(meta["dtype"])
    except (KeyError, TypeError, ValueError) as exc:
        return [f"{layout.METADATA_FILE}: missing or malformed field ({exc})"]
    try:
        manifest = Manifest(path)
    except StoreError as exc:
        return [f"{layout.MANIFEST_FILE}: {exc}"]
    if not os.path.isfile(manifest.path):
        problems.append(f"{layout.MANIFEST_FILE} is missing")
    names: set[str] = set()
    seen_ids: dict[str, str] = {}
    for part in manifest.parts:
        if part.name in names:
            problems.append(f"part {part.name}: listed twice in the manifest")
            continue
        names.add(part.name)
        pdir = os.path.join(path, layout.PARTS_DIR, part.name)
        if not os.path.isdir(pdir):
            problems.append(f"part {part.name}: the directory {pdir} is missing")
            continue
        expected = [layout.LEDGER_FILE] + ([layout.ROWS_FILE] + [f"{s.key}.npy" for s in specs] if part.rows else [])
        for extra in sorted(set(part.files) - set(expected)):
            problems.append(f"part {part.name}: {extra} is in the manifest but not expected for this store")
        ok = {fname: _check_file(pdir, part, fname, problems) for fname in expected}
        # Structural checks run on every file that is still readable, even after a checksum
        # mismatch, so that a report says what the damage does (wrong rows, NaN...).
        ledger = _read_parquet(pdir, part, layout.LEDGER_FILE, ok, problems)
        embedded_ids: set[str] = set()
        if ledger is not None:
            if ledger.num_rows != part.items:
                problems.append(f"part {part.name}: {layout.LEDGER_FILE} has {ledger.num_rows} items, "
                                f"the manifest says {part.items}")
            if "status" in ledger.column_names and "id" in ledger.column_names:
                statuses = ledger.column("status").to_pylist()
                ids = ledger.column("id").to_pylist()
                emb, fail = statuses.count("embedded"), statuses.count("failed")
                if (emb, fail) != (part.embedded, part.failed):
                    problems.append(f"part {part.name}: {layout.LEDGER_FILE} has {emb} embedded / {fail} failed, "
                                    f"the manifest says {part.embedded} / {part.failed}")
                for item_id, st in zip(ids, statuses):
                    if item_id in seen_ids:
                        problems.append(f"part {part.name}: {layout.LEDGER_FILE} repeats input {item_id} "
                                        f"(already in part {seen_ids[item_id]})")
                    seen_ids[item_id] = part.name
                    if st == "embedded":
                        embedded_ids.add(item_id)
            else:
                problems.append(f"part {part.name}: {layout.LEDGER_FILE} lacks the id/status columns")
        if not part.rows:
            continue
        rows = _read_parquet(pdir, part, layout.ROWS_FILE, ok, problems)
        if rows is not None:
            missing = [c for c in layout.ROWS_SCHEMA.names if c not in rows.column_names]
            if missing:
                problems.append(f"part {part.name}: {layout.ROWS_FILE} lacks columns {', '.join(missing)}")
            if rows.num_rows != part.rows:
                problems.append(f"part {part.name}: {layout.ROWS_FILE} has {rows.num_rows} rows, "
                                f"the manifest says {part.rows}")
            if "split" in rows.column_names:
                counts: dict[str, int] = {}
                for s in rows.column("split").to_pylist():
                    counts[s or ""] = counts.get(s or "", 0) + 1
                if counts != {k: v for k, v in part.splits.items() if v}:
                    problems.append(f"part {part.name}: {layout.ROWS_FILE} splits {counts} differ from the "
                                    f"manifest's {part.splits}")
            if "id" in rows.column_names and ledger is not None:
                stray = set(rows.column("id").to_pylist()) - embedded_ids
                if stray:
                    problems.append(f"part {part.name}: {layout.ROWS_FILE} has {len(stray)} id(s) the ledger "
                                    "does not record as embedded")
        for spec in specs:
            fname = f"{spec.key}.npy"
            if os.path.isfile(os.path.join(pdir, fname)):
                _check_array(pdir, part, spec, dtype, problems)
    excluded = os.path.join(path, layout.EXCLUDED_FILE)
    if os.path.isfile(excluded):
        try:
            pq.read_table(excluded)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{layout.EXCLUDED_FILE} is unreadable ({exc})")
    if problems:
        log.warning("verify %s: %d problem(s)", path, len(problems))
    return problems


def _read_parquet(pdir: str, part: PartRecord, fname: str, ok: Mapping[str, bool], problems: list[str]):
    fpath = os.path.join(pdir, fname)
    if not os.path.isfile(fpath):
        return None
    try:
        return pq.read_table(fpath)
    except Exception as exc:  # noqa: BLE001
        if ok.get(fname, False):
            problems.append(f"part {part.name}: {fname} cannot be read ({exc})")
        else:
            problems.append(f"part {part.name}: {fname} cannot be read either ({type(exc).__name__})")
        return None

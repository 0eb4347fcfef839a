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

import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..agreement import describe_agreement
from ..errors import StoreError
from ..units import format_size
from . import layout, trust
from .fsutil import sha256_file
from .layerspec import LayerSpec
from .manifest import PartRecord
from .reader import FeatureStore, _read_table, read_parquet

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
    runtime: str | None = None  #: the inference runtime that computed the features (torch before runtimes existed)
    #: the precision guard's measurement (runtime.agreement of the metadata), when a reduced precision was measured
    agreement: dict[str, Any] | None = None
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


def _open(path: str) -> FeatureStore:
    """The store opened for reading without checksums: metadata and manifest checked (store/trust.py)."""
    return FeatureStore(path, verify=False)


def _add_reason(table: dict[str, ReasonSummary], reason: str | None, path: str | None, max_examples: int | None) -> None:
    key = reason or "unknown"
    entry = table.setdefault(key, ReasonSummary(key))
    entry.count += 1
    if path is not None and (max_examples is None or len(entry.examples) < max_examples):
        entry.examples.append(path)


def store_info(path: str | os.PathLike[str], max_examples: int | None = 3) -> StoreInfo:
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
    store = _open(path)
    meta = store.metadata
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
        runtime=_runtime_name(meta),
        agreement=_agreement(meta),
    )
    manifest = store.manifest
    info.parts = len(manifest.parts)
    info.empty_parts = sum(1 for p in manifest.parts if not p.rows)
    info.rows_total = sum(p.rows for p in manifest.parts)
    info.feature_bytes = sum(f["bytes"] for p in manifest.parts for n, f in p.files.items() if n.endswith(".npy"))
    by_class: dict[str, dict[str, int]] = {}
    by_split: dict[str, int] = {}
    by_view: dict[int, int] = {}
    seen_ids: set[str] = set()
    for part in manifest.parts:
        if part.rows:
            try:
                rows = store.read_rows(part, ["split", "label", "view"])
            except StoreError as exc:  # a damaged part must not hide the rest
                info.warnings.append(f"{exc} Run 'deepfeat info --verify'.")
                for s, n in part.splits.items():
                    by_split[_key(s)] = by_split.get(_key(s), 0) + n
            else:
                for s, c, v in zip(
                    rows.column("split").to_pylist(), rows.column("label").to_pylist(), rows.column("view").to_pylist()
                ):
                    s, c = _key(s), _key(c)
                    by_split[s] = by_split.get(s, 0) + 1
                    per = by_class.setdefault(s, {})
                    per[c] = per.get(c, 0) + 1
                    by_view[int(v)] = by_view.get(int(v), 0) + 1
        try:
            ledger = store.read_ledger(part, ["id", "path", "status", "reason"])
        except StoreError as exc:
            info.warnings.append(f"{exc} Run 'deepfeat info --verify'.")
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
            info.warnings.append(
                f"part {part.name}: the ledger has {embedded} embedded / {failed} failed, "
                f"the manifest says {part.embedded} / {part.failed}"
            )
        info.embedded += embedded
        info.failed += failed
    try:
        excluded_path = store.member(layout.EXCLUDED_FILE)
    except StoreError as exc:
        info.warnings.append(str(exc))
        excluded_path = ""
    if excluded_path and os.path.isfile(excluded_path):
        try:
            ex = read_parquet(excluded_path, columns=["path", "reason"])
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
        info.warnings.append(
            f"{plain} view-0 rows for {info.embedded} embedded inputs"
            + (f"; augmented views {uneven} have other row counts than view 1" if uneven else "")
        )
    return info


def _view_count(views: Any) -> int:
    """Augmented views per input from the store config (0, or {"count": K, ...})."""
    if isinstance(views, dict):
        return int(views.get("count", 0))
    return int(views or 0)


def failed_inputs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every failed and excluded input of the store: dicts with path, status, reason, message.

    Example:
        >>> [f["reason"] for f in failed_inputs("feats/")]     # doctest: +SKIP
        ['unidentified', 'not_image_extension']
    """
    store = _open(os.fspath(path))
    columns = ["path", "label", "split", "status", "reason", "message"]
    tables = [store.read_ledger(p, columns) for p in store.manifest.parts if p.failed]
    excluded = store.member(layout.EXCLUDED_FILE)
    if os.path.isfile(excluded):
        try:
            tables.append(read_parquet(excluded, columns))
        except Exception as exc:  # noqa: BLE001 - any unreadable file is a store error
            raise StoreError(f"{layout.EXCLUDED_FILE} cannot be read ({exc}).") from None
    return [r for t in tables for r in t.to_pylist() if r["status"] != "embedded"]


# ------------------------------------------------------------------------------- formatting
def _table(header: list[str], rows: Iterable[list[Any]], indent: str = "  ", right: Iterable[int] = ()) -> list[str]:
    body = [[str(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in body)) if body else len(str(h)) for i, h in enumerate(header)]
    right = set(right)

    def fmt(cells: list[str]) -> str:
        return (
            indent
            + "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
        )

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
    if pre.get("jpeg_draft"):
        parts.append("JPEG draft")
    rest = {
        k: v for k, v in pre.items() if k not in ("input_size", "crop_pct", "interpolation", "mean", "std", "jpeg_draft")
    }
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
    out.append(
        f"  format v{info.format_version}, created {info.created or '?'}, fingerprint {(info.fingerprint or '?')[:16]}"
    )
    out += ["", "Model"]
    name = info.model_name or "?"
    extra = ", ".join(x for x in (info.model_family, info.architecture) if x)
    out += _kv(
        [
            ("name", f"{name} ({extra})" if extra else name),
            ("weights", info.weights or "?"),
            ("weights sha256", info.weights_sha256 or "?"),
            ("preprocess", _fmt_pre(info.preprocess)),
            ("dtype", info.dtype),
            ("runtime", f"{info.runtime or 'torch'} {info.precision or '?'}"),
            ("agreement", format_agreement(info.precision, info.agreement)),
            ("views", f"{1 + info.views} per input" if info.views else "1 per input (no augmentation)"),
        ]
    )
    out += ["", f"Layers ({len(info.layers)}, {sum(int(d['dims']) for d in info.layers):,} dims per row)"]
    out += _table(
        ["layer", "key", "shape", "pool", "dims"],
        [[d["name"], d["key"], "x".join(str(v) for v in d["shape"]), d["pool"], f"{int(d['dims']):,}"] for d in info.layers],
        right=[4],
    )
    out += [
        "",
        f"Rows ({info.rows_total:,} in {info.parts} part{'s' * (info.parts != 1)}"
        + (f", {info.empty_parts} with no rows" if info.empty_parts else "")
        + ")",
    ]
    splits = list(info.rows_by_split)
    if splits:
        classes = info.classes
        shown = classes[:max_classes]
        rows = [
            [c]
            + [f"{info.rows_by_class.get(s, {}).get(c, 0):,}" for s in splits]
            + [f"{sum(info.rows_by_class.get(s, {}).get(c, 0) for s in splits):,}"]
            for c in shown
        ]
        if len(classes) > len(shown):
            rest = classes[len(shown) :]
            rows.append(
                [f"... {len(rest)} more classes"]
                + [f"{sum(info.rows_by_class.get(s, {}).get(c, 0) for c in rest):,}" for s in splits]
                + [f"{sum(info.rows_by_class.get(s, {}).get(c, 0) for s in splits for c in rest):,}"]
            )
        rows.append(["total"] + [f"{info.rows_by_split[s]:,}" for s in splits] + [f"{info.rows_total:,}"])
        out += _table(["class \\ split"] + splits + ["total"], rows, right=range(1, len(splits) + 2))
        if len(info.rows_by_view) > 1 or info.views:
            out.append("  per view: " + ", ".join(f"view {v}: {n:,}" for v, n in info.rows_by_view.items()))
    else:
        out.append("  (no rows)")
    out += ["", "Inputs (from the ledger)"]
    out += _table(
        ["status", "items"],
        [
            ["embedded", f"{info.embedded:,}"],
            ["failed", f"{info.failed:,}"],
            ["excluded", f"{info.excluded:,}"],
            ["total", f"{info.items_total:,}"],
        ],
        right=[1],
    )
    listing = failed_inputs(info.path) if failures else None
    for title, table, status in (
        ("Failures by reason", info.failures_by_reason, "failed"),
        ("Exclusions by reason", info.exclusions_by_reason, "excluded"),
    ):
        if not table:
            continue
        out += ["", title]
        if listing is not None:
            out += _table(
                ["reason", "path", "message"],
                [
                    [r["reason"] or "unknown", r["path"], (r["message"] or "")[:100]]
                    for r in listing
                    if r["status"] == status
                ],
            )
        else:
            out += _table(
                ["reason", "items", "examples"],
                [
                    [s.reason, f"{s.count:,}", "; ".join(s.examples) + (" ..." if s.count > len(s.examples) else "")]
                    for s in table.values()
                ],
                right=[1],
            )
    out += ["", "Size"]
    ratio = f" ({info.feature_bytes / info.estimated_bytes:.2f}x the estimate)" if info.estimated_bytes else ""
    out += _kv(
        [
            ("on disk (all files)", format_size(info.bytes_on_disk)),
            ("feature arrays", format_size(info.feature_bytes) + ratio),
            ("estimate", format_size(info.estimated_bytes) + " (items x views x dims x bytes per value)"),
        ]
    )
    if info.warnings:
        out += ["", "Warnings"] + [f"  ! {w}" for w in info.warnings]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------- verification
#: The checks :func:`verify_store` runs; every problem it reports starts with ``[<check>]``.
CHECKS = {
    "metadata": "deepfeat-store.json is a JSON object with a known format, dtype and safe layer keys",
    "manifest": "manifest.json lists each part once, with consistent counts and exactly the part's files",
    "path": "every file read resolves inside the store to a regular file; no symbolic link leads outside",
    "files": "every listed file exists with the size the manifest records",
    "checksum": "every listed file has the sha256 the manifest records",
    "parquet": "rows.parquet / ledger.parquet / excluded.parquet decode, with the manifest's row counts",
    "ledger": "each part's ledger agrees with the manifest; no input is recorded twice",
    "array": "each <layer key>.npy has a valid header, shape rows x dims, the store's dtype, no NaN/Inf",
}


def _problem(check: str, message: str) -> str:
    return f"[{check}] {message}"


def _check_file(store: FeatureStore, part: PartRecord, fname: str, problems: list[str]) -> str | None:
    """Size and sha256 of one file against the manifest; its path when both match, else None."""
    where = f"part {part.name}: {fname}"
    entry = part.files.get(fname)
    if entry is None:
        problems.append(_problem("manifest", f"{where} is not listed in the manifest"))
        return None
    try:
        fpath = store.part_file(part, fname)
    except StoreError as exc:
        problems.append(_problem("path", str(exc)))
        return None
    try:
        size = os.path.getsize(fpath)
    except OSError as exc:
        problems.append(_problem("files", f"{where} is missing ({exc.strerror or exc})"))
        return None
    if size != int(entry.get("bytes", -1)):
        problems.append(
            _problem("files", f"{where} has {size} bytes, the manifest says {entry.get('bytes')} (truncated or replaced)")
        )
        return None
    try:
        digest = sha256_file(fpath)
    except OSError as exc:
        problems.append(_problem("files", f"{where} cannot be read ({exc.strerror or exc})"))
        return None
    if digest != entry.get("sha256"):
        problems.append(
            _problem(
                "checksum",
                f"{where} fails its sha256 checksum (manifest "
                f"{str(entry.get('sha256'))[:12]}..., file {digest[:12]}...): "
                "corrupted on disk",
            )
        )
        return None
    return fpath


def _check_array(store: FeatureStore, part: PartRecord, spec: LayerSpec, problems: list[str]) -> None:
    """Header, shape, dtype and finiteness of one feature file, scanned in blocks of a memory map."""
    where = f"part {part.name}: {spec.key}.npy"
    try:
        path, offset, dtype = store._npy_header(part, spec)
        arr = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(part.rows, spec.dims))
    except StoreError as exc:
        problems.append(_problem("array", str(exc)))
        return
    except (OSError, ValueError) as exc:
        problems.append(_problem("array", f"{where} cannot be mapped ({exc})"))
        return
    if arr.dtype.kind != "f":
        return
    bad_rows = 0
    for s in range(0, arr.shape[0], _VERIFY_BLOCK_ROWS):
        bad_rows += int((~np.isfinite(arr[s : s + _VERIFY_BLOCK_ROWS])).any(axis=1).sum())
    if bad_rows:
        problems.append(_problem("array", f"{where} has NaN/Inf values in {bad_rows} row(s)"))


def _outside_links(path: str) -> list[str]:
    """Symbolic links anywhere in the store that resolve outside it (links are never followed here)."""
    root = os.path.realpath(path)
    found = []
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if target != root and not target.startswith(root.rstrip(os.sep) + os.sep):
                    found.append(
                        _problem(
                            "path",
                            f"{os.path.relpath(full, path)} is a symbolic link to "
                            f"{target}, outside the store; deepfeat will not follow it",
                        )
                    )
    return found


def verify_store(path: str | os.PathLike[str]) -> list[str]:
    """Check every committed part; return the problems found (an empty list means healthy).

    Each problem starts with the check that failed (``[manifest]``, ``[path]``, ``[checksum]``...;
    see :data:`CHECKS`) and names the part and the file. The metadata and the manifest are
    checked first (names, types, counts: store/trust.py); a store whose manifest fails is
    reported as such and none of its parts is opened. Then for each part: every expected file
    resolves inside the store and has the manifest's size and sha256; ``rows.parquet`` and
    ``ledger.parquet`` decode with the manifest's row / item / split counts; each
    ``<key>.npy`` has a valid header, shape ``rows x dims``, the store's dtype and no NaN/Inf.
    Last, no symbolic link in the store may lead outside it. Arrays are memory-mapped and
    scanned in blocks, so memory stays bounded.

    Raises:
        StoreError: ``path`` is not a store at all (no metadata file).

    Example:
        >>> verify_store("feats/")                             # doctest: +SKIP
        []
        >>> verify_store("damaged/")                           # doctest: +SKIP
        ['[checksum] part 00000001: pre_logits.npy fails its sha256 checksum (...)']
    """
    path = os.fspath(path)
    if not os.path.lexists(os.path.join(path, layout.METADATA_FILE)):
        raise StoreError(f"{path!r} is not a deepfeat feature store (no {layout.METADATA_FILE}).")
    links = _outside_links(path)
    try:
        store = _open(path)
    except trust.UnsafePathError as exc:
        return [_problem("path", str(exc))] + links
    except StoreError as exc:
        check = "metadata" if str(exc).startswith(layout.METADATA_FILE) else "manifest"
        return [_problem(check, str(exc))] + links
    problems: list[str] = []
    if not os.path.isfile(store.manifest.path):
        problems.append(_problem("manifest", f"{layout.MANIFEST_FILE} is missing"))
    seen_ids: dict[str, str] = {}
    for part in store.manifest.parts:
        expected = trust.part_files(part.rows, [s.key for s in store.layers])
        ok = {fname: _check_file(store, part, fname, problems) for fname in expected}
        # Structural checks run on every file that is still readable, even after a checksum
        # mismatch, so that a report says what the damage does (wrong rows, NaN...).
        ledger = _read_part_table(store, part, layout.LEDGER_FILE, ok, problems)
        embedded_ids: set[str] = set()
        if ledger is not None:
            if "status" in ledger.column_names and "id" in ledger.column_names:
                statuses = ledger.column("status").to_pylist()
                ids = ledger.column("id").to_pylist()
                emb, fail = statuses.count("embedded"), statuses.count("failed")
                if (emb, fail) != (part.embedded, part.failed):
                    problems.append(
                        _problem(
                            "ledger",
                            f"part {part.name}: {layout.LEDGER_FILE} has {emb} embedded "
                            f"/ {fail} failed, the manifest says {part.embedded} / "
                            f"{part.failed}",
                        )
                    )
                for item_id, st in zip(ids, statuses):
                    if item_id in seen_ids:
                        problems.append(
                            _problem(
                                "ledger",
                                f"part {part.name}: {layout.LEDGER_FILE} repeats input "
                                f"{item_id} (already in part {seen_ids[item_id]})",
                            )
                        )
                    seen_ids[item_id] = part.name
                    if st == "embedded":
                        embedded_ids.add(item_id)
            else:
                problems.append(_problem("parquet", f"part {part.name}: {layout.LEDGER_FILE} lacks the id/status columns"))
        if not part.rows:
            continue
        rows = _read_part_table(store, part, layout.ROWS_FILE, ok, problems)
        if rows is not None:
            missing = [c for c in layout.ROWS_SCHEMA.names if c not in rows.column_names]
            if missing:
                problems.append(
                    _problem("parquet", f"part {part.name}: {layout.ROWS_FILE} lacks columns {', '.join(missing)}")
                )
            if "split" in rows.column_names:
                counts: dict[str, int] = {}
                for s in rows.column("split").to_pylist():
                    counts[s or ""] = counts.get(s or "", 0) + 1
                if counts != {k: v for k, v in part.splits.items() if v}:
                    problems.append(
                        _problem(
                            "parquet",
                            f"part {part.name}: {layout.ROWS_FILE} splits {counts} differ from the manifest's {part.splits}",
                        )
                    )
            if "id" in rows.column_names and ledger is not None:
                stray = set(rows.column("id").to_pylist()) - embedded_ids
                if stray:
                    problems.append(
                        _problem(
                            "ledger",
                            f"part {part.name}: {layout.ROWS_FILE} has {len(stray)} "
                            "id(s) the ledger does not record as embedded",
                        )
                    )
        for spec in store.layers:
            if ok.get(f"{spec.key}.npy") is not None or _exists(store, part, f"{spec.key}.npy"):
                _check_array(store, part, spec, problems)
    try:
        excluded = store.member(layout.EXCLUDED_FILE)
        if os.path.isfile(excluded):
            try:
                read_parquet(excluded)
            except Exception as exc:  # noqa: BLE001
                problems.append(_problem("parquet", f"{layout.EXCLUDED_FILE} is unreadable ({exc})"))
    except StoreError as exc:
        problems.append(_problem("path", str(exc)))
    problems += [p for p in links if p not in problems]
    if problems:
        log.warning("verify %s: %d problem(s)", path, len(problems))
    return problems


def _exists(store: FeatureStore, part: PartRecord, fname: str) -> bool:
    """Whether a part's file is there to be examined (a file refused by the path check is not)."""
    try:
        return os.path.isfile(store.part_file(part, fname))
    except StoreError:
        return False


def _read_part_table(
    store: FeatureStore, part: PartRecord, fname: str, ok: Mapping[str, str | None], problems: list[str]
) -> Any:
    """One Parquet file of a part through the reader's checks (row count, size), or None with a problem."""
    if not _exists(store, part, fname):
        return None
    expected = part.items if fname == layout.LEDGER_FILE else part.rows
    fpath = store.part_file(part, fname)
    try:
        return _read_table(fpath, f"part {part.name}: {fname}", None, expected)
    except StoreError as exc:
        after = "" if ok.get(fname) is not None else " (after its size or checksum check failed)"
        problems.append(_problem("parquet", f"{exc}{after}"))
        return None


def _agreement(meta: dict[str, Any]) -> dict[str, Any] | None:
    rt = meta.get("runtime")
    rec = rt.get("agreement") if isinstance(rt, dict) else None
    return dict(rec) if isinstance(rec, dict) else None


def format_agreement(precision: str | None, agreement: dict[str, Any] | None) -> str:
    """The ``agreement`` line of ``deepfeat info``: what the precision guard measured."""
    if agreement:
        return describe_agreement({"agreement": agreement}) or "?"
    if precision in (None, "fp32"):
        return "fp32 (the reference precision)"
    return f"{precision}, not measured (written before the precision guard, or by a custom engine)"


def _runtime_name(meta: dict[str, Any]) -> str | None:
    rt = meta.get("runtime")
    if isinstance(rt, dict) and isinstance(rt.get("runtime"), str):
        return str(rt["runtime"])[:40]
    return None

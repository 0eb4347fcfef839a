"""Writing one immutable part of a store, and committing it to the manifest.

A part is written under ``.tmp/``, every file fsync'd, the directory renamed into
``parts/`` and fsync'd; only then is it added to ``manifest.json`` (temp + rename). A crash
at any moment leaves either the old manifest (the part is redone on resume) or the new one.
Workers (local or Ray) call :func:`write_part`; one place -- the runner -- calls
:meth:`Manifest.commit`.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from . import layout
from . import trust
from .fsutil import HashingWriter, atomic_write_json, environment_errors, fsync_dir, remove_tree

log = logging.getLogger(__name__)


def _test_pause(stage: str) -> None:
    """Test hook: ``DEEPFEAT_TEST_PAUSE=stage:seconds`` sleeps at that commit stage."""
    spec = os.environ.get("DEEPFEAT_TEST_PAUSE")
    if spec and spec.split(":")[0] == stage:
        time.sleep(float(spec.split(":")[1]))


@dataclass
class PartRecord:
    """Manifest entry of one committed part."""

    name: str
    rows: int
    items: int
    embedded: int
    failed: int
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "items": self.items, "embedded": self.embedded,
                "failed": self.failed, "files": self.files, "splits": self.splits}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PartRecord":
        return cls(str(d["name"]), int(d["rows"]), int(d["items"]), int(d["embedded"]), int(d["failed"]),
                   dict(d.get("files", {})), dict(d.get("splits", {})))


def _save_npy(path: str, array: np.ndarray) -> dict[str, Any]:
    with open(path, "wb") as f:
        hw = HashingWriter(f)
        np.lib.format.write_array(hw, np.ascontiguousarray(array), allow_pickle=False)  # type: ignore[arg-type]
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hw.sha256.hexdigest(), "bytes": hw.size, "shape": list(array.shape),
            "dtype": str(array.dtype)}


def _save_table(path: str, table: pa.Table) -> dict[str, Any]:
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    from .fsutil import sha256_file

    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def write_part(store_dir: str, name: str, features: Mapping[str, np.ndarray], rows: pa.Table,
               ledger: pa.Table) -> PartRecord:
    """Write a part durably and move it into ``parts/`` (not yet visible: see Manifest.commit).

    ``features`` maps layer keys to rows x dims arrays aligned with ``rows``; when ``rows`` is
    empty (every input of the part failed) no feature file is written.
    """
    n = rows.num_rows
    for key, arr in features.items():
        if arr.shape[0] != n:
            raise StoreError(f"layer {key}: {arr.shape[0]} feature rows for {n} metadata rows")
    tmp_root = os.path.join(store_dir, layout.TMP_DIR)
    tmp = os.path.join(tmp_root, f"{name}-{uuid.uuid4().hex[:8]}")
    final = os.path.join(store_dir, layout.PARTS_DIR, name)
    with environment_errors(f"writing part {name} of {store_dir}"):
        try:
            os.makedirs(tmp)
            files: dict[str, dict[str, Any]] = {}
            if n:
                for key, arr in features.items():
                    files[f"{key}.npy"] = _save_npy(os.path.join(tmp, f"{key}.npy"), arr)
                files[layout.ROWS_FILE] = _save_table(os.path.join(tmp, layout.ROWS_FILE), rows)
            files[layout.LEDGER_FILE] = _save_table(os.path.join(tmp, layout.LEDGER_FILE), ledger)
            fsync_dir(tmp)
            _test_pause("before_rename")
            if os.path.exists(final):  # an orphan of a crashed run that never reached the manifest
                remove_tree(final)
            os.rename(tmp, final)
            fsync_dir(os.path.join(store_dir, layout.PARTS_DIR))
        except BaseException:
            remove_tree(tmp)
            raise
    statuses = ledger.column("status").to_pylist()
    splits: dict[str, int] = {}
    for s in rows.column("split").to_pylist() if n else []:
        splits[s or ""] = splits.get(s or "", 0) + 1
    return PartRecord(name=name, rows=n, items=ledger.num_rows, embedded=statuses.count("embedded"),
                      failed=statuses.count("failed"), files=files, splits=splits)


class Manifest:
    """The list of committed parts; the single source of truth for readers."""

    def __init__(self, store_dir: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Load and check the manifest (:func:`deepfeat.store.trust.check_manifest`).

        ``metadata`` is the store's checked metadata document; when omitted it is read from the
        store if there is one, so that file names and sizes are checked against its layers.
        """
        self.store_dir = store_dir
        self.path = os.path.join(store_dir, layout.MANIFEST_FILE)
        self.parts: list[PartRecord] = []
        if metadata is None and os.path.lexists(os.path.join(store_dir, layout.METADATA_FILE)):
            metadata = trust.check_metadata(trust.read_store_json(store_dir, layout.METADATA_FILE))
        layers = itemsize = None
        if metadata is not None:
            layers = {d["key"]: int(d["dims"]) for d in metadata["layers"]}
            itemsize = np.dtype(str(metadata["dtype"])).itemsize
        if os.path.lexists(self.path):
            doc = trust.read_store_json(store_dir, layout.MANIFEST_FILE)
            self.parts = [PartRecord.from_dict(p) for p in trust.check_manifest(doc, layers, itemsize)]

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.parts}

    def next_index(self) -> int:
        return max((int(p.name) for p in self.parts if p.name.isdigit()), default=-1) + 1

    def commit(self, record: PartRecord) -> None:
        """Make a written part visible (temp + rename of the manifest)."""
        if record.name in self.names:
            raise StoreError(f"part {record.name} is already committed")
        _test_pause("before_manifest")
        self.parts.append(record)
        try:
            self.save()
        except BaseException:
            self.parts.pop()
            raise

    def save(self) -> None:
        atomic_write_json(self.path, {"format": layout.FORMAT_NAME, "format_version": layout.FORMAT_VERSION,
                                      "parts": [p.to_dict() for p in self.parts]})


def clean_uncommitted(store_dir: str, manifest: Manifest) -> list[str]:
    """Remove temp parts and part directories the manifest does not list (I6)."""
    removed: list[str] = []
    tmp_root = os.path.join(store_dir, layout.TMP_DIR)
    if os.path.isdir(tmp_root):
        for entry in os.listdir(tmp_root):
            remove_tree(os.path.join(tmp_root, entry))
            removed.append(os.path.join(layout.TMP_DIR, entry))
    parts_dir = os.path.join(store_dir, layout.PARTS_DIR)
    if os.path.isdir(parts_dir):
        known = manifest.names
        for entry in os.listdir(parts_dir):
            if entry not in known:
                remove_tree(os.path.join(parts_dir, entry))
                removed.append(os.path.join(layout.PARTS_DIR, entry))
    for entry in os.listdir(store_dir):
        if entry.startswith(".") and ".tmp-" in entry:
            os.unlink(os.path.join(store_dir, entry))
            removed.append(entry)
    if removed:
        log.info("removed %d uncommitted leftovers of an interrupted run", len(removed))
    return removed

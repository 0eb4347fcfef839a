"""Writing one immutable part of a store, and committing it to the manifest.

A part is written under ``.tmp/``, every file fsync'd, the directory renamed into
``parts/`` and fsync'd; only then is it committed: one fsync'd line appended to the commit log
``manifest.log``, or ``manifest.json`` rewritten (temp + rename) -- see :class:`Manifest`. A
crash at any moment leaves the part either uncommitted (redone on resume) or committed.
Workers (local or Ray) call :func:`write_part`; one place -- the runner -- calls
:meth:`Manifest.commit`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import StoreError
from . import layout
from .fsutil import HashingWriter, environment_errors, fsync_dir, remove_tree, sha256_file
from .manifest import Manifest, PartRecord  # noqa: F401 - re-exported: writers commit through the manifest

log = logging.getLogger(__name__)


def _save_npy(path: str, array: np.ndarray) -> dict[str, Any]:
    with open(path, "wb") as f:
        hw = HashingWriter(f)
        np.lib.format.write_array(hw, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hw.sha256.hexdigest(), "bytes": hw.size, "shape": list(array.shape), "dtype": str(array.dtype)}


def _save_table(path: str, table: pa.Table) -> dict[str, Any]:
    pq.write_table(table, path, compression="zstd")
    with open(path, "rb+") as f:
        os.fsync(f.fileno())

    return {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}


def write_part(
    store_dir: str, name: str, features: Mapping[str, np.ndarray], rows: pa.Table, ledger: pa.Table
) -> PartRecord:
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
    with environment_errors(f"writing part {name} of {store_dir}", resumable=True):
        try:
            os.makedirs(tmp)
            files: dict[str, dict[str, Any]] = {}
            if n:
                for key, arr in features.items():
                    files[f"{key}.npy"] = _save_npy(os.path.join(tmp, f"{key}.npy"), arr)
                files[layout.ROWS_FILE] = _save_table(os.path.join(tmp, layout.ROWS_FILE), rows)
            files[layout.LEDGER_FILE] = _save_table(os.path.join(tmp, layout.LEDGER_FILE), ledger)
            fsync_dir(tmp)
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
    return PartRecord(
        name=name,
        rows=n,
        items=ledger.num_rows,
        embedded=statuses.count("embedded"),
        failed=statuses.count("failed"),
        files=files,
        splits=splits,
    )


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

"""Creating, opening for append, and starting over a store -- with the config fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigMismatchError, StoreError
from . import layout, trust
from .fsutil import atomic_write_json, environment_errors, remove_tree
from .manifest import Manifest

log = logging.getLogger(__name__)


def fingerprint(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of everything that determines a stored vector."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def describe_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable list of keys whose values differ between two configs."""
    diffs: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key == "layers" and isinstance(a, list) and isinstance(b, list):

            def fmt(ls: list[Any]) -> str:
                return ",".join(f"{d.get('name')}[{d.get('pool')}]" for d in ls if isinstance(d, dict))

            if fmt(a) != fmt(b):
                diffs.append(f"{prefix}layers: {fmt(a)} -> {fmt(b)}")
            elif a != b:
                diffs.append(f"{prefix}layers: shapes differ (input size?)")
        elif isinstance(a, dict) and isinstance(b, dict):
            diffs.extend(describe_difference(a, b, f"{prefix}{key}."))
        elif a != b:
            diffs.append(f"{prefix}{key}: {json.dumps(a)[:80]} -> {json.dumps(b)[:80]}")
    return diffs


def prepare_store_dir(path: str, config: dict[str, Any], metadata: dict[str, Any], overwrite: bool) -> bool:
    """Create the store, or check that an existing one has the same config (the caller holds the lock).

    Returns True when the store already held committed data (a resume).
    Raises ConfigMismatchError when the config differs and ``overwrite`` is False.
    """
    meta_path = os.path.join(path, layout.METADATA_FILE)
    fp = fingerprint(config)
    if os.path.lexists(meta_path):
        try:
            old = trust.read_store_json(path, layout.METADATA_FILE)  # inside the store, bounded
            if not isinstance(old, dict):
                raise StoreError(f"{layout.METADATA_FILE} is not a JSON object")
        except StoreError as exc:
            if not overwrite:
                raise StoreError(
                    f"{meta_path} is unreadable ({exc}); pass overwrite=True / --overwrite to start over."
                ) from None
            old = {}
        if old.get("fingerprint") == fp:
            return True
        if not overwrite:
            old_config = old.get("config")
            diff = describe_difference(old_config if isinstance(old_config, dict) else {}, config)
            raise ConfigMismatchError(
                f"The store {path!r} was written with a different configuration ({'; '.join(diff[:6]) or 'fingerprint'}). "
                "Use another --out, or pass --overwrite to delete it and start over."
            )
        log.warning("overwrite: deleting the existing store contents of %s", path)
        wipe_store(path)
    elif overwrite:
        wipe_store(path)
    with environment_errors(f"creating the store {path}", resumable=True):
        os.makedirs(os.path.join(path, layout.PARTS_DIR), exist_ok=True)
        os.makedirs(os.path.join(path, layout.TMP_DIR), exist_ok=True)
        meta = dict(metadata)
        meta.update(
            {
                "format": layout.FORMAT_NAME,
                "format_version": layout.FORMAT_VERSION,
                "config": config,
                "fingerprint": fp,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
        )
        atomic_write_json(meta_path, meta)

        manifest = Manifest(path)
        if not os.path.exists(manifest.path):
            manifest.save()
    return False


def wipe_store(path: str) -> None:
    """Delete a store's data files (never anything that is not part of a store)."""
    for name in (layout.METADATA_FILE, layout.MANIFEST_FILE, layout.COMMIT_LOG_FILE, layout.EXCLUDED_FILE):
        p = os.path.join(path, name)
        if os.path.exists(p):
            os.unlink(p)
    for name in (layout.PARTS_DIR, layout.TMP_DIR):
        remove_tree(os.path.join(path, name))


def write_excluded(path: str, table: pa.Table) -> None:
    """Atomically replace the store's list of inputs excluded at discovery."""
    final = os.path.join(path, layout.EXCLUDED_FILE)
    tmp = os.path.join(path, layout.TMP_DIR, f"excluded-{os.getpid()}.parquet")
    with environment_errors("writing the excluded-inputs list", resumable=True):
        pq.write_table(table.cast(layout.LEDGER_SCHEMA), tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)

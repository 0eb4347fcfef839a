"""The manifest: which parts a store has committed (``manifest.json`` plus the append-only commit
log ``manifest.log``), read and written in this one place. See docs/STORE_FORMAT.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import StoreError
from . import layout, trust
from .fsutil import atomic_write_json, environment_errors, fsync_dir

log = logging.getLogger(__name__)


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
    #: the containers (shards, Parquet files) this part holds inputs of, by key
    #: (:meth:`~deepfeat.sources.table.ItemTable.container_keys`), each True when this part's commit
    #: finished it; empty when the part holds inputs of a container without a key (then a resume reads
    #: its ledger) or was written before this field (docs/STORE_FORMAT.md)
    containers: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "name": self.name,
            "rows": self.rows,
            "items": self.items,
            "embedded": self.embedded,
            "failed": self.failed,
            "files": self.files,
            "splits": self.splits,
        }
        if self.containers:
            d["containers"] = self.containers
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PartRecord":
        return cls(
            str(d["name"]),
            int(d["rows"]),
            int(d["items"]),
            int(d["embedded"]),
            int(d["failed"]),
            dict(d.get("files", {})),
            dict(d.get("splits", {})),
            {str(k): bool(v) for k, v in dict(d.get("containers", {})).items()},
        )


def _token(parts: list[PartRecord]) -> str:
    """The token of a manifest.json listing ``parts``: sha256 of the names and file checksums, in order (16 hex)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.name.encode())
        for fname in sorted(p.files):
            h.update(f"/{fname}:{p.files[fname].get('sha256')}".encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class Manifest:
    """The list of committed parts; the single source of truth for readers.

    The committed parts are those of ``manifest.json`` followed by those of its commit log,
    ``manifest.log`` (docs/STORE_FORMAT.md). A commit appends one fsync'd, checksummed line to
    the log -- its cost does not grow with the store -- and once the log holds more than
    1/:attr:`compact_ratio` as many parts as ``manifest.json``, the next commit rewrites
    ``manifest.json`` with every part instead (temp + rename, the commit point) and removes the
    log. So a commit costs O(1) amortised, a load reads at most ~1/16 of the parts from the log,
    and a store of up to 16 parts (and any store at the end of an extraction: :meth:`compact`)
    is a plain ``manifest.json`` as in earlier versions.

    Each ``manifest.json`` written here carries a token (``"log"``: a digest of its part names and
    file checksums, so equal manifests are equal files) and every log line the token of the
    manifest it extends; lines with another token were folded into the manifest already (a crash
    between the rename and the removal of the log: the new manifest lists more parts, so its
    token differs) and are ignored, as is a torn last line (a crash during an append). A
    manifest without a token (a store of an earlier deepfeat) has no log. Only this class reads
    or writes these two files.
    """

    #: The log may hold up to 1/compact_ratio as many parts as manifest.json; 0 rewrites
    #: manifest.json at every commit (the protocol of earlier versions; benchmarks compare both).
    compact_ratio: int = 16

    def __init__(self, store_dir: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Load and check the manifest and its commit log (:mod:`deepfeat.store.trust`).

        ``metadata`` is the store's checked metadata document; when omitted it is read from the
        store if there is one, so that file names and sizes are checked against its layers.
        """
        self.store_dir = store_dir
        self.path = os.path.join(store_dir, layout.MANIFEST_FILE)
        self.log_path = os.path.join(store_dir, layout.COMMIT_LOG_FILE)
        self.parts: list[PartRecord] = []
        self._token: str | None = None  # the token of manifest.json; None: it has no log
        self._compacted = 0  # parts listed in manifest.json
        self._logged = 0  # parts listed in the log
        self._log_dirty = False  # the log has a torn line or stale lines: rewrite before appending
        self._names: set[str] = set()  # of self.parts, for the O(1) duplicate check of a commit
        if metadata is None and os.path.lexists(os.path.join(store_dir, layout.METADATA_FILE)):
            metadata = trust.check_metadata(trust.read_store_json(store_dir, layout.METADATA_FILE))
        layers = itemsize = None
        if metadata is not None:
            layers = {d["key"]: int(d["dims"]) for d in metadata["layers"]}
            itemsize = np.dtype(str(metadata["dtype"])).itemsize
        if os.path.lexists(self.path):
            doc = trust.read_store_json(store_dir, layout.MANIFEST_FILE)
            self.parts = [PartRecord.from_dict(p) for p in trust.check_manifest(doc, layers, itemsize)]
            self._token = doc.get("log")
            self._compacted = len(self.parts)
            self._names = self.names
        data = trust.read_commit_log(store_dir)
        if data is None:
            return
        self._log_dirty = True
        if self._token is None:
            log.info("%s: ignoring %s (%s has no commit log)", store_dir, layout.COMMIT_LOG_FILE, layout.MANIFEST_FILE)
            return
        found = trust.check_commit_log(data, self._token, (p.name for p in self.parts), layers, itemsize)
        self.parts.extend(PartRecord.from_dict(p) for p in found.parts)
        self._names = self.names
        self._logged = len(found.parts)
        self._log_dirty = bool(found.torn or found.stale)
        if found.torn:
            log.warning(
                "%s: ignoring the last line of %s, cut short by a crash or still being written (%s); "
                "a resume redoes its part",
                store_dir,
                layout.COMMIT_LOG_FILE,
                found.torn,
            )

    @property
    def names(self) -> set[str]:
        return {p.name for p in self.parts}

    def next_index(self) -> int:
        return max((int(p.name) for p in self.parts if p.name.isdigit()), default=-1) + 1

    def commit(self, record: PartRecord) -> None:
        """Make a written part visible: one line appended to the log, or a rewrite of manifest.json."""
        if len(self._names) != len(self.parts):  # parts changed by the caller (the Ray driver sorts them)
            self._names = self.names
        if record.name in self._names:
            raise StoreError(f"part {record.name} is already committed")
        self.parts.append(record)
        try:
            if (
                self._token is None
                or self._log_dirty
                or self.compact_ratio <= 0
                or (self._logged + 1) * self.compact_ratio > self._compacted
            ):
                self.save()
            else:
                self._append(record)
        except BaseException:
            self.parts.pop()
            raise
        self._names.add(record.name)

    def compact(self) -> None:
        """Fold the commit log into manifest.json (writers call it at the end of a run); a no-op when there is none."""
        if self._logged or self._log_dirty or self._token is None or not os.path.exists(self.path):
            self.save()

    def save(self) -> None:
        """Rewrite manifest.json with every part (temp + rename) and its token, then remove the log."""
        token = _token(self.parts)
        atomic_write_json(
            self.path,
            {
                "format": layout.FORMAT_NAME,
                "format_version": layout.FORMAT_VERSION,
                "log": token,
                "parts": [p.to_dict() for p in self.parts],
            },
        )
        self._token, self._compacted, self._logged = token, len(self.parts), 0
        self._names = self.names
        try:
            os.unlink(self.log_path)
        except FileNotFoundError:
            pass
        except OSError as exc:  # its lines carry the old token: harmless, removed by the next rewrite
            log.warning("could not remove %s (%s); its lines are already in %s", self.log_path, exc, layout.MANIFEST_FILE)
            self._log_dirty = True
            return
        self._log_dirty = False

    def _append(self, record: PartRecord) -> None:
        """Append the record's line to the log and fsync it (the commit point of this commit)."""
        body = json.dumps({"log": self._token, "part": record.to_dict()}, separators=(",", ":")).encode()
        line = f"{trust.log_line_digest(body)} ".encode() + body + b"\n"
        with environment_errors(f"appending to {self.log_path}", resumable=True):
            fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except BaseException:
                    self._log_dirty = True  # a partial line would sit before the next one: rewrite instead
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)
            if size == 0:
                fsync_dir(self.store_dir)  # the log's directory entry is durable too
        self._logged += 1

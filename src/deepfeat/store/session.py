"""The store writer's lifecycle, written once: lock, prepare (create / resume / start over), clean
what an earlier run left uncommitted, commit parts, and close -- with SIGTERM handled like Ctrl-C.

Every job that writes a store (``extract``, ``fne``) goes through :class:`StoreWriter`; engines
receive it and call :meth:`StoreWriter.commit` part by part.

Example:
    >>> with StoreWriter("feats/") as w:                      # doctest: +SKIP
    ...     resumed = w.open(config, metadata, overwrite=False)
    ...     todo = [it for it in items if it.id not in w.done_ids()]
    ...     w.commit(write_part("feats/", "part-000000", feats, rows, ledger))
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from ..errors import UsageError
from . import layout, trust
from .create import prepare_store_dir, write_excluded
from .fsutil import atomic_write_json
from .lock import StoreLock
from .manifest import Manifest, PartRecord
from .reader import FeatureStore
from .writer import clean_uncommitted

log = logging.getLogger(__name__)

__all__ = ["StoreWriter", "sigterm_as_interrupt"]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM behaves like Ctrl-C: the part in progress is discarded, the lock released."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class StoreWriter:
    """Owns a store directory while a job writes it (a context manager).

    ``__enter__`` creates the folder, takes the lock and makes SIGTERM an interrupt; :meth:`open`
    checks or writes the configuration (refusing another one unless ``overwrite``) and removes
    files of parts that were never committed; :meth:`commit` adds a written part atomically; a
    clean ``__exit__`` folds the commit log into ``manifest.json``; every exit releases the lock.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.manifest: Manifest | None = None
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "StoreWriter":
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"The output {self.path!r} exists and is not a directory.")
        os.makedirs(self.path, exist_ok=True)
        stack = contextlib.ExitStack()
        try:
            stack.enter_context(StoreLock(self.path))
            stack.enter_context(sigterm_as_interrupt())
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None and self.manifest is not None:
                self.manifest.compact()  # a finished store lists every part in manifest.json
        finally:
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    # -- lifecycle ------------------------------------------------------------------------
    def open(self, config: Mapping[str, Any], metadata: Mapping[str, Any], overwrite: bool = False) -> bool:
        """Create the store, or resume it when its config matches; returns True on a resume.

        Raises:
            ConfigMismatchError: the store holds another configuration and ``overwrite`` is False.
        """
        if self._stack is None:
            raise RuntimeError("StoreWriter.open() needs the writer entered ('with StoreWriter(path) as w:')")
        resumed = prepare_store_dir(self.path, dict(config), dict(metadata), overwrite)
        self.manifest = Manifest(self.path)
        removed = clean_uncommitted(self.path, self.manifest)
        if removed:
            log.info("removed %d uncommitted file(s) of an interrupted run", len(removed))
        return resumed

    def _manifest(self) -> Manifest:
        if self.manifest is None:
            raise RuntimeError("StoreWriter.open() must come first")
        return self.manifest

    def update_metadata(self, **fields: Any) -> None:
        """Replace top-level metadata fields (same config; atomic), e.g. a checksum known only later."""
        self._manifest()
        doc = trust.read_store_json(self.path, layout.METADATA_FILE)
        doc.update(fields)
        atomic_write_json(os.path.join(self.path, layout.METADATA_FILE), doc)

    def write_excluded(self, table: pa.Table) -> None:
        """The inputs excluded at discovery (``excluded.parquet``, replaced atomically)."""
        self._manifest()
        write_excluded(self.path, table)

    def done_ids(self) -> set[str]:
        """Ids of every input the committed parts record: what this run skips."""
        return {i for chunk in self.done_id_chunks() for i in chunk.to_pylist()}

    def done_id_chunks(self, parts: Iterable[PartRecord] | None = None) -> Iterator[pa.Array]:
        """The ids of :meth:`done_ids` as Arrow string arrays, one ledger at a time (no Python object per id);
        only those of ``parts`` when given."""
        self._manifest()
        return FeatureStore(self.path, verify=False).done_id_chunks(parts)

    @property
    def part_names(self) -> set[str]:
        return self._manifest().names

    def next_index(self) -> int:
        """The number of the next part to write."""
        return self._manifest().next_index()

    def commit(self, record: PartRecord) -> None:
        """Commit one written part (atomic: after this, a crash keeps it; before, a rerun redoes it)."""
        self._manifest().commit(record)

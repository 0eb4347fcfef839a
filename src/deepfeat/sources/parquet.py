"""Parquet files with a column of image bytes (or of image paths).

The image column (``image_field``; default: the one binary column, or a struct column with a
``bytes`` field such as Hugging Face's ``Image``) holds encoded images; a string column holds
paths instead (relative to the Parquet file's folder), which are then read as files. ``id_field``
names a column of unique ids (default: ``<file>#<row number>``), ``label_field`` a label column
(default: a column named ``label`` when there is one), ``split_field`` a split column.

Discovery reads only the id, label and split columns, one row group at a time, never an image
and never a whole file; workers read an image column one row group at a time (see
:mod:`deepfeat.data.read`). A file that is not Parquet is an ``unreadable_shard`` exclusion;
a repeated id a ``duplicate`` one; an empty image cell fails its row in the ledger.

A URL (``s3://lake/*.parquet``, ``gs://...``) is read through :mod:`deepfeat.data.remote`: footers and
column chunks by ranged, retried reads; a file that stays unreadable is an ``unreadable_shard``
exclusion. A path column of a remote file names objects relative to the file's folder URL.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterable
from typing import Any, ClassVar

from ..data import remote
from ..errors import EnvironmentFault, UsageError
from .base import register_source
from .items import IMAGE_EXTENSIONS, Discovery, ExcludedItem, SourceItem, id_digest, normalize_split
from .table import Container, PathRows, TableBuilder

log = logging.getLogger(__name__)

__all__ = ["ParquetSource"]

_EXTENSIONS = (".parquet", ".pq")


def _folder_files(folder: str) -> list[str] | None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    files = [e.path for e in entries if e.name.lower().endswith(_EXTENSIONS) and not e.name.startswith(".")]
    if not files or any(os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS for e in entries):
        return None
    return sorted(files, key=os.fsencode)


def _image_column(schema: Any, wanted: str | None, path: str) -> tuple[str, str | None, bool]:
    """(column, struct field or None, holds paths) of the image column."""
    import pyarrow as pa

    def kind(t: Any) -> tuple[str | None, bool] | None:
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return None, False
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            return "bytes", False
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return None, True
        return None

    if wanted is not None:
        if wanted not in schema.names:
            raise UsageError(f"{path!r} has no column {wanted!r} (--image-column); its columns: {', '.join(schema.names)}.")
        found = kind(schema.field(wanted).type)
        if found is None:
            raise UsageError(
                f"The column {wanted!r} of {path!r} holds {schema.field(wanted).type}, not image bytes "
                "(binary, a struct with a 'bytes' field) or paths (string)."
            )
        return wanted, found[0], found[1]
    candidates = [(n, kind(schema.field(n).type)) for n in schema.names]
    binary = [(n, k) for n, k in candidates if k is not None and not k[1]]
    if len(binary) == 1:
        return binary[0][0], binary[0][1][0], False
    named = [n for n in ("image", "img", "jpg", "path", "file") if n in schema.names and kind(schema.field(n).type)]
    if named:
        k = kind(schema.field(named[0]).type)
        assert k is not None
        return named[0], k[0], k[1]
    raise UsageError(
        f"Cannot tell which column of {path!r} holds the images (columns: {', '.join(schema.names)}); "
        "name it with --image-column."
    )


def _read_group(pf: Any, rg: int, columns: list[str], path: str) -> dict[str, list[Any]]:
    """The ``columns`` of one row group; an object store still failing after its retries stops the run."""
    try:
        return dict(pf.read_row_group(rg, columns=columns).to_pydict())
    except remote.RemoteError as exc:
        raise EnvironmentFault(f"cannot read row group {rg} of {path}: {exc.message}") from exc


def _text(value: Any) -> str | None:
    if value is None:
        return None
    s = str(value).strip()
    return s or None


class ParquetRows(Container):
    """The rows of one Parquet file with an image-bytes column: ``a`` is the row group, ``b`` the row in
    it, ``text`` the id of ``id_field`` (None: the id is ``<file>#<row of the file>``)."""

    def __init__(self, path: str, rel: str, column: str, field: str | None, starts: list[int]) -> None:
        self.path, self.rel, self.column, self.field, self.starts = path, rel, column, field, starts
        self.group = path

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        row = self.starts[a] + b
        name = text if text is not None else str(row)
        return SourceItem(
            id=iid,
            path=f"{self.path}#{name}",
            relpath=text if text is not None else f"{self.rel}#{row}",
            label=label,
            split=split,
            size=0,
            ref=("parquet", self.path, a, b, self.column, self.field),
            group=self.path,
        )


@register_source
class ParquetSource:
    """Parquet files: a path, a glob, or a folder of ``*.parquet`` files.

    Example:
        >>> d = ParquetSource("lake/*.parquet", image_field="jpg", label_field="label").discover()  # doctest: +SKIP
    """

    kind: ClassVar[str] = "parquet"
    OPTIONS: ClassVar[tuple[str, ...]] = ("image_field", "id_field", "label_field", "split_field", "split")

    def __init__(
        self,
        spec: str,
        image_field: str | None = None,
        id_field: str | None = None,
        label_field: str | None = None,
        split_field: str | None = None,
        split: str | None = None,
    ) -> None:
        self.spec = spec
        self.image_field, self.id_field = image_field, id_field
        self.label_field, self.split_field = label_field, split_field
        self.split = normalize_split(split)

    @classmethod
    def claims(cls, spec: str) -> bool:
        if spec.lower().endswith(_EXTENSIONS):
            return True
        return os.path.isdir(spec) and _folder_files(spec) is not None

    def files(self) -> list[str]:
        if remote.is_url(self.spec):
            found, missing = remote.expand([self.spec])
            if missing:
                raise UsageError(f"The source {self.spec!r} does not exist.")
            return found
        if os.path.isdir(self.spec):
            return _folder_files(self.spec) or []
        if glob.has_magic(self.spec):
            return [os.path.abspath(p) for p in sorted(glob.glob(self.spec), key=os.fsencode)]
        if not os.path.exists(self.spec):
            raise UsageError(f"The source {self.spec!r} does not exist.")
        return [os.path.abspath(self.spec)]

    def discover(self, *, skip_dirs: Iterable[str | os.PathLike[str]] = ()) -> Discovery:
        import pyarrow.parquet as pq

        files = self.files()
        if not files:
            raise UsageError(f"No Parquet file matches {self.spec!r}.")
        root = (
            remote.common_root(files) if remote.is_url(files[0]) else os.path.commonpath([os.path.dirname(f) for f in files])
        )
        items = TableBuilder()
        paths = items.container(PathRows())  # rows whose column names image files
        excluded: list[ExcludedItem] = []
        seen: dict[bytes, int] = {}  # id digest -> file index: only with id_field (else ids are unique by construction)
        for index, path in enumerate(files):
            url = remote.is_url(path)
            rel = remote.relpath(path, root) if url else os.path.relpath(path, root).replace(os.sep, "/")
            try:
                pf = pq.ParquetFile(remote.open_object(path) if url else path)
            except remote.RemoteError as exc:
                excluded.append(
                    ExcludedItem(path, "missing" if exc.reason == "missing" else "unreadable_shard", exc.message)
                )
                continue
            except Exception as exc:  # noqa: BLE001 - not Parquet, cut, unreadable: this file only
                excluded.append(ExcludedItem(path, "unreadable_shard", f"not a readable Parquet file: {exc}"))
                continue
            schema = pf.schema_arrow
            column, field, holds_paths = _image_column(schema, self.image_field, path)
            label_col = self.label_field or ("label" if "label" in schema.names else None)
            for name, flag in (
                (self.id_field, "--id-column"),
                (label_col, "--label-column"),
                (self.split_field, "--split-column"),
            ):
                if name is not None and name not in schema.names:
                    raise UsageError(f"{path!r} has no column {name!r} ({flag}); its columns: {', '.join(schema.names)}.")
            wanted = [
                c for c in dict.fromkeys([self.id_field, label_col, self.split_field, column if holds_paths else None]) if c
            ]
            starts = [0]
            for rg in range(pf.num_row_groups):
                starts.append(starts[-1] + pf.metadata.row_group(rg).num_rows)
            cells = items.container(ParquetRows(path, rel, column, field, starts[:-1]))
            for rg in range(pf.num_row_groups):
                row_base, n = starts[rg], starts[rg + 1] - starts[rg]
                cols = _read_group(pf, rg, wanted, path) if wanted else {}
                for r in range(n):
                    row = row_base + r
                    ident = _text(cols[self.id_field][r]) if self.id_field else None
                    where = f"{path}#{ident if ident is not None else row}"
                    relpath = ident if ident is not None else f"{rel}#{row}"
                    if self.id_field and ident is None:
                        excluded.append(ExcludedItem(where, "missing", f"row {row} has no id in {self.id_field!r}"))
                        continue
                    if self.id_field:
                        digest = id_digest(relpath)
                        first = seen.get(digest)
                        if first is not None:
                            excluded.append(
                                ExcludedItem(
                                    where, "duplicate", f"the id {ident!r} was already used by {files[first]}#{ident}"
                                )
                            )
                            continue
                        seen[digest] = index
                    label = _text(cols[label_col][r]) if label_col else None
                    split = normalize_split(_text(cols[self.split_field][r])) if self.split_field else None
                    if holds_paths:
                        rel_image = cols[column][r]
                        if not rel_image:
                            excluded.append(ExcludedItem(where, "no_image", f"row {row} has an empty {column!r}"))
                            continue
                        if url:  # checked when read: a missing object fails as vanished
                            items.add(
                                paths,
                                relpath,
                                label=label,
                                split=split or self.split,
                                size=0,
                                text=relpath,
                                text2=remote.join(os.path.dirname(path), rel_image),
                            )
                            continue
                        full = os.path.normpath(os.path.join(os.path.dirname(path), rel_image))
                        if not os.path.isfile(full):
                            excluded.append(ExcludedItem(full, "missing", f"row {row}: no such image file"))
                            continue
                        items.add(
                            paths,
                            relpath,
                            label=label,
                            split=split or self.split,
                            size=os.path.getsize(full),
                            text=relpath,
                            text2=full,
                        )
                        continue
                    items.add(cells, relpath, label=label, split=split or self.split, a=rg, b=r, text=ident)
        table = items.build()
        log.info(
            "discovered %d rows in %d Parquet files (%d excluded) under %s", len(table), len(files), len(excluded), root
        )
        return Discovery(root=root, layout=self.kind, items=table, excluded=excluded)

    def __repr__(self) -> str:
        return f"ParquetSource({self.spec!r})"

"""Image files: a folder (class / split layouts) or a CSV/TXT list of paths.

Both walk the file system with :func:`deepfeat.sources.walk.walk`; each item's locator is its
path. A list file may be a URL (``s3://lake/train.csv``): its relative paths then name objects
next to it (an entry may be a URL itself), checked by listing their folders once.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from typing import ClassVar

from ..data import remote
from ..errors import EnvironmentFault, UsageError
from .base import register_source
from .items import LIST_EXTENSIONS, Discovery, ExcludedItem, normalize_split
from .table import PathRows, TableBuilder
from .walk import _finish, _read_rows, list_fields, walk

#: the largest list file read from a URL (it is read whole)
MAX_REMOTE_LIST_BYTES = 8 << 30


def discover_remote_list(url: str, default_split: str | None) -> Discovery:
    """The inputs of a list file at ``url``: the rows of a local list file, with objects for files."""
    try:
        data = remote.read_object(url, MAX_REMOTE_LIST_BYTES)
    except remote.RemoteError as exc:
        if exc.reason == "unavailable":
            raise EnvironmentFault(f"cannot read list file {url}: {exc.message}") from exc
        raise UsageError(f"cannot read list file {url}: {exc.message}") from exc
    base = url.rsplit("/", 1)[0]
    rows: list[tuple[str, str, str, str | None, str | None]] = []  # (full url, relpath, where, label, split)
    excluded: list[ExcludedItem] = []
    seen: dict[str, int] = {}
    for line_no, fields in list_fields(_read_rows(url, data)):
        written = fields.get("path", "").strip()
        if not written:
            excluded.append(ExcludedItem(f"{url}:{line_no}", "missing", "row has an empty path"))
            continue
        relpath = written if remote.is_url(written) else posixpath.normpath(written)
        full = remote.join(base, written)
        if relpath in seen:
            excluded.append(ExcludedItem(full, "duplicate", f"line {line_no} repeats the path of line {seen[relpath]}"))
            continue
        seen[relpath] = line_no
        rows.append(
            (
                full,
                relpath,
                f"line {line_no}",
                (fields.get("label") or "").strip() or None,
                normalize_split(fields.get("split")),
            )
        )
    found, missing = remote.expand([full for full, *_ in rows]) if rows else ([], [])
    gone = set(missing)
    items = TableBuilder()
    objects = items.container(PathRows())  # relpath (the id's) and the object's URL, per row
    for full, relpath, where, label, split in rows:
        if full in gone:
            excluded.append(ExcludedItem(full, "missing", f"{where}: no such object"))
            continue
        size = int(remote.info(full).get("size") or 0)
        items.add(
            objects,
            relpath,
            label=label,
            split=split if split is not None else normalize_split(default_split),
            size=size,
            text=relpath,
            text2=full,
        )
    return _finish(base, "list", items, excluded)


class _FileSource:
    kind: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[str, ...]] = ("split",)

    def __init__(self, path: str, split: str | None = None, symlinks_inside_root: bool = False) -> None:
        self.path = path
        self.split = split
        self.symlinks_inside_root = bool(symlinks_inside_root)

    def discover(self, *, skip_dirs: Iterable[str | os.PathLike[str]] = ()) -> Discovery:
        if remote.is_url(self.path):
            if self.kind != "list":
                raise UsageError(
                    f"{self.path!r}: deepfeat reads WebDataset shards (.tar), Parquet files and list "
                    "files (.csv/.txt) from object storage, not folders of images; list the images in a "
                    ".csv or .txt file next to them and pass that."
                )
            return discover_remote_list(self.path, self.split)
        return walk(self.path, default_split=self.split, skip_dirs=skip_dirs, symlinks_inside_root=self.symlinks_inside_root)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


@register_source
class ListSource(_FileSource):
    """A ``.csv``/``.txt`` file of ``path[,label[,split]]`` rows (paths relative to the file)."""

    kind: ClassVar[str] = "list"

    @classmethod
    def claims(cls, spec: str) -> bool:
        return os.path.splitext(spec)[1].lower() in LIST_EXTENSIONS and not os.path.isdir(spec)


@register_source
class FolderSource(_FileSource):
    """A folder of images: ``split/class/*``, ``class/*`` or flat (the layout is detected).

    Symlinks to files are followed wherever they point; ``symlinks_inside_root=True`` refuses those
    that resolve outside the folder (e.g. ``FolderSource("t", symlinks_inside_root=True)``).
    """

    kind: ClassVar[str] = "folder"
    OPTIONS: ClassVar[tuple[str, ...]] = ("split", "symlinks_inside_root")

    @classmethod
    def claims(cls, spec: str) -> bool:
        return True  # the last resort: discover() explains what is wrong with a path that is no folder

"""What every source produces: the items and exclusions of a :class:`Discovery`, and the ids.

A :class:`SourceItem` is one input (a file, a sample inside a shard, a Parquet row, a dataset row)
with its stable id (:func:`item_id`), label, split and a locator a decode worker reads
(:mod:`deepfeat.data.read`); an :class:`ExcludedItem` is an entry of the source that is not an
input, with one of :data:`EXCLUSION_REASONS`:

``hidden``                 name starts with ``.`` (hidden folders are not entered)
``not_regular_file``       FIFO, socket, device, a directory named like an image, or a symlink
                           to a directory (never followed)
``broken_symlink``         the symlink's target does not exist
``symlink_loop``           resolving the symlink loops (ELOOP)
``symlink_outside_root``   the symlink resolves outside the source folder (folders, and only
                           with ``symlinks_inside_root=True``)
``not_image_extension``    a regular file whose extension is not in :data:`IMAGE_EXTENSIONS`
                           (folders only: list files are explicit, their entries are kept)
``unreadable_dir``         a folder that cannot be listed
``unreadable``             an entry that cannot be stat'ed (permission denied, name too long)
``missing``                a list-file entry that does not exist
``duplicate``              a list-file entry naming the same path as an earlier row
``no_image``               a WebDataset sample or a table row without an image (see :mod:`deepfeat.sources`)
``truncated_shard``        a sample of a tar shard that ends before the sample does
``unreadable_shard``       a shard or table file that cannot be opened or is not a tar / Parquet file
``layout``                 (no longer produced: files beside class folders are embedded unlabeled;
                           kept so that ledgers of older stores still read)

Paths are ``str`` decoded with :func:`os.fsdecode` (surrogateescape), so names that are not
valid UTF-8 survive: ``os.fsencode(item.path)`` gives back the original bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "EXCLUSION_REASONS",
    "LIST_EXTENSIONS",
    "SourceItem",
    "ExcludedItem",
    "Discovery",
    "item_id",
    "id_digest",
    "normalize_split",
]

#: File extensions (lower-case, with the dot) that a folder walk treats as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif", ".mpo"}
)
#: Top-level folder names that make a folder a ``split_class`` layout (case-insensitive).
SPLIT_NAMES: frozenset[str] = frozenset({"train", "val", "valid", "validation", "test"})
_SPLIT_ALIASES = {"valid": "val", "validation": "val"}
#: Every ``ExcludedItem.reason``.
EXCLUSION_REASONS: tuple[str, ...] = (
    "hidden",
    "not_regular_file",
    "broken_symlink",
    "symlink_loop",
    "symlink_outside_root",
    "not_image_extension",
    "unreadable_dir",
    "unreadable",
    "missing",
    "duplicate",
    "layout",
    "no_image",
    "truncated_shard",
    "unreadable_shard",
)
LIST_EXTENSIONS = (".csv", ".txt")


@dataclass(frozen=True)
class SourceItem:
    """One discovered input: a file, or a sample inside a shard, a Parquet file or a dataset."""

    id: str  #: blake2b(os.fsencode(relpath), digest_size=10).hexdigest()
    path: str  #: the file that holds exactly this image, or a locator such as ``shard.tar#key.jpg``
    relpath: str  #: path relative to the root ('/'-separated), as written for list files
    label: str | None
    split: str | None
    size: int  #: bytes, from stat at discovery (0 when unknown before reading)
    #: where the bytes are when ``path`` is not a file of its own (see :mod:`deepfeat.data.read`)
    ref: tuple[Any, ...] | None = None
    #: the container the item lives in (a shard, a Parquet file); parts keep containers whole
    group: str | None = None

    @property
    def locator(self) -> str | tuple[Any, ...]:
        """What a decode worker reads: the file path, or the container reference."""
        return self.path if self.ref is None else self.ref


@dataclass(frozen=True)
class ExcludedItem:
    """An entry of the source that is not an input, with the reason why."""

    path: str
    reason: str  #: one of :data:`EXCLUSION_REASONS`
    message: str


@dataclass
class Discovery:
    """What a source's ``discover()`` returns: every input, every exclusion, notes for the user."""

    root: str  #: absolute folder that relpaths are relative to (the list file's folder for lists)
    layout: str  #: "split_class" | "class" | "flat" | "list"
    #: every input: a :class:`~deepfeat.sources.table.ItemTable` from the built-in sources (columns, not
    #: objects), or a list from a custom source; either is a sequence of :class:`SourceItem`
    items: Sequence[SourceItem] = field(default_factory=list)
    excluded: list[ExcludedItem] = field(default_factory=list)
    #: warnings a user should see, e.g. about a mixed layout (images embedded without a label)
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels of the items (``None`` left out)."""
        used = getattr(self.items, "used_labels", None)
        return used() if used is not None else sorted({i.label for i in self.items if i.label is not None})

    @property
    def splits(self) -> list[str]:
        """Sorted distinct splits of the items (``None`` left out)."""
        used = getattr(self.items, "used_splits", None)
        return used() if used is not None else sorted({i.split for i in self.items if i.split is not None})


def id_digest(relpath: str) -> bytes:
    """The 10 bytes whose hex is :func:`item_id` (what an :class:`~deepfeat.sources.table.ItemTable` stores)."""
    return hashlib.blake2b(os.fsencode(relpath), digest_size=10).digest()


def item_id(relpath: str) -> str:
    """The stable id of an item: a 20-hex-digit blake2b of its relative path's bytes.

    Example:
        >>> item_id("cat/1.jpg") == item_id("cat/1.jpg")
        True
    """
    return hashlib.blake2b(os.fsencode(relpath), digest_size=10).hexdigest()


def normalize_split(split: str | None) -> str | None:
    """Lower-case known split names and map ``valid``/``validation`` to ``val``.

    Unknown names are kept as written (stripped); empty -> ``None``.

    Example:
        >>> normalize_split("Validation"), normalize_split("holdout"), normalize_split("")
        ('val', 'holdout', None)
    """
    if split is None:
        return None
    s = split.strip()
    if not s:
        return None
    low = s.lower()
    if low in SPLIT_NAMES:
        return _SPLIT_ALIASES.get(low, low)
    return s

"""Image files: a folder (class / split layouts) or a CSV/TXT list of paths.

Both walk the file system with :func:`deepfeat.sources.walk.walk`; each item's locator is its
path.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import ClassVar

from .base import register_source
from .items import LIST_EXTENSIONS, Discovery
from .walk import walk


class _FileSource:
    kind: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple[str, ...]] = ("split",)

    def __init__(self, path: str, split: str | None = None, symlinks_inside_root: bool = False) -> None:
        self.path = path
        self.split = split
        self.symlinks_inside_root = bool(symlinks_inside_root)

    def discover(self, *, skip_dirs: Iterable[str | os.PathLike] = ()) -> Discovery:
        return walk(self.path, default_split=self.split, skip_dirs=skip_dirs,
                        symlinks_inside_root=self.symlinks_inside_root)

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

"""The Source protocol, the registry and the source options (see :mod:`deepfeat.sources`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol, runtime_checkable

from ..registry import Registry
from .items import Discovery

#: Every option a source may take, with the CLI flag that sets it.
SOURCE_OPTIONS: dict[str, str] = {
    "split": "--split",
    "image_field": "--image-field/--image-column",
    "id_field": "--id-field/--id-column",
    "symlinks_inside_root": "--symlinks-inside-root",
    "label_field": "--label-field/--label-column",
    "split_field": "--split-field/--split-column",
}


@runtime_checkable
class Source(Protocol):
    """What every source does: discover its inputs, deterministically."""

    kind: ClassVar[str]

    def discover(self, *, skip_dirs: Iterable[str | os.PathLike[str]] = ()) -> Discovery:
        """Every input (sorted, stable ids) and every exclusion with its reason."""
        ...  # pragma: no cover - protocol


#: kind -> source class, in the order :func:`open_source` asks them to claim a spec.
SOURCES: Registry[type[Any]] = Registry("source", key="kind")  # classes with kind, OPTIONS, claims() (files.py)
#: class decorator: make a source available to :func:`open_source` under ``cls.kind``
register_source = SOURCES.register

"""Sources: where the images of a job come from, behind one interface.

A :class:`Source` turns what the user named into a :class:`~deepfeat.sources.items.Discovery`:
every input as a :class:`~deepfeat.sources.items.SourceItem` (stable id, label, split, and a
locator a decode worker can read) and everything not used as an exclusion with its reason.
The rest of the chain (planning, decoding, the runtimes, the store) never asks which source
it was.

=============  ==================================================  ===========================
kind           what                                                options
=============  ==================================================  ===========================
``folder``     ``root/<split>/<class>/*``, ``root/<class>/*``,     ``split``,
               a flat folder (see :mod:`deepfeat.sources.walk`)     ``symlinks_inside_root``
``list``       a ``.csv``/``.txt`` list of ``path[,label[,split]]``  ``split``
``webdataset`` ``.tar`` shards: a path, a glob, brace notation     ``label_field``,
               ``data/{00000..00099}.tar``, or a folder of shards  ``split_field``, ``split``,
                                                                   ``image_field``
``parquet``    Parquet files with an image-bytes (or path) column  ``image_field``, ``id_field``,
               (a file, a glob, or a folder of ``*.parquet``)      ``label_field``,
                                                                   ``split_field``, ``split``
``hf``         ``hf:PATH``: a Hugging Face dataset saved with      ``split``, ``image_field``,
               ``save_to_disk`` (needs the ``datasets`` extra)      ``label_field``, ``id_field``
=============  ==================================================  ===========================

Adding a source: a class with ``kind``, ``OPTIONS``, ``claims(spec)`` and ``discover()``,
decorated with :func:`register_source`; if its items need a new kind of locator, one reader in
:mod:`deepfeat.data.read`.

Example:
    >>> from deepfeat.sources import open_source
    >>> src = open_source("shards/{000..009}.tar", label_field="cls")      # doctest: +SKIP
    >>> d = src.discover(); d.layout, len(d.items)                           # doctest: +SKIP
    ('webdataset', 10000)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, cast

from ..errors import UsageError
from .base import SOURCE_OPTIONS, SOURCES, Source, register_source
from .items import ExcludedItem

__all__ = ["Source", "SOURCES", "SOURCE_OPTIONS", "discover", "expand_inputs", "register_source", "open_source"]


def _check_options(cls: type[Any], options: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(SOURCE_OPTIONS))
    if unknown:
        raise UsageError(f"Unknown source option(s) {', '.join(unknown)}; known: {', '.join(SOURCE_OPTIONS)}.")
    wrong = sorted(set(given) - set(cls.OPTIONS))
    if wrong:
        flags = ", ".join(SOURCE_OPTIONS[k] for k in wrong)
        raise UsageError(
            f"{flags} do{'es' if len(wrong) == 1 else ''} not apply to a {cls.kind} source "
            f"(it takes: {', '.join(SOURCE_OPTIONS[k] for k in cls.OPTIONS) or 'no options'})."
        )
    return given


def open_source(spec: str | os.PathLike[str] | Source, kind: str | None = None, **options: Any) -> Source:
    """The :class:`Source` for ``spec`` (a path, glob, brace pattern or ``hf:PATH``).

    ``kind`` forces a source kind; by default each registered source is asked in turn whether it
    claims ``spec`` (``hf:`` prefix, ``.tar`` shards, Parquet files, a list file, else a folder).
    ``options`` are the source options (:data:`SOURCE_OPTIONS`); one that does not apply to the
    chosen source is an error, never silently ignored.

    Raises:
        UsageError: an unknown kind, an option the source does not take, or a spec nothing claims.

    Example:
        >>> open_source("photos/").kind                                         # doctest: +SKIP
        'folder'
    """
    if isinstance(spec, Source):
        if any(v is not None for v in options.values()):
            raise UsageError("Source options go to the source's constructor when a Source object is given.")
        return spec
    text = os.fsdecode(os.fspath(spec))
    if kind is not None:
        if kind not in SOURCES:
            raise UsageError(f"Unknown source kind {kind!r}; known: {', '.join(SOURCES)}.")
        cls = SOURCES[kind]
    else:
        claimed = next((c for c in SOURCES.values() if c.claims(text)), None)
        if claimed is None:  # pragma: no cover - the folder source claims everything else
            raise UsageError(f"No source reads {text!r}.")
        cls = claimed
    return cast(Source, cls(text, **_check_options(cls, options)))


def discover(spec: str | os.PathLike[str] | Source, kind: str | None = None, **options: Any) -> Any:
    """Every input ``spec`` names, as extract sees them: ``open_source(spec, kind, **options).discover()``.

    Folders and list files, WebDataset shards, Parquet files and ``hf:`` datasets alike (the folder
    walker alone is :func:`deepfeat.sources.walk.walk`). Returns a
    :class:`~deepfeat.sources.items.Discovery`.

    Example:
        >>> d = discover("shards/{000..009}.tar", label_field="cls")   # doctest: +SKIP
        >>> d.layout, len(d.items)                                     # doctest: +SKIP
        ('webdataset', 10000)
    """
    return open_source(spec, kind, **options).discover()


def expand_inputs(
    inputs: Iterable[str | os.PathLike[str]], excluded: list[ExcludedItem] | None = None
) -> list[tuple[str, Any]]:
    """The images that ``inputs`` name, as ``(name, locator)`` pairs in order.

    An image file is itself; a folder is walked and a ``.txt``/``.csv`` list read by their sources, and
    WebDataset shards (a ``.tar``, a brace pattern or glob, a folder of shards), Parquet files and
    ``hf:`` datasets are enumerated by theirs (:func:`deepfeat.sources.open_source`): the name is then
    the item's place (``shard.tar#key.jpg``) and the locator where a decode worker reads it. Entries that
    discovery excludes, and paths that do not exist (reason ``missing``), are appended to ``excluded``
    (as ``ExcludedItem``) when given.

    Example:
        >>> expand_inputs(["cat.jpg", "shards/{000..009}.tar"])[:1]          # doctest: +SKIP
        [('cat.jpg', 'cat.jpg')]
    """
    out: list[tuple[str, Any]] = []
    for entry in inputs:
        p = os.fspath(entry)
        source = open_source(p)
        if source.kind == "folder" and not os.path.isdir(p):  # an image file (the folder source is the last resort)
            if os.path.exists(p) or excluded is None:
                out.append((p, p))
            else:
                excluded.append(ExcludedItem(p, "missing", "not found (no such file or folder)"))
            continue
        found = source.discover()
        out.extend((it.path, it.locator) for it in found.items)
        if excluded is not None:
            excluded.extend(found.excluded)
    return out


# registration order = the order in which sources claim a spec (not alphabetical: kept as written)
# isort: off
from . import hf as _hf  # noqa: E402,F401
from . import webdataset as _webdataset  # noqa: E402,F401
from . import parquet as _parquet  # noqa: E402,F401
from . import files as _files  # noqa: E402,F401
# isort: on

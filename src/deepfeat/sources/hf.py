"""Hugging Face datasets: ``hf:PATH`` (a folder written by ``save_to_disk``) or ``hf:NAME`` (a dataset
already in the local Hugging Face cache, loaded offline).

Needs the optional ``datasets`` library (``pip install 'deepfeat[hf]'``). The image column is
``image_field`` or the dataset's ``Image`` feature; the label ``label_field`` or the ``label``
column (``ClassLabel`` ids become their names); ids ``<split>/<row>`` or ``id_field``. A
``DatasetDict`` gives every split (recorded as the rows' split) unless ``split`` picks one.
Images are read as their encoded bytes (never re-encoded), so features equal those of the
same files on disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any, ClassVar

from ..data.read import WHOLE, hf_library, hf_splits, load_hf
from ..errors import UsageError
from .base import register_source
from .items import Discovery, ExcludedItem, SourceItem, normalize_split
from .table import Container, TableBuilder

log = logging.getLogger(__name__)

__all__ = ["HFSource"]

PREFIX = "hf:"


def _image_column(ds: Any, wanted: str | None, where: str) -> str:
    datasets = hf_library()
    if wanted is not None:
        if wanted not in ds.features:
            raise UsageError(f"{where} has no column {wanted!r} (--image-column); columns: {', '.join(ds.features)}.")
        return wanted
    found = [n for n, f in ds.features.items() if isinstance(f, datasets.Image)]
    if not found:
        raise UsageError(f"{where} has no Image column (columns: {', '.join(ds.features)}); name it with --image-column.")
    return str(found[0])


class HFRows(Container):
    """The rows of one split of a dataset: ``b`` is the row, ``text`` the id of ``id_field`` (None: ``<split>/<row>``)."""

    def __init__(self, path: str, name: str, column: str, where: str, has_ids: bool) -> None:
        self.path, self.name, self.column, self.where, self.has_ids = path, name, column, where, has_ids
        self.group = f"{path}[{name}]"

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        relpath = text if text is not None else f"{self.name or 'data'}/{b}"
        return SourceItem(
            id=iid,
            path=f"{self.where}#{relpath if self.has_ids else b}",
            relpath=relpath,
            label=label,
            split=split,
            size=0,
            ref=("hf", self.path, self.name, b, self.column),
            group=self.group,
        )


@register_source
class HFSource:
    """A Hugging Face dataset: ``hf:PATH`` (``save_to_disk`` folder) or ``hf:NAME`` (cached, offline).

    Example:
        >>> d = HFSource("hf:fm_saved", split="train").discover()  # doctest: +SKIP
    """

    kind: ClassVar[str] = "hf"
    OPTIONS: ClassVar[tuple[str, ...]] = ("split", "image_field", "label_field", "id_field")

    def __init__(
        self,
        spec: str,
        split: str | None = None,
        image_field: str | None = None,
        label_field: str | None = None,
        id_field: str | None = None,
    ) -> None:
        self.path = spec[len(PREFIX) :] if spec.startswith(PREFIX) else spec
        if not self.path:
            raise UsageError("hf: needs a dataset folder or name after the prefix, e.g. hf:data/fm_saved.")
        if os.path.isdir(self.path):
            self.path = os.path.abspath(self.path)
        self.split, self.image_field, self.label_field, self.id_field = split, image_field, label_field, id_field

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def discover(self, *, skip_dirs: Iterable[str | os.PathLike[str]] = ()) -> Discovery:
        datasets = hf_library()
        splits = hf_splits(load_hf(self.path))
        if self.split is not None:
            if self.split not in splits and not (list(splits) == [WHOLE]):
                raise UsageError(
                    f"The dataset {self.path!r} has no split {self.split!r}; it has {', '.join(s for s in splits)}."
                )
            if list(splits) != [WHOLE]:
                splits = {self.split: splits[self.split]}
        items = TableBuilder()
        excluded: list[ExcludedItem] = []
        seen: set[str] = set()
        for name, ds in splits.items():
            where = f"{self.path}[{name}]" if name else self.path
            column = _image_column(ds, self.image_field, where)
            label_col = self.label_field or ("label" if "label" in ds.features else None)
            for col, flag in ((label_col, "--label-column"), (self.id_field, "--id-column")):
                if col is not None and col not in ds.features:
                    raise UsageError(f"{where} has no column {col!r} ({flag}); columns: {', '.join(ds.features)}.")
            labels: list[Any] = ds.data.column(label_col).to_pylist() if label_col else [None] * len(ds)
            feature = ds.features[label_col] if label_col else None
            if isinstance(feature, datasets.ClassLabel):
                labels = [feature.int2str(v) if v is not None and v >= 0 else None for v in labels]
            ids = ds.data.column(self.id_field).to_pylist() if self.id_field else None
            recorded = normalize_split(name) if name else normalize_split(self.split)
            c = items.container(HFRows(self.path, name, column, where, ids is not None))
            for row, label in enumerate(labels):
                relpath = str(ids[row]) if ids is not None else f"{name or 'data'}/{row}"
                locator = f"{where}#{relpath if ids is not None else row}"
                if relpath in seen:
                    excluded.append(ExcludedItem(locator, "duplicate", f"the id {relpath!r} appears twice"))
                    continue
                seen.add(relpath)
                items.add(
                    c,
                    relpath,
                    label=None if label is None else str(label),
                    split=recorded,
                    b=row,
                    text=relpath if ids is not None else None,
                )
        table = items.build()
        log.info("discovered %d rows of %s (%d excluded)", len(table), self.path, len(excluded))
        return Discovery(root=self.path, layout=self.kind, items=table, excluded=excluded)

    def __repr__(self) -> str:
        return f"HFSource({self.path!r})"

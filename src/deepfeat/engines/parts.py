"""Building parts, shared by every engine: cutting inputs into parts, a part's rows, features and ledger.

The local engine (:mod:`deepfeat.engines.local`) and the Ray engine's workers
(:mod:`deepfeat.engines.ray_engine`) write parts through these, so both engines write the same store.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from ..data.worker import Decoded, Failed
from ..sources.items import SourceItem
from ..sources.table import ItemTable, as_table, members
from ..store import layout
from ..store.manifest import Manifest, PartRecord
from ..store.writer import write_part
from .forward import nonfinite_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..runtimes import Runtime

log = logging.getLogger(__name__)


def part_bounds(groups: np.ndarray, part_size: int) -> list[tuple[int, int]]:
    """Cut inputs (in discovery order) into parts of at most ``part_size``: ``(start, stop)`` ranges.

    ``groups[i]`` is the container of input ``i`` when its container must stay whole (a shard, a
    Parquet file), else -1. A container's inputs stay in one part unless the container alone holds
    more than ``part_size`` inputs (it is then cut into full parts), so a worker reads each shard
    sequentially and no shard is split between two workers; other inputs fill parts in order. The
    loop runs once per container (or run of loose files), never once per input.

    Example:
        >>> part_bounds(np.array([-1, -1, 0, 0, 0, 1]), 4)
        [(0, 2), (2, 6)]
    """
    n = len(groups)
    if n == 0:
        return []
    g = np.asarray(groups)
    change = np.flatnonzero(g[1:] != g[:-1]) + 1
    starts = np.concatenate(([0], change)).tolist()
    stops = starts[1:] + [n]
    bounds: list[tuple[int, int]] = []
    first, length = 0, 0  # the part being filled: inputs first .. first + length
    for s, e in zip(starts, stops):
        if g[s] < 0:  # loose inputs: fill parts in order
            i = s
            while i < e:
                if length == 0:
                    first = i
                take = min(part_size - length, e - i)
                length += take
                i += take
                if length >= part_size:
                    bounds.append((first, first + length))
                    length = 0
            continue
        if length and length + (e - s) > part_size:
            bounds.append((first, first + length))
            length = 0
        while e - s > part_size:  # a container larger than a part: cut it into full parts
            bounds.append((s, s + part_size))
            s += part_size
        if length == 0:
            first = s
        length += e - s
        if length >= part_size:
            bounds.append((first, first + length))
            length = 0
    if length:
        bounds.append((first, first + length))
    return bounds


def plan_parts(pending: Sequence[SourceItem], part_size: int, first_index: int) -> list[tuple[str, Sequence[SourceItem]]]:
    """Split pending inputs (in discovery order) into named parts of at most ``part_size`` inputs
    (:func:`part_bounds`; ``SourceItem.group`` names the containers kept whole)."""
    table = as_table(pending)
    return [
        (layout.part_name(first_index + k), table[s:e]) for k, (s, e) in enumerate(part_bounds(table.groups(), part_size))
    ]


def pending_mask(items: ItemTable, pending: Sequence[SourceItem]) -> np.ndarray | None:
    """For each input of ``items``, whether it is one of ``pending`` (compared as id digests: ~12 bytes
    per input, no Python object per input); None when ``pending`` is ``items`` itself (a fresh run)."""
    if pending is items:
        return None
    todo = as_table(pending)
    keys, of = items.keys(), todo.keys()
    if keys is None or of is None:
        ids = {it.id for it in todo}
        return np.fromiter((it.id in ids for it in items), dtype=bool, count=len(items))
    return members(keys, of)


class PartBuilder:
    """Accumulates one part's rows, features and ledger, then writes it."""

    def __init__(self, name: str, items: Sequence[SourceItem], specs: Sequence[Any]) -> None:
        self.name = name
        self.items = {it.id: it for it in items}
        self.specs = specs
        self.features: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
        self.rows: dict[str, list[Any]] = {f.name: [] for f in layout.ROWS_SCHEMA}
        self.failed: dict[str, tuple[str, str]] = {}
        self.embedded: set[str] = set()

    def add_failed(self, item_id: str, reason: str, message: str) -> None:
        self.failed[item_id] = (reason, message)

    def add_rows(self, decoded: Sequence[Decoded], feats: dict[str, np.ndarray]) -> None:
        """Add the rows of ``decoded`` items; ``feats`` rows are their views, flattened in order."""
        bad = nonfinite_rows(feats)
        keep = np.ones(len(bad), dtype=bool)
        start = 0
        for d in decoded:
            n = len(d.pixels)
            sl = slice(start, start + n)
            start += n
            if bad[sl].any():
                keep[sl] = False
                self.add_failed(d.id, "nonfinite_features", "the model produced NaN/Inf for this input")
                continue
            it = self.items[d.id]
            pb = os.fsencode(it.path)
            self.embedded.add(d.id)
            for view in range(n):
                for key, value in (
                    ("id", d.id),
                    ("view", view),
                    ("label", it.label),
                    ("split", it.split),
                    ("path", layout.display_path(pb)),
                    ("path_bytes", pb),
                    ("sha256", d.meta["sha256"]),
                    ("format", d.meta["format"]),
                    ("mode", d.meta["mode"]),
                    ("n_frames", d.meta["n_frames"]),
                    ("width", d.meta["width"]),
                    ("height", d.meta["height"]),
                ):
                    self.rows[key].append(value)
        for name, arr in feats.items():
            self.features[name].append(arr[keep])

    def write(self, store_dir: str) -> PartRecord:
        rows = pa.table(self.rows, schema=layout.ROWS_SCHEMA)
        ledger_cols: dict[str, list[Any]] = {f.name: [] for f in layout.LEDGER_SCHEMA}
        for it in self.items.values():
            if it.id not in self.failed and it.id not in self.embedded:
                raise RuntimeError(f"input {it.path!r} of part {self.name} was neither embedded nor failed")
            pb = os.fsencode(it.path)
            reason, message = self.failed.get(it.id, (None, None))
            for key, value in (
                ("id", it.id),
                ("path", layout.display_path(pb)),
                ("path_bytes", pb),
                ("label", it.label),
                ("split", it.split),
                ("status", "failed" if it.id in self.failed else "embedded"),
                ("reason", reason),
                ("message", message),
            ):
                ledger_cols[key].append(value)
        ledger = pa.table(ledger_cols, schema=layout.LEDGER_SCHEMA)
        feats = {
            s.key: (np.concatenate(self.features[s.name]) if self.features[s.name] else np.zeros((0, s.dims), np.float32))
            for s in self.specs
        }
        return write_part(store_dir, self.name, feats, rows, ledger)


def add_batch(builder: PartBuilder, computer: "Runtime", results: Sequence[Decoded | Failed]) -> tuple[int, int]:
    """Ledger the failures of one decoded batch and add the features of the rest (every engine uses this).

    Returns (decoded, failed) counts.
    """
    ok = [r for r in results if isinstance(r, Decoded)]
    for r in results:
        if isinstance(r, Failed):
            builder.add_failed(r.id, r.reason, r.message)
            log.debug("failed %s: %s", r.id, r.message)
    if ok:
        pixels = np.stack([px for d in ok for px in d.pixels])
        builder.add_rows(ok, computer(pixels))
    return len(ok), len(results) - len(ok)


def part_batches(items: Sequence[SourceItem], batch_size: int, plan: Any) -> list[list[tuple[str, Any, int]]]:
    """The decode batches of one part: ``(id, locator, augmented views)`` triples, in part order."""
    return [
        [(it.id, it.locator, plan.views_for(it)) for it in items[s : s + batch_size]]
        for s in range(0, len(items), batch_size)
    ]


def container_record(keys: Sequence[str | None], holds: Iterable[int], finished: Callable[[int], bool]) -> dict[str, bool]:
    """A part record's ``containers``: ``{key: finished(code)}`` for the containers (codes) it holds inputs
    of, keyed by :meth:`~deepfeat.sources.table.ItemTable.container_keys`; empty when one has no key (a
    resume then reads the part's ledger, as for every part written before this field)."""
    codes = sorted(set(holds))
    found = [keys[c] if 0 <= c < len(keys) else None for c in codes]
    if not codes or any(k is None for k in found):
        return {}
    return {str(k): bool(finished(c)) for c, k in zip(codes, found)}


def count_new(manifest: Manifest, names: Iterable[str]) -> tuple[int, int, int]:
    """(embedded, failed, parts) of the parts named in ``names`` that the manifest holds (what a run committed)."""
    wanted = set(names)
    new = [p for p in manifest.parts if p.name in wanted]
    return sum(p.embedded for p in new), sum(p.failed for p in new), len(new)

"""Container planning: the columnar item table, part bounds, the pending mask, and the planner's memory."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from deepfeat.engines.parts import part_bounds, pending_mask, plan_parts
from deepfeat.extraction import resume_filter
from deepfeat.sources import open_source
from deepfeat.sources.items import SourceItem, item_id
from deepfeat.sources.table import FileRows, TableBuilder, as_table


def _reference_parts(groups: list[str | None], part_size: int) -> list[tuple[int, int]]:
    """The per-item planner deepfeat used before container planning (kept here as the reference)."""
    chunks: list[list[int]] = []
    current: list[int] = []
    k = 0
    while k < len(groups):
        group, end = groups[k], k + 1
        if group is not None:
            while end < len(groups) and groups[end] == group:
                end += 1
        run = list(range(k, end))
        if current and len(current) + len(run) > part_size:
            chunks.append(current)
            current = []
        while len(run) > part_size:
            chunks.append(run[:part_size])
            run = run[part_size:]
        current.extend(run)
        if len(current) >= part_size:
            chunks.append(current)
            current = []
        k = end
    if current:
        chunks.append(current)
    return [(c[0], c[-1] + 1) for c in chunks]


@pytest.mark.parametrize("seed", range(8))
def test_part_bounds_cut_exactly_as_the_per_item_planner_did(seed: int) -> None:
    rng = random.Random(seed)
    groups: list[str | None] = []
    for c in range(rng.randint(1, 40)):  # shards of random sizes, with runs of loose files between them
        if rng.random() < 0.3:
            groups += [None] * rng.randint(1, 30)
        else:
            groups += [f"shard{c}"] * rng.randint(1, 25)
    codes = {g: i for i, g in enumerate(dict.fromkeys(g for g in groups if g is not None))}
    array = np.array([codes[g] if g is not None else -1 for g in groups], dtype=np.int32)
    for part_size in (1, 3, 7, 10, 64):
        assert part_bounds(array, part_size) == _reference_parts(groups, part_size), part_size


def _items(n: int, group_every: int = 0) -> list[SourceItem]:
    return [
        SourceItem(
            item_id(f"{i}.jpg"),
            f"/d/{i}.jpg",
            f"{i}.jpg",
            f"c{i % 3}",
            "train" if i % 2 else None,
            i,
            group=f"g{i // group_every}" if group_every else None,
        )
        for i in range(n)
    ]


def test_a_custom_sources_items_keep_their_objects_and_containers() -> None:
    items = _items(10, group_every=4)
    table = as_table(items)
    assert [table[i] is items[i] for i in range(10)] == [True] * 10
    assert table == items and table.hex_ids
    assert [len(p) for _, p in plan_parts(items, 5, 0)] == [4, 4, 2]  # shards of 4 stay whole
    assert table.used_labels() == ["c0", "c1", "c2"] and table.split_counts() == {None: 5, "train": 5}


def test_the_builder_stores_columns_and_makes_the_same_items() -> None:
    b = TableBuilder()
    c = b.container(FileRows("/data"))
    rels = [f"cls{i % 4}/img{i}.jpg" for i in range(70_000)]  # more than one packed chunk
    for i, rel in enumerate(rels):
        b.add(c, rel, label=f"cls{i % 4}", split="val" if i % 5 == 0 else None, size=i, text=rel)
    table = b.build()
    assert len(table) == 70_000
    for i in (0, 1, 65_535, 65_536, 69_999):
        assert table[i] == SourceItem(
            item_id(rels[i]), f"/data/{rels[i]}", rels[i], f"cls{i % 4}", "val" if i % 5 == 0 else None, i
        )
    ordered = table.sorted_by_text()
    assert [it.relpath for it in ordered[:3]] == sorted(rels, key=str.encode)[:3]
    assert table.nbytes() < 70_000 * 80  # ids, codes and numbers: tens of bytes per input, text included


def test_the_pending_mask_and_resume_filter_compare_digests() -> None:
    items = as_table(_items(1000))
    done = [items[i].id for i in range(0, 1000, 3)] + [item_id("gone.jpg")]
    pending, vanished = resume_filter(items, lambda: [pa.array(done)])
    assert vanished == 1 and len(pending) == 1000 - 334
    mask = pending_mask(items, pending)
    assert mask.tolist() == [i % 3 != 0 for i in range(1000)]
    assert pending_mask(items, items) is None  # a fresh run: everything is pending, no mask
    fresh, none_vanished = resume_filter(items, lambda: [])
    assert fresh is items and none_vanished == 0


def _parquet_rows(tmp_path: Path, n: int, files: int = 4) -> Path:
    folder = tmp_path / "lake"
    folder.mkdir()
    per = n // files
    for f in range(files):
        table = pa.table(
            {"jpg": pa.array([b"x"] * per, type=pa.binary()), "label": pa.array([f"c{i % 10}" for i in range(per)])}
        )
        pq.write_table(table, folder / f"{f:03d}.parquet", row_group_size=10_000)
    return folder


def test_parquet_discovery_keeps_the_row_locators(tmp_path: Path) -> None:
    folder = _parquet_rows(tmp_path, 80_000)  # 4 files of 20,000 rows, row groups of 10,000
    d = open_source(folder).discover()
    first = str(folder / "000.parquet")
    it = d.items[10_005]
    assert it == SourceItem(
        item_id("000.parquet#10005"),
        f"{first}#10005",
        "000.parquet#10005",
        "c5",
        None,
        0,
        ref=("parquet", first, 1, 5, "jpg", None),
        group=first,
    )
    assert [len(p) for _, p in plan_parts(d.items, 25_000, 0)] == [20_000] * 4  # files stay whole


def test_planning_holds_tens_of_bytes_per_input_not_an_object(tmp_path: Path) -> None:
    """Discovery + resume filter + part bounds over 100 k Parquet rows: the memory held per input (Python
    and numpy allocations, traced) must stay far below the ~650 B of one SourceItem per input that the
    per-item planner held. Measured: ~34 B held (the table and the pending table, ~17 B each), ~70 B at
    the peak (a packing buffer of 65,536 rows is a constant share at this size); the limits leave a
    margin against noise, not against a Python object per input."""
    n = 100_000
    folder = _parquet_rows(tmp_path, n)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        d = open_source(folder).discover()
        pending, _ = resume_filter(d.items, lambda: [pa.array([d.items[0].id])])
        bounds = part_bounds(pending.groups(), 4096)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(d.items) == n and len(bounds) == 4 * 7  # 4 files of 25,000 rows: 6 full parts + 1 each
    held_per_input = (held - before) / n
    peak_per_input = (peak - before) / n
    print(f"held {held_per_input:.0f} B, peak {peak_per_input:.0f} B per input")
    assert held_per_input < 60, held_per_input
    assert peak_per_input < 150, peak_per_input

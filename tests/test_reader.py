"""Reading the store in bounded blocks: same rows whatever the block size, shuffles that lose nothing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import deepfeat
from deepfeat.errors import StoreError
from deepfeat.trainrows import plan_memory


@pytest.fixture(scope="module")
def small_store(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reader") / "feats"
    deepfeat.extract(
        fm_dir,
        out,
        layers="blocks.2,pre_logits",
        pool="avg",
        dtype="float32",
        input_size=64,
        workers=0,
        batch_size=16,
        part_size=30,
    )
    return out


def _rows(batches) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for b in batches:
        X = b.concat()
        for i, row in zip(b.ids, X):
            assert i not in out, f"row {i} delivered twice"
            out[i] = row
    return out


def test_read_features_reads_exactly_the_asked_rows(small_store: Path) -> None:
    store = deepfeat.open_store(small_store)
    part = store.parts[1]
    whole = np.load(os.path.join(small_store, "parts", part.name, "pre_logits.npy"))
    assert store.read_features(part, "pre_logits").tobytes() == whole.tobytes()
    block = store.read_features(part, "pre_logits", 7, 19)
    assert block.shape == (12, 1280) and np.array_equal(block, whole[7:19])
    assert store.read_features(part, "pre_logits", 25, 999).shape == (part.rows - 25, 1280)


@pytest.mark.parametrize("read_bytes", [1, 5 * 1280 * 4, 1 << 30])
def test_block_size_does_not_change_what_is_read(small_store: Path, read_bytes: int) -> None:
    store = deepfeat.open_store(small_store)
    ref = [(b.ids, b.concat()) for b in store.batches(batch_size=17)]
    got = [(b.ids, b.concat()) for b in store.batches(batch_size=17, read_bytes=read_bytes)]
    assert [i for i, _ in got] == [i for i, _ in ref]
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got, ref))
    # a split filter inside blocks keeps the same rows as the unfiltered read restricted to the split
    test_ids = [i for b in store.batches(split="test", batch_size=9, read_bytes=read_bytes) for i in b.ids]
    assert test_ids == [
        i for b in store.batches(batch_size=9) for i, s in zip(b.ids, b.meta.column("split").to_pylist()) if s == "test"
    ]


def test_shuffled_blocks_deliver_every_row_once_with_its_own_features(small_store: Path) -> None:
    store = deepfeat.open_store(small_store)
    ref = _rows(store.batches(batch_size=64))
    orders = []
    for seed in (0, 1):
        batches = list(store.batches(batch_size=8, shuffle=True, seed=seed, shuffle_buffer=16, read_bytes=4 * 1320 * 4))
        got = _rows(batches)
        assert set(got) == set(ref) and all(np.array_equal(got[i], ref[i]) for i in ref)
        orders.append([i for b in batches for i in b.ids])
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])
    again = [
        i
        for b in store.batches(batch_size=8, shuffle=True, seed=0, shuffle_buffer=16, read_bytes=4 * 1320 * 4)
        for i in b.ids
    ]
    assert again == orders[0]


def test_a_damaged_feature_file_header_is_a_store_error(small_store: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_store, copy)
    store = deepfeat.open_store(copy, verify=False)
    part = store.parts[0]
    path = copy / "parts" / part.name / "pre_logits.npy"
    data = bytearray(path.read_bytes())
    data[:6] = b"NOTNPY"
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="not a valid .npy"):
        store.read_features(part, "pre_logits")


def test_memory_plan_stays_inside_the_budget() -> None:
    budget = 64 << 20
    plan = plan_memory(budget, dims=5760, stored_itemsize=4, batch_size=256)
    assert plan.read_bytes <= budget // 16
    assert plan.shuffle_rows * 5760 * 4 <= budget // 6
    assert plan.io_batch * 5760 * 24 <= budget // 4
    assert plan.step_bytes <= budget // 2
    tiny = plan_memory(1 << 20, dims=100_352, stored_itemsize=4, batch_size=2)
    assert tiny.io_batch == 1 and tiny.shuffle_rows == 2 and tiny.read_bytes == 100_352 * 4

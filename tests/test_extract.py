"""Extraction into the store: values, accounting, bad inputs, locks, config changes, faults."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from badinputs import make_bad_inputs
from PIL import Image

import deepfeat
from deepfeat.data.decode import decode_file
from deepfeat.errors import ConfigMismatchError, EnvironmentFault, StoreLockedError
from deepfeat.store.lock import StoreLock


def store_map(path: Path, layer: str) -> dict[tuple[str, int], np.ndarray]:
    """{(id, view): features} of a whole (small) store."""
    out = {}
    for b in deepfeat.open_store(path).batches([layer], batch_size=64):
        for i, v, row in zip(b.ids, b.meta.column("view").to_pylist(), b.features[layer]):
            assert (i, v) not in out, "duplicate row"
            out[(i, v)] = row
    return out


def test_stored_features_equal_direct_forward(fm_dir, tmp_path, lite0):
    out = tmp_path / "feats"
    s = deepfeat.extract(
        fm_dir,
        out,
        layers="blocks.4,pre_logits",
        pool="avg,blocks.4=max",
        dtype="float32",
        input_size=64,
        workers=1,
        batch_size=16,
        part_size=30,
        precision="fp32",
    )
    assert s.embedded_total == 80 and s.failed_total == 0 and s.parts_committed == 3 and s.accounted
    store = deepfeat.open_store(out)
    assert store.splits == ["test", "train"] and len(store.classes) == 10
    assert store.layer("blocks.4").dims == 112 and store.layer("blocks.4").pool == "max"
    rows = store.rows()
    sample = list(range(0, rows.num_rows, 9))
    paths = [os.fsdecode(rows.column("path_bytes")[i].as_py()) for i in sample]
    from deepfeat.models import load_backbone

    bb = load_backbone("efficientnet_lite0", input_size=64)
    x = torch.cat([bb.preprocess(decode_file(p).image) for p in paths])
    with torch.inference_mode():
        taps = {}
        h = bb.model.blocks[4].register_forward_hook(lambda m, i, o: taps.update(b4=o.amax((2, 3))))
        pre = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
        h.remove()
    X = store.load(["blocks.4", "pre_logits"], views=0)[0]
    got = X[sample]
    np.testing.assert_allclose(got[:, :112], taps["b4"].numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got[:, 112:], pre.numpy(), rtol=1e-4, atol=1e-4)
    # Labels and splits come from the folder layout.
    assert [Path(p).parent.name for p in paths] == [rows.column("label")[i].as_py() for i in sample]


def test_bad_inputs_land_in_the_ledger(tmp_path, monkeypatch):
    root = tmp_path / "in"
    expected = make_bad_inputs(root)
    # "vanished": a file deleted between discovery and read.
    Image.new("RGB", (40, 30), (10, 200, 30)).save(root / "vanishing.png")
    expected["vanishing.png"] = "failed:vanished"
    from deepfeat.sources import files as extract_mod  # the folder source's walker

    real_discover = extract_mod.walk

    def discover_then_delete(src, **kw):
        d = real_discover(src, **kw)
        os.unlink(root / "vanishing.png")
        return d

    monkeypatch.setattr(extract_mod, "walk", discover_then_delete)
    out = tmp_path / "feats"
    s = deepfeat.extract(root, out, layers="pre_logits", input_size=32, workers=1, batch_size=8, part_size=10)
    ledger = deepfeat.open_store(out).ledger().to_pylist()
    by_name = {}
    for row in ledger:
        name = os.path.relpath(os.fsdecode(row["path_bytes"]), root)
        by_name[name] = row["status"] if row["status"] == "embedded" else f"{row['status']}:{row['reason']}"
    mismatched = {k: (v, by_name.get(k)) for k, v in expected.items() if by_name.get(k) != v}
    assert not mismatched
    # I1: every discovered input has exactly one fate.
    assert s.accounted and len([r for r in ledger if r["status"] != "excluded"]) == s.discovered
    assert s.embedded_total == sum(1 for v in expected.values() if v == "embedded")
    store = deepfeat.open_store(out)
    assert store.num_rows() == s.embedded_total
    for b in store.batches(batch_size=100):
        assert np.isfinite(b.features["pre_logits"]).all()


def test_every_input_bad_completes_without_empty_shard(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    for i in range(5):
        (root / f"x{i}.jpg").write_bytes(b"not an image" * i)
    out = tmp_path / "feats"
    s = deepfeat.extract(root, out, layers="pre_logits", input_size=32, workers=0, part_size=2)
    assert s.embedded_total == 0 and s.failed_total == 5 and s.failures_by_reason == {"unidentified": 5}
    store = deepfeat.open_store(out)
    assert store.num_rows() == 0 and not any(f.endswith(".npy") for p in store.parts for f in p.files)
    from deepfeat.cli import main

    assert (
        main(
            [
                "extract",
                str(root),
                "--out",
                str(out),
                "--layers",
                "pre_logits",
                "--input-size",
                "32",
                "-q",
                "--workers",
                "0",
                "--part-size",
                "2",
            ]
        )
        == 1
    )


def test_second_writer_and_changed_config_are_refused(fm_dir, tmp_path):
    out = tmp_path / "feats"
    out.mkdir()
    with StoreLock(str(out)):
        with pytest.raises(StoreLockedError, match="locked by another writer"):
            deepfeat.extract(fm_dir, out, layers="pre_logits", input_size=32, workers=0)
    deepfeat.extract(fm_dir, out, layers="pre_logits", input_size=32, workers=0)
    for change in ({"pool": "max", "layers": "blocks.4"}, {"dtype": "float16"}, {"input_size": 48}):
        kwargs = {"layers": "pre_logits", "input_size": 32, "workers": 0, **change}
        with pytest.raises(ConfigMismatchError, match="different configuration"):
            deepfeat.extract(fm_dir, out, **kwargs)
    s = deepfeat.extract(fm_dir, out, layers="pre_logits", input_size=32, workers=0, dtype="float16", overwrite=True)
    assert s.embedded_now == 80 and deepfeat.open_store(out).dtype == "float16"


def test_resume_picks_up_new_files_and_reports_deleted(fm_dir, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(fm_dir, src)
    out = tmp_path / "feats"
    first = deepfeat.extract(src, out, layers="pre_logits", input_size=32, workers=0, part_size=16)
    ids_before = set(deepfeat.open_store(out).rows(["id"]).column("id").to_pylist())
    again = deepfeat.extract(src, out, layers="pre_logits", input_size=32, workers=0, part_size=16)
    assert again.embedded_now == 0 and again.already_done == 80 and again.parts_committed == 0
    Image.new("L", (28, 28), 128).save(src / "train" / "bag" / "new.png")
    os.unlink(next((src / "test" / "coat").iterdir()))
    third = deepfeat.extract(src, out, layers="pre_logits", input_size=32, workers=0, part_size=16)
    assert third.embedded_now == 1 and third.vanished_since == 1 and third.discovered == 80
    ids_after = set(deepfeat.open_store(out).rows(["id"]).column("id").to_pylist())
    assert ids_before < ids_after and len(ids_after) == 81
    assert first.parts_committed == 5


def test_disk_full_is_an_environment_error_and_resume_completes(fm_dir, tmp_path, monkeypatch):
    out = tmp_path / "feats"
    from deepfeat.store import writer

    real = writer._save_npy
    calls = {"n": 0}

    def failing(path, arr):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, arr)

    monkeypatch.setattr(writer, "_save_npy", failing)
    with pytest.raises(EnvironmentFault, match="disk is full"):
        deepfeat.extract(fm_dir, out, layers="pre_logits", input_size=32, workers=0, part_size=20)
    store = deepfeat.open_store(out)
    assert (
        len(store.parts) == 1
        and store.ledger()
        .filter(__import__("pyarrow.compute").compute.equal(store.ledger().column("status"), "failed"))
        .num_rows
        == 0
    )
    assert not os.listdir(out / ".tmp") and sorted(os.listdir(out / "parts")) == ["00000000"]
    monkeypatch.setattr(writer, "_save_npy", real)
    s = deepfeat.extract(fm_dir, out, layers="pre_logits", input_size=32, workers=0, part_size=20)
    assert s.embedded_total == 80 and s.failed_total == 0 and s.embedded_now == 60


def test_resnet50_unpooled_layer4_streams_from_disk(photo_files, tmp_path):
    out = tmp_path / "feats"
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in photo_files.values():
        shutil.copy(p, folder / p.name)
    s = deepfeat.extract(
        folder,
        out,
        model="timm:resnet50",
        weights="random",
        layers="layer4",
        pool="none",
        dtype="float16",
        workers=0,
        batch_size=2,
        part_size=3,
    )
    store = deepfeat.open_store(out)
    assert store.layer("layer4").dims == 7 * 7 * 2048 == 100_352
    seen = 0
    for b in store.batches("layer4", batch_size=2):
        assert b.features["layer4"].shape[1] == 100_352 and b.features["layer4"].dtype == np.float16
        seen += len(b)
    assert seen == s.embedded_total == 4
    arr = np.load(out / "parts" / "00000000" / "layer4.npy", mmap_mode="r")  # plain numpy reads it
    assert arr.shape == (3, 100_352)
    rows = pq.read_table(out / "parts" / "00000000" / "rows.parquet")  # plain pyarrow reads it
    assert rows.num_rows == 3


def test_odd_filenames_round_trip(tmp_path):
    root = tmp_path / "odd"
    root.mkdir()
    names = [
        b"caf\xe9.png",
        "new\nline.png".encode(),
        b"-leading.png",
        ("x" * 200 + ".png").encode(),
        b"A.png",
        b"a.png",
        "\u00e9.png".encode(),
        "e\u0301.png".encode(),
    ]
    for k, n in enumerate(names):
        Image.new("RGB", (20, 20), (k * 20, 0, 0)).save(os.path.join(os.fsencode(root), n), format="PNG")
    out = tmp_path / "feats"
    s = deepfeat.extract(root, out, layers="pre_logits", input_size=32, workers=0)
    assert s.embedded_total == len(names)
    rows = deepfeat.open_store(out).rows(["path_bytes", "sha256"]).to_pylist()
    import hashlib

    for r in rows:
        with open(r["path_bytes"], "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == r["sha256"]
    assert {os.path.basename(r["path_bytes"]) for r in rows} == set(names)


def test_resume_filter_compares_digests_exactly():
    """The resume's pending filter works on the ids' digest bytes (10 per id, no Python set): it must give
    what a set of strings gives -- including ids whose first 8 bytes agree -- and fall back to strings for
    ids of another shape."""
    import random

    import pyarrow as pa

    from deepfeat.extraction import resume_filter
    from deepfeat.sources.items import SourceItem, item_id

    rng = random.Random(7)
    names = [f"train/c{i % 7}/img_{i}.png" for i in range(5000)]
    twins = ["0123456789abcdef" + t for t in ("0000", "0001", "ffff")]  # same first 8 bytes, 3 ids
    ids = [item_id(n) for n in names] + twins
    items = [SourceItem(i, i, i, None, None, 0) for i in ids]
    done = [i for i in rng.sample(ids, 3000) if i not in twins] + [twins[1]] + [item_id(f"gone/{k}.png") for k in range(17)]
    done = list(dict.fromkeys(done))
    pending, vanished = resume_filter(items, lambda: [pa.array(done[:1000]), pa.array(done[1000:])])
    expected = [it for it in items if it.id not in set(done)]
    assert [it.id for it in pending] == [it.id for it in expected] and vanished == 17
    assert twins[1] not in {it.id for it in pending} and {twins[0], twins[2]} <= {it.id for it in pending}
    custom = [SourceItem(i, i, i, None, None, 0) for i in ("a", "b", "c")]  # a custom source's ids
    pending, vanished = resume_filter(custom, lambda: [pa.array(["b", "zz"])])
    assert [it.id for it in pending] == ["a", "c"] and vanished == 1

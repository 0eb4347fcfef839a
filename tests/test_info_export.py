"""store_info / format_info / verify_store and export_store on a small real store.

The store is extracted once per module from crops of scikit-image photos (efficientnet_lite0,
two layers, float16, parts of 7 inputs) plus two undecodable files and one non-image file,
so the ledger has embedded, failed and excluded entries.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

import deepfeat
from deepfeat.errors import EnvironmentFault, StoreError, UsageError
from deepfeat.store import layout
from deepfeat.store.export import FORMATS, export_store, read_export_metadata
from deepfeat.store.info import format_info, store_info, verify_store
from deepfeat.store.reader import open_store

LAYERS = ["blocks.4", "pre_logits"]
CLASSES = {"astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee"}
PER_SPLIT = {"train": 5, "test": 3}


def _write_images(root: str) -> None:
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(0)
    for split, n in PER_SPLIT.items():
        for cls, photo in CLASSES.items():
            arr = getattr(data, photo)()
            h, w = arr.shape[:2]
            folder = os.path.join(root, split, cls)
            os.makedirs(folder)
            for i in range(n):
                y, x = int(rng.integers(0, h // 3)), int(rng.integers(0, w // 3))
                img = Image.fromarray(arr[y : y + h // 2, x : x + w // 2]).convert("RGB").resize((80, 64))
                img.save(os.path.join(folder, f"{cls}_{i}.{'png' if i % 2 else 'jpg'}"))
    open(os.path.join(root, "train", "cat", "empty.jpg"), "wb").close()  # 0 bytes -> failed
    with open(os.path.join(root, "test", "coffee", "notes.png"), "w") as f:  # text named .png -> failed
        f.write("this is not an image\n")
    with open(os.path.join(root, "train", "cat", "readme.txt"), "w") as f:  # -> excluded
        f.write("notes\n")


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> str:
    base = tmp_path_factory.mktemp("infoexport")
    root, out = str(base / "images"), str(base / "feats")
    _write_images(root)
    summary = deepfeat.extract(
        root,
        out,
        model="efficientnet_lite0",
        layers=",".join(LAYERS),
        pool="avg",
        dtype="float16",
        input_size=64,
        workers=0,
        part_size=7,
    )
    assert summary.embedded_total == 24 and summary.failed_total == 2
    return out


def _reference(store_dir: str, split=None, views="all"):
    """Features per layer (store dtype) and metadata, via the reader's batches."""
    store = open_store(store_dir)
    feats: dict[str, list] = {n: [] for n in LAYERS}
    meta: dict[str, list] = {c: [] for c in ("id", "label", "split", "view", "path")}
    for b in store.batches(LAYERS, split=split, views=views, batch_size=5, columns=tuple(meta)):
        for n in LAYERS:
            feats[n].append(b.features[n])
        for c in meta:
            meta[c].extend(b.meta.column(c).to_pylist())
    return {n: np.concatenate(v) for n, v in feats.items()}, meta


@pytest.fixture(scope="module")
def reference(store_dir):
    return _reference(store_dir)


@pytest.fixture(scope="module")
def reference_train(store_dir):
    return _reference(store_dir, split="train")


def _copy(store_dir: str, tmp_path) -> str:
    dst = str(tmp_path / "copy")
    shutil.copytree(store_dir, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


# ------------------------------------------------------------------------------- info
def test_info_counts_add_up_and_match_ledger(store_dir):
    info = store_info(store_dir)
    ledger = open_store(store_dir).ledger()
    statuses = ledger.column("status").to_pylist()
    assert (info.embedded, info.failed, info.excluded) == (24, 2, 1)
    assert info.embedded == statuses.count("embedded")
    assert info.failed == statuses.count("failed")
    assert info.excluded == statuses.count("excluded")
    assert info.items_total == ledger.num_rows == info.embedded + info.failed + info.excluded
    assert info.accounted and not info.warnings
    assert info.rows_total == 24 and info.rows_by_split == {"test": 9, "train": 15}
    assert info.rows_by_class == {s: {c: n for c in CLASSES} for s, n in PER_SPLIT.items()}
    assert info.rows_by_view == {0: 24}
    assert info.parts == 4 and info.empty_parts == 0  # 26 inputs in parts of 7
    reasons = {}
    for st, r in zip(statuses, ledger.column("reason").to_pylist()):
        if st == "failed":
            reasons[r] = reasons.get(r, 0) + 1
    assert {k: v.count for k, v in info.failures_by_reason.items()} == reasons
    assert sum(v.count for v in info.failures_by_reason.values()) == 2
    examples = [p for v in info.failures_by_reason.values() for p in v.examples]
    assert sorted(os.path.basename(p) for p in examples) == ["empty.jpg", "notes.png"]
    assert info.exclusions_by_reason["not_image_extension"].count == 1
    assert store_info(store_dir, max_examples=1).failures_by_reason[next(iter(reasons))].examples.__len__() <= 1
    assert info.model_name == "efficientnet_lite0" and info.model_family == "bundled"
    assert len(info.weights_sha256 or "") == 64
    assert info.dtype == "float16" and info.preprocess["input_size"] == [64, 64]
    assert [d["name"] for d in info.layers] == LAYERS and all(d["pool"] == "avg" for d in info.layers)
    assert info.layers[1]["dims"] == 1280
    assert info.estimated_bytes == 26 * sum(d["dims"] for d in info.layers) * 2
    assert 0 < info.feature_bytes < info.bytes_on_disk
    d = json.loads(json.dumps(info.to_dict()))
    assert d["rows_by_view"] == {"0": 24} and d["accounted"] is True and d["classes"] == sorted(CLASSES)


def test_format_info_mentions_layers_splits_and_reasons(store_dir):
    info = store_info(store_dir)
    text = format_info(info)
    for word in LAYERS + [
        "train",
        "test",
        "efficientnet_lite0",
        "float16",
        "not_image_extension",
        *info.failures_by_reason,
        *CLASSES,
        info.weights_sha256,
    ]:
        assert word in text, word
    full = format_info(info, failures=True)
    assert "empty.jpg" in full and "notes.png" in full and "readme.txt" in full


# ------------------------------------------------------------------------------- verify
def test_verify_healthy_store(store_dir):
    assert verify_store(store_dir) == []


def test_verify_names_part_and_file_after_a_flipped_byte(store_dir, tmp_path):
    copy = _copy(store_dir, tmp_path)
    target = os.path.join(copy, layout.PARTS_DIR, "00000001", "pre_logits.npy")
    with open(target, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        b = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([b[0] ^ 0x01]))
    problems = verify_store(copy)
    assert problems and all("00000001" in p for p in problems)
    assert any("pre_logits.npy" in p and "sha256" in p for p in problems)
    with pytest.raises(StoreError, match="00000001"):
        open_store(copy).load()


def test_verify_names_part_and_file_after_truncation(store_dir, tmp_path):
    copy = _copy(store_dir, tmp_path)
    target = os.path.join(copy, layout.PARTS_DIR, "00000002", "blocks.4.npy")
    size = os.path.getsize(target)
    with open(target, "r+b") as f:
        f.truncate(size - 100)
    problems = verify_store(copy)
    assert any("part 00000002" in p and "blocks.4.npy" in p and "bytes" in p for p in problems)
    assert all("00000002" in p for p in problems)


def test_verify_reports_nonfinite_values_with_a_consistent_manifest(store_dir, tmp_path):
    copy = _copy(store_dir, tmp_path)
    part = os.path.join(copy, layout.PARTS_DIR, "00000000")
    arr = np.load(os.path.join(part, "blocks.4.npy"))
    arr[2, 5] = np.nan
    np.save(os.path.join(part, "blocks.4.npy"), arr)
    manifest = json.load(open(os.path.join(copy, layout.MANIFEST_FILE)))
    from deepfeat.store.fsutil import sha256_file

    entry = manifest["parts"][0]["files"]["blocks.4.npy"]
    entry["sha256"] = sha256_file(os.path.join(part, "blocks.4.npy"))
    entry["bytes"] = os.path.getsize(os.path.join(part, "blocks.4.npy"))
    with open(os.path.join(copy, layout.MANIFEST_FILE), "w") as f:
        json.dump(manifest, f)
    problems = verify_store(copy)
    assert len(problems) == 1 and "part 00000000: blocks.4.npy" in problems[0] and "NaN" in problems[0]


# ------------------------------------------------------------------------------- export
def _read_export(fmt: str, out: str, layers: list[str]):
    """(features per layer as float32, metadata columns) from an export."""
    if fmt == "npy":
        feats = {n: np.load(os.path.join(out, f"{n}.npy")) for n in layers}
        assert all(a.dtype == np.float16 for a in feats.values())
        t = pq.read_table(os.path.join(out, layout.ROWS_FILE))
        meta = {c: t.column(c).to_pylist() for c in ("id", "label", "split", "view", "path")}
    elif fmt == "hdf5":
        import h5py

        with h5py.File(out, "r") as f:
            feats = {n: f[f"features/{n}"][:] for n in layers}
            meta = {c: [v.decode() for v in f[f"meta/{c}"][:]] for c in ("id", "label", "split", "path")}
            meta["view"] = f["meta/view"][:].tolist()
            assert json.loads(f.attrs["deepfeat_metadata"])["metadata"]["dtype"] == "float16"
    elif fmt == "parquet":
        t = pq.read_table(out)
        feats = {n: t.column(n).combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1) for n in layers}
        meta = {c: t.column(c).to_pylist() for c in ("id", "label", "split", "view", "path")}
    else:
        with open(out, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header, body = rows[0], rows[1:]
        assert header[:6] == ["id", "label", "split", "view", "path", "sha256"]  # CSV rows say which image they are
        assert all(len(r[5]) == 64 for r in body)
        feats, col = {}, 6
        for n in layers:
            names = [h for h in header if h.rsplit("_", 1)[0] == n]
            assert header[col : col + len(names)] == [f"{n}_{i}" for i in range(len(names))]
            feats[n] = np.array([r[col : col + len(names)] for r in body], dtype=np.float32).reshape(len(body), len(names))
            col += len(names)
        assert col == len(header)
        meta = {
            "id": [r[0] for r in body],
            "label": [r[1] for r in body],
            "split": [r[2] for r in body],
            "view": [int(r[3]) for r in body],
            "path": [r[4] for r in body],
        }
    return feats, meta


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("split", [None, "train"])
def test_export_round_trips(store_dir, reference, reference_train, tmp_path, fmt, split):
    ref_feats, ref_meta = reference_train if split else reference
    out = str(tmp_path / ("out" if fmt == "npy" else f"out.{fmt}"))
    written = export_store(store_dir, out, fmt, split=split)
    assert written and all(os.path.exists(p) for p in written)
    assert sorted(os.listdir(tmp_path)) == [os.path.basename(out)]  # no temp leftovers
    feats, meta = _read_export(fmt, out, LAYERS)
    for n in LAYERS:
        assert feats[n].shape == ref_feats[n].shape
        np.testing.assert_array_equal(feats[n].astype(np.float32), ref_feats[n].astype(np.float32))
        if fmt in ("npy", "hdf5"):
            assert feats[n].dtype == np.float16
    assert meta["id"] == ref_meta["id"]
    assert meta["label"] == ref_meta["label"] and meta["view"] == ref_meta["view"]
    assert meta["split"] == ref_meta["split"]
    if "path" in meta:
        assert meta["path"] == ref_meta["path"]
    if split:
        assert set(meta["split"]) == {"train"} and len(meta["id"]) == 15
    else:
        assert len(meta["id"]) == 24


def test_export_matches_load_and_layer_subset(store_dir, tmp_path):
    X, y, meta = open_store(store_dir).load(layers="pre_logits", split="test")
    out = str(tmp_path / "test.parquet")
    assert export_store(store_dir, out, "parquet", layers="pre_logits", split="test") == [out]
    t = pq.read_table(out)
    assert "blocks.4" not in t.column_names
    got = t.column("pre_logits").combine_chunks().flatten().to_numpy().reshape(t.num_rows, -1)
    np.testing.assert_array_equal(got, X)
    assert t.column("label").to_pylist() == list(y) and t.column("id").to_pylist() == meta.column("id").to_pylist()
    assert read_export_metadata(out)["export"]["splits"] == ["test"]


def test_export_view_filter_and_empty_selection(store_dir, tmp_path):
    out = export_store(store_dir, str(tmp_path / "v1"), "npy", layers=["blocks.4"], views=1)
    assert np.load(out[0]).shape == (0, 112)
    assert pq.read_table(out[1]).num_rows == 0
    out0 = export_store(store_dir, str(tmp_path / "v0"), "npy", layers=["blocks.4"], views=[0])
    assert np.load(out0[0]).shape == (24, 112)


def test_export_refuses_overwrite_and_bad_arguments(store_dir, tmp_path):
    out = str(tmp_path / "x.csv")
    export_store(store_dir, out, "csv", layers="blocks.4")
    before = os.path.getsize(out)
    with pytest.raises(UsageError, match="already exists"):
        export_store(store_dir, out, "csv")
    assert os.path.getsize(out) == before
    export_store(store_dir, out, "csv", overwrite=True)
    assert os.path.getsize(out) > before
    npy_out = str(tmp_path / "n")
    export_store(store_dir, npy_out, "npy", layers="blocks.4")
    with pytest.raises(UsageError, match="already exists"):
        export_store(store_dir, npy_out, "npy")
    assert export_store(store_dir, npy_out, "npy", overwrite=True)[-1].endswith("rows.parquet")
    assert sorted(os.listdir(npy_out)) == ["blocks.4.npy", "pre_logits.npy", "rows.parquet"]
    with pytest.raises(UsageError, match="npy.*hdf5.*parquet.*csv"):
        export_store(store_dir, str(tmp_path / "y"), "xlsx")
    with pytest.raises(UsageError, match="no layer"):
        export_store(store_dir, str(tmp_path / "y.csv"), "csv", layers="nope")
    with pytest.raises(UsageError, match="no split"):
        export_store(store_dir, str(tmp_path / "y.csv"), "csv", split="val")
    with pytest.raises(UsageError, match="outside the store"):
        export_store(store_dir, os.path.join(store_dir, "inside.csv"), "csv")
    assert not os.path.exists(tmp_path / "y.csv") and not os.path.exists(tmp_path / "y")


def test_export_failure_leaves_no_output(store_dir, tmp_path, monkeypatch):
    from deepfeat.store import export as export_mod

    calls = {"n": 0}
    original = export_mod._Selection.chunks

    def failing(self):
        for item in original(self):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(28, "No space left on device")
            yield item

    monkeypatch.setattr(export_mod._Selection, "chunks", failing)
    for fmt, name in (("npy", "n"), ("parquet", "p.parquet"), ("hdf5", "h.h5")):
        calls["n"] = 0
        with pytest.raises(EnvironmentFault):
            export_store(store_dir, str(tmp_path / name), fmt)
    assert os.listdir(tmp_path) == []


def test_hdf5_without_h5py_says_how_to_install(store_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(UsageError, match="pip install h5py"):
        export_store(store_dir, str(tmp_path / "f.h5"), "hdf5")
    assert not os.path.exists(tmp_path / "f.h5")

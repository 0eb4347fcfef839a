"""Stores, bundles, checkpoints and config files from someone else (issue 17; docs/SECURITY.md).

A real store is extracted once from real Fashion-MNIST images and a real bundle trained on it;
each test copies one, tampers with it as a hostile sender could (rewriting the manifest's
checksums to match, so that only the content checks stand between the reader and the files),
and checks that every reader refuses it with a clear error -- no traceback, no hang, no huge
allocation, nothing read outside the store.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import struct
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import deepfeat
from deepfeat.bundle import META_KEY, load_bundle
from deepfeat.cli import main
from deepfeat.errors import BundleError, StoreError, UsageError
from deepfeat.store import layout
from deepfeat.store.export import export_store
from deepfeat.store.info import store_info, verify_store
from deepfeat.store.reader import open_store

CLASSES = ("bag", "sneaker")


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def images(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two classes of the real Fashion-MNIST images, train and test: 16 PNG files."""
    root = tmp_path_factory.mktemp("hostile") / "images"
    for split in ("train", "test"):
        for cls in CLASSES:
            shutil.copytree(fm_dir / split / cls, root / split / cls)
    return root


@pytest.fixture(scope="module")
def store(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real store in four parts (float32, blocks.2 + pre_logits, average pooled)."""
    out = tmp_path_factory.mktemp("hostile") / "feats"
    deepfeat.extract(
        images,
        out,
        layers="blocks.2,pre_logits",
        pool="avg",
        dtype="float32",
        input_size=64,
        workers=0,
        batch_size=16,
        part_size=4,
    )
    return out


@pytest.fixture(scope="module")
def bundle(store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile") / "model.dfm"
    deepfeat.train(store, layers="pre_logits", head="logreg", epochs=2, out=out)
    return out


@pytest.fixture()
def copy(store: Path, tmp_path: Path) -> Path:
    """A private copy of the store to tamper with (inside tmp_path/shared/)."""
    dst = tmp_path / "shared" / "feats"
    shutil.copytree(store, dst)
    return dst


def _manifest(path: Path) -> dict:
    return json.loads((path / layout.MANIFEST_FILE).read_text())


def _write_manifest(path: Path, doc) -> None:
    text = doc if isinstance(doc, str) else json.dumps(doc)
    (path / layout.MANIFEST_FILE).write_text(text)


def _rehash(path: Path, part: str, fname: str) -> None:
    """Make the manifest agree with a tampered file (what a hostile sender would do)."""
    doc = _manifest(path)
    fpath = path / layout.PARTS_DIR / part / fname
    entry = next(p for p in doc["parts"] if p["name"] == part)["files"][fname]
    entry["bytes"] = fpath.stat().st_size
    entry["sha256"] = hashlib.sha256(fpath.read_bytes()).hexdigest()
    _write_manifest(path, doc)


def _cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out + err


def _every_reader_refuses(path: Path, match: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """open_store/load, info, export, train and the CLI's info all refuse with a store error (exit 3)."""
    with pytest.raises(StoreError, match=match):
        open_store(path).load()
    with pytest.raises(StoreError, match=match):
        store_info(path)
    with pytest.raises(StoreError, match=match):
        export_store(path, tmp_path / "export_npy", "npy")
    assert not (tmp_path / "export_npy").exists()
    with pytest.raises(StoreError, match=match):
        deepfeat.train(path, layers="pre_logits", epochs=1, out=tmp_path / "never.dfm")
    assert not (tmp_path / "never.dfm").exists()
    code, text = _cli(["info", path], capsys)
    assert code == 3 and "store error" in text


def _verify_says(path: Path, check: str, needle: str, capsys: pytest.CaptureFixture) -> None:
    """verify_store and `deepfeat info --verify` name the failed check and the bad entry."""
    problems = verify_store(path)
    assert any(p.startswith(f"[{check}]") and needle in p for p in problems), problems
    code, text = _cli(["info", path, "--verify"], capsys)
    assert code == 3 and f"PROBLEM: [{check}]" in text and needle in text and "verify: ok" not in text


# ------------------------------------------------------------------------------- traversal
def test_the_healthy_store_passes_every_check(store: Path, capsys) -> None:
    assert verify_store(store) == []
    code, text = _cli(["info", store, "--verify"], capsys)
    assert code == 0 and "verify: ok" in text
    assert len(open_store(store).parts) == 4


def test_a_part_name_leading_outside_is_refused_by_every_reader(copy: Path, tmp_path: Path, capsys) -> None:
    # the trial: a part moved out of the store, the manifest pointing at it with '../..'
    elsewhere = copy.parent / "elsewhere"
    shutil.move(str(copy / layout.PARTS_DIR / "00000001"), elsewhere)
    doc = _manifest(copy)
    doc["parts"][1]["name"] = "../../elsewhere"
    _write_manifest(copy, doc)
    assert (copy / layout.PARTS_DIR / "../../elsewhere" / "rows.parquet").is_file()  # it would be readable
    _every_reader_refuses(copy, r"'\.\./\.\./elsewhere' is not a part name", capsys, tmp_path)
    _verify_says(copy, "path", "../../elsewhere", capsys)


@pytest.mark.parametrize("name", ["/tmp", "00000001/../../../x", "0000000a", "", "..", "1"])
def test_any_part_name_but_the_writers_is_refused(copy: Path, name: str) -> None:
    doc = _manifest(copy)
    doc["parts"][0]["name"] = name
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match="is not a part name"):
        open_store(copy)


@pytest.mark.parametrize("fname", ["../../../etc/passwd", "/etc/passwd", "blocks.2.npy/..", "other.npy", "rows.parquet.bak"])
def test_a_file_name_that_is_not_the_parts_own_is_refused(copy: Path, fname: str, capsys) -> None:
    doc = _manifest(copy)
    files = doc["parts"][2]["files"]
    files[fname] = files.pop("blocks.2.npy")
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match="is not a file of a part of this store"):
        open_store(copy)
    _verify_says(copy, "path", "part 00000002", capsys)


@pytest.mark.parametrize("key", ["../../outside", "/abs", "a/b", "..", ".hidden"])
def test_a_layer_key_that_is_not_a_file_key_is_refused(copy: Path, key: str, tmp_path: Path, capsys) -> None:
    meta = json.loads((copy / layout.METADATA_FILE).read_text())
    meta["layers"][0]["key"] = key
    (copy / layout.METADATA_FILE).write_text(json.dumps(meta))
    _every_reader_refuses(copy, "is not a layer key", capsys, tmp_path)
    _verify_says(copy, "path", "is not a layer key", capsys)


def test_a_metadata_file_name_outside_the_store_is_refused(copy: Path) -> None:
    from deepfeat.analysis.fne import load_fne_stats

    meta = json.loads((copy / layout.METADATA_FILE).read_text())
    meta["fne"] = {"stats_file": "/etc/passwd", "stats_sha256": "", "thresholds": [-0.25, 0.15]}
    (copy / layout.METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="fne.stats_file '/etc/passwd' is not a plain file name"):
        load_fne_stats(copy)


# ------------------------------------------------------------------------------- the manifest
@pytest.mark.parametrize(
    "text, match",
    [
        ("{not json", "manifest.json is not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nests too deeply|not valid JSON"),
        ("[]", "must hold a JSON object"),
        ('{"parts": {"00000000": {}}}', "parts must be a list"),
    ],
)
def test_a_manifest_that_is_not_a_manifest_is_a_store_error(
    copy: Path, text: str, match: str, tmp_path: Path, capsys
) -> None:
    _write_manifest(copy, text)
    _every_reader_refuses(copy, match, capsys, tmp_path)
    _verify_says(copy, "manifest", "manifest.json", capsys)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("rows", "4", "rows must be a non-negative integer; got '4'"),
        ("rows", -4, "rows must be a non-negative integer"),
        ("rows", True, "rows must be a non-negative integer"),
        ("files", ["rows.parquet"], "files must be an object"),
        ("splits", [4], "splits must be an object"),
        ("name", 1, "is not a part name"),
    ],
)
def test_wrong_types_in_the_manifest_are_named(copy: Path, field: str, value, match: str, capsys) -> None:
    doc = _manifest(copy)
    doc["parts"][3][field] = value
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match=match):
        open_store(copy)
    assert _cli(["info", copy], capsys)[0] == 3


@pytest.mark.parametrize("field", ["name", "rows", "items", "files"])
def test_missing_keys_in_the_manifest_are_named(copy: Path, field: str) -> None:
    doc = _manifest(copy)
    del doc["parts"][0][field]
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match=rf"parts\[0\] lacks {field}"):
        open_store(copy)


def test_a_file_entry_without_its_checksum_is_named(copy: Path) -> None:
    doc = _manifest(copy)
    del doc["parts"][0]["files"]["rows.parquet"]["sha256"]
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match="part 00000000: rows.parquet: sha256 must be 64 hex digits"):
        open_store(copy)


def test_a_part_listed_twice_is_refused(copy: Path, tmp_path: Path, capsys) -> None:
    doc = _manifest(copy)
    doc["parts"].append(doc["parts"][0])
    _write_manifest(copy, doc)
    _every_reader_refuses(copy, "part 00000000 is listed twice", capsys, tmp_path)
    _verify_says(copy, "manifest", "listed twice", capsys)


def test_row_counts_that_disagree_with_the_feature_files_are_refused(copy: Path, tmp_path: Path, capsys) -> None:
    doc = _manifest(copy)
    part = doc["parts"][1]
    part["rows"] += 1
    split = next(iter(part["splits"]))
    part["splits"][split] += 1
    _write_manifest(copy, doc)
    _every_reader_refuses(
        copy, "part 00000001: blocks.2.npy is recorded as .* bytes, which does not hold 5 rows", capsys, tmp_path
    )
    _verify_says(copy, "manifest", "does not hold 5 rows", capsys)


def test_a_ledger_count_that_disagrees_with_the_ledger_file_is_refused(copy: Path, capsys) -> None:
    doc = _manifest(copy)
    doc["parts"][2]["items"] += 1
    doc["parts"][2]["failed"] += 1  # consistent counts in the manifest, but not in ledger.parquet
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match="part 00000002: ledger.parquet has 4 rows, the manifest says 5"):
        open_store(copy).ledger()
    info = store_info(copy)  # a summary still comes out, with the damage as a warning
    assert any("ledger.parquet has 4 rows, the manifest says 5" in w for w in info.warnings)
    _verify_says(copy, "parquet", "ledger.parquet has 4 rows, the manifest says 5", capsys)


def test_a_huge_row_count_allocates_nothing(copy: Path, tmp_path: Path, capsys) -> None:
    # a manifest claiming 10^12 rows, its recorded sizes made to agree: only the files on disk disagree
    doc = _manifest(copy)
    part, rows = doc["parts"][0], 10**12
    old_rows = part["rows"]
    part["rows"] = rows
    part["embedded"] += rows - old_rows
    part["items"] += rows - old_rows
    part["splits"] = {next(iter(part["splits"])): rows}
    meta = json.loads((copy / layout.METADATA_FILE).read_text())
    for d in meta["layers"]:
        entry = part["files"][f"{d['key']}.npy"]
        entry["bytes"] += (rows - old_rows) * d["dims"] * 4
    _write_manifest(copy, doc)
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match="part 00000000: blocks.2.npy has .* bytes, the manifest says"):
            export_store(copy, tmp_path / "out_npy", "npy")
        with pytest.raises(StoreError, match="part 00000000"):
            open_store(copy).load()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20 and not (tmp_path / "out_npy").exists()
    assert not any(p.name.startswith(".out_npy") for p in tmp_path.iterdir())
    _verify_says(copy, "files", "part 00000000: blocks.2.npy has", capsys)


# ------------------------------------------------------------------------------- feature files
def _rewrite_npy_header(path: Path, shape: tuple[int, ...], descr: str) -> None:
    """Replace an .npy file's header, keeping its data bytes (and, when possible, its header length)."""
    data = path.read_bytes()
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        payload = data[f.tell() :]
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    path.write_bytes(buf.getvalue() + payload)


def test_an_npy_header_claiming_a_trillion_rows_is_refused(copy: Path, capsys) -> None:
    part = "00000003"
    path = copy / layout.PARTS_DIR / part / "pre_logits.npy"
    _rewrite_npy_header(path, (10**12, 1280), "<f4")
    _rehash(copy, part, "pre_logits.npy")
    store = open_store(copy)
    tracemalloc.start()
    try:
        with pytest.raises(StoreError, match=r"part 00000003: pre_logits.npy has shape \(1000000000000, 1280\)"):
            store.load(layers="pre_logits")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    _verify_says(copy, "array", "shape (1000000000000, 1280)", capsys)


def test_an_npy_dtype_that_is_not_the_stores_is_refused(copy: Path, capsys) -> None:
    part = "00000002"
    path = copy / layout.PARTS_DIR / part / "blocks.2.npy"
    rows = _manifest(copy)["parts"][2]["rows"]
    _rewrite_npy_header(path, (rows, 40), "<i4")  # same bytes, read as integers
    _rehash(copy, part, "blocks.2.npy")
    with pytest.raises(StoreError, match="part 00000002: blocks.2.npy holds int32 values, the store's dtype is float32"):
        open_store(copy).load()
    _verify_says(copy, "array", "holds int32 values", capsys)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_truncated_or_garbage_parquet_file_is_a_store_error(copy: Path, damage: str, tmp_path: Path, capsys) -> None:
    part = "00000001"
    path = copy / layout.PARTS_DIR / part / "rows.parquet"
    data = path.read_bytes()
    path.write_bytes(
        data[: len(data) // 2]
        if damage == "truncated"
        else b"PAR1" + np.random.default_rng(0).bytes(len(data) - 8) + b"PAR1"
    )
    _rehash(copy, part, "rows.parquet")
    with pytest.raises(StoreError, match="part 00000001: rows.parquet cannot be read as Parquet"):
        open_store(copy).load()
    with pytest.raises(StoreError, match="part 00000001: rows.parquet"):
        export_store(copy, tmp_path / "x.parquet", "parquet")
    info = store_info(copy)
    assert any("rows.parquet cannot be read as Parquet" in w for w in info.warnings)
    _verify_says(copy, "parquet", "part 00000001: rows.parquet cannot be read as Parquet", capsys)


def test_extract_refuses_to_resume_into_a_hostile_store(copy: Path, images: Path) -> None:
    args = dict(
        layers="blocks.2,pre_logits", pool="avg", dtype="float32", input_size=64, workers=0, batch_size=16, part_size=4
    )
    doc = _manifest(copy)
    doc["parts"][0]["name"] = "../../elsewhere"
    _write_manifest(copy, doc)
    with pytest.raises(StoreError, match="'../../elsewhere' is not a part name"):
        deepfeat.extract(images, copy, **args)
    shutil.move(str(copy / layout.METADATA_FILE), copy.parent / "meta.json")
    os.symlink(copy.parent / "meta.json", copy / layout.METADATA_FILE)
    before = (copy.parent / "meta.json").read_bytes()
    with pytest.raises(StoreError, match="deepfeat-store.json resolves to .* outside the store"):
        deepfeat.extract(images, copy, **args)
    assert (copy.parent / "meta.json").read_bytes() == before  # the outside file is left alone


# ------------------------------------------------------------------------------- links and special files
def test_a_symlink_to_a_file_outside_the_store_is_not_followed(copy: Path, capsys) -> None:
    part_dir = copy / layout.PARTS_DIR / "00000000"
    outside = copy.parent / "pre_logits.npy"
    shutil.move(str(part_dir / "pre_logits.npy"), outside)  # identical bytes: every checksum still matches
    os.symlink(outside, part_dir / "pre_logits.npy")
    with pytest.raises(StoreError, match="part 00000000: pre_logits.npy resolves to .* outside the store"):
        open_store(copy).load()
    _verify_says(copy, "path", "outside the store", capsys)


def test_a_symlinked_part_folder_or_manifest_outside_the_store_is_refused(copy: Path, tmp_path: Path, capsys) -> None:
    parts = copy / layout.PARTS_DIR
    shutil.move(str(parts / "00000003"), copy.parent / "p3")
    os.symlink(copy.parent / "p3", parts / "00000003")
    with pytest.raises(StoreError, match="part 00000003: .* outside the store"):
        open_store(copy).load()
    _verify_says(copy, "path", "00000003", capsys)
    shutil.move(str(copy / layout.MANIFEST_FILE), copy.parent / "manifest.json")
    os.symlink(copy.parent / "manifest.json", copy / layout.MANIFEST_FILE)
    _every_reader_refuses(copy, "manifest.json resolves to .* outside the store", capsys, tmp_path)


def test_a_fifo_named_like_a_store_file_is_refused_without_hanging(copy: Path, capsys) -> None:
    target = copy / layout.PARTS_DIR / "00000002" / "ledger.parquet"
    target.unlink()
    os.mkfifo(target)
    result: dict = {}

    def run() -> None:
        try:
            open_store(copy).ledger()
        except StoreError as exc:
            result["error"] = str(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "reading a FIFO in the store hung"
    assert "ledger.parquet is not a regular file" in result["error"]
    _verify_says(copy, "path", "not a regular file", capsys)


# ------------------------------------------------------------------------------- bundles
def _bundle_parts(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return json.loads(f.metadata()[META_KEY]), {k: f.get_tensor(k) for k in f.keys()}


def _save_bundle(dst: Path, doc: dict, tensors: dict) -> Path:
    from safetensors.numpy import save_file

    save_file(tensors, dst, metadata={META_KEY: json.dumps(doc)})
    return dst


def test_a_bundle_header_claiming_a_huge_length_is_refused(bundle: Path, tmp_path: Path, capsys) -> None:
    data = bundle.read_bytes()
    bad = tmp_path / "huge.dfm"
    bad.write_bytes(struct.pack("<Q", 1 << 50) + data[8:])
    with pytest.raises(UsageError, match="header claims 1,125,899,906,842,624 bytes"):
        load_bundle(bad)
    # a real 17 MiB header: refused before it is parsed
    doc, tensors = _bundle_parts(bundle)
    doc["training"]["padding"] = "x" * (17 << 20)
    big = _save_bundle(tmp_path / "big.dfm", doc, tensors)
    with pytest.raises(BundleError, match="the limit is 16 MiB"):
        load_bundle(big)
    code, text = _cli(["predict", big, tmp_path], capsys)
    assert code == 3 and "the limit is 16 MiB" in text


def test_a_bundle_with_a_malformed_header_is_refused(bundle: Path, tmp_path: Path) -> None:
    data = bytearray(bundle.read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 + n // 2 : 8 + n // 2 + 6] = b"\xff\xfe{]]}"
    bad = tmp_path / "malformed.dfm"
    bad.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="header is not valid JSON"):
        load_bundle(bad)
    doc, tensors = _bundle_parts(bundle)
    from safetensors.numpy import save_file

    save_file(tensors, tmp_path / "meta.dfm", metadata={META_KEY: '{"format": "deepfeat-bundle", '})
    with pytest.raises(BundleError, match="deepfeat metadata is not valid JSON"):
        load_bundle(tmp_path / "meta.dfm")


def test_bundle_tensors_that_disagree_with_the_metadata_are_refused(bundle: Path, tmp_path: Path) -> None:
    doc, tensors = _bundle_parts(bundle)
    short = dict(tensors, **{"scaler.mean": tensors["scaler.mean"][:-1]})
    with pytest.raises(BundleError, match=r"tensor 'scaler.mean' has shape \[1279\], its metadata implies \[1280\]"):
        load_bundle(_save_bundle(tmp_path / "short.dfm", doc, short))
    coef = {k: v for k, v in tensors.items()}
    coef["head.coef"] = np.zeros((3, 1280), dtype=np.float32)
    with pytest.raises(BundleError, match="head cannot be rebuilt .*head tensor 'coef' has shape"):
        load_bundle(_save_bundle(tmp_path / "coef.dfm", doc, coef))
    # an MLP whose hyperparameters imply ~10^12 parameters from a few kB of tensors: nothing is allocated
    mlp = json.loads(json.dumps(doc))
    mlp["head"]["kind"] = "mlp"
    mlp["head"]["params"]["hidden"] = [1 << 20, 1 << 20]
    tracemalloc.start()
    try:
        with pytest.raises(BundleError, match="implies .* parameters but its tensors hold .*refusing to allocate"):
            load_bundle(_save_bundle(tmp_path / "mlp.dfm", mlp, tensors))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20
    unsafe = json.loads(json.dumps(doc))
    unsafe["layers"][0]["key"] = "../../x"
    with pytest.raises(BundleError, match="is not a layer key"):
        load_bundle(_save_bundle(tmp_path / "key.dfm", unsafe, tensors))


@pytest.mark.parametrize(
    "name, match",
    [
        ("sneaker\nbag,1.0", r"control character '\\n'"),
        ("a\x00b", r"control character '\\x00'"),
        ("x" * 100_000, "must have 1 to 1000 characters; got 100,000"),
        ("", "must have 1 to 1000 characters; got 0"),
        ("bag", "listed twice"),
    ],
)
def test_bundle_class_names_that_break_outputs_are_refused(
    bundle: Path, tmp_path: Path, name: str, match: str, capsys
) -> None:
    doc, tensors = _bundle_parts(bundle)
    doc["classes"][1] = name
    bad = _save_bundle(tmp_path / "classes.dfm", doc, tensors)
    with pytest.raises(BundleError, match=match):
        load_bundle(bad)
    code, text = _cli(["evaluate", bad, tmp_path], capsys)
    assert code == 3 and len(text) < 2000


def test_class_names_with_slashes_stay_data_in_predictions(bundle: Path, images: Path, tmp_path: Path) -> None:
    from deepfeat.predict import predict_images, write_predictions

    doc, tensors = _bundle_parts(bundle)
    names = ["../../escaped", "a/b/c"]
    doc["classes"] = names
    odd = _save_bundle(tmp_path / "odd.dfm", doc, tensors)
    assert load_bundle(odd).classes == names
    imgs = sorted((images / "test" / "bag").iterdir())[:2]
    preds = predict_images(odd, imgs, top_k=2)
    before = set(tmp_path.rglob("*"))
    csv_path = write_predictions(preds, tmp_path / "out" / "p.csv")
    json_path = write_predictions(preds, tmp_path / "out" / "p.json")
    assert set(tmp_path.rglob("*")) - before == {tmp_path / "out", Path(csv_path), Path(json_path)}
    rows = list(csv.DictReader(open(csv_path, newline="", encoding="utf-8")))
    assert len(rows) == 2 and all({r["label_1"], r["label_2"]} == set(names) for r in rows)
    loaded = json.load(open(json_path, encoding="utf-8"))
    assert [r["labels"] for r in loaded] == [p.labels for p in preds]


# ------------------------------------------------------------------------------- checkpoints and config
def test_a_checkpoint_with_a_malformed_document_is_a_clear_error(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from deepfeat.checkpoint import load_state, read_checkpoint_state

    path = tmp_path / "ckpt.safetensors"
    save_file({"x": torch.zeros(2)}, path, metadata={"deepfeat_checkpoint": "[" * 50_000})
    with pytest.raises(UsageError, match="malformed document"):
        read_checkpoint_state(str(path))
    save_file({"x": torch.zeros(2)}, path, metadata={"deepfeat_checkpoint": '"just a string"'})
    with pytest.raises(UsageError, match="malformed document"):
        load_state(str(path))
    path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(UsageError, match="cannot be read"):
        read_checkpoint_state(str(path))


BOMB = """\
a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]
layers: *i
"""


@pytest.mark.parametrize(
    "text, match",
    [
        (BOMB, "expands to more than 100,000 values"),
        ("layers: &x [*x]\n", "refers to itself through an alias"),
        ("layers: [unclosed\n", "is not valid YAML"),
        ("layers: !!python/object/apply:os.system ['echo pwned']\n", "is not valid YAML"),
    ],
)
def test_a_hostile_config_file_is_refused_quickly(store: Path, tmp_path: Path, text: str, match: str, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    start = time.monotonic()
    code, out = _cli(["--config", cfg, "info", store], capsys)
    assert code == 2 and match in out
    assert time.monotonic() - start < 5 and len(out) < 2000


def test_a_config_with_a_few_aliases_still_works(store: Path, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("info:\n  json: &yes true\n  failures: *yes\n")
    code, out = _cli(["--config", cfg, "info", store], capsys)
    assert code == 0 and json.loads(out)["rows_total"] == 16


def test_train_refuses_class_names_a_bundle_cannot_hold_before_training(tmp_path) -> None:
    """A label with a newline (from a list file) is refused up front, not after training."""
    from PIL import Image
    from skimage import data as skdata

    rows = []
    for i, name in enumerate(("chelsea", "coffee", "astronaut", "rocket")):
        p = tmp_path / f"{name}.png"
        Image.fromarray(getattr(skdata, name)()[..., :3]).save(p)
        rows.append([str(p), "cat\nnip" if i % 2 else "plain"])
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    out = tmp_path / "feats"
    deepfeat.extract(listing, out, layers="pre_logits", input_size=32, workers=0, runtime="torch")
    with pytest.raises(UsageError, match="control character"):
        deepfeat.train(out, solver="exact", out=tmp_path / "m.dfm")
    assert not (tmp_path / "m.dfm").exists()

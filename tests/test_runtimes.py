"""The runtime seam: every runtime agrees with torch fp32 on real images, caches its export, falls back cleanly.

Agreement thresholds: per-row cosine >= 0.9999 at fp32; at bf16/fp16 the precision guard's default
(deepfeat.runtimes.guard: every tap's min >= 0.98 and median >= 0.995), on the scikit-image photos at 224 px
and on Fashion-MNIST at 96 px. Runtimes that are not installed,
and bf16 on CPUs without native bf16, skip with the reason.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PHOTOS, photo_array
from PIL import Image

import deepfeat
from deepfeat.agreement import Agreement
from deepfeat.errors import ConfigMismatchError, UsageError
from deepfeat.models import load_backbone
from deepfeat.runtimes import RUNTIMES, build_runtime, layer_specs, resolve_runtime
from deepfeat.runtimes.export import DONE_FILE
from deepfeat.runtimes.guard import DEFAULT_MIN_AGREEMENT, measure

EXPORTED = [n for n in RUNTIMES if n != "torch"]
LAYERS = "blocks.2,blocks.4,pre_logits"


def _available(name: str) -> None:
    reason = RUNTIMES[name].unavailable_reason()
    if reason:
        pytest.skip(reason)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


@pytest.fixture(scope="module")
def photo_pixels() -> np.ndarray:
    pre = load_backbone("efficientnet_lite0").preprocess
    return np.stack([pre.resize_crop(Image.fromarray(photo_array(n)[..., :3])) for n in PHOTOS.values()])


@pytest.fixture(scope="module")
def fm_pixels(fm_dir: Path) -> np.ndarray:
    pre = load_backbone("efficientnet_lite0", input_size=96).preprocess
    files = sorted(fm_dir.glob("train/*/*.png"))[:24]
    return np.stack([pre.resize_crop(Image.open(f).convert("RGB")) for f in files])


def _features(
    runtime: str, precision: str, pixels: np.ndarray, input_size: int | None = None, layers: str = LAYERS
) -> tuple[dict[str, np.ndarray], dict]:
    bb = load_backbone("efficientnet_lite0", input_size=input_size)
    rt = build_runtime(bb, layer_specs(bb, layers), runtime=runtime, precision=precision, fallback=False)
    return rt(pixels), rt.describe()


@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("data", ["photos_224", "fashion_96"])
def test_fp32_agrees_with_torch(name: str, data: str, photo_pixels, fm_pixels) -> None:
    _available(name)
    pixels, size = (photo_pixels, None) if data == "photos_224" else (fm_pixels, 96)
    ref, _ = _features("torch", "fp32", pixels, size)
    got, desc = _features(name, "fp32", pixels, size)
    assert desc["runtime"] == name and desc["precision"] == "fp32"
    for layer in ref:
        assert got[layer].shape == ref[layer].shape and got[layer].dtype == np.float32
        assert min_cosine(got[layer], ref[layer]) >= 0.9999, layer


@pytest.mark.parametrize("name", ["openvino", "torch"])
def test_bf16_agrees_with_torch(name: str, photo_pixels) -> None:
    _available(name)
    try:
        resolve_runtime(name, "cpu", "bf16")
    except UsageError as exc:
        pytest.skip(str(exc))
    from deepfeat.runtimes import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (emulated bf16 is not a configuration anyone should run)")
    ref, _ = _features("torch", "fp32", photo_pixels)
    got, desc = _features(name, "bf16", photo_pixels)
    assert desc["precision"] == "bf16"
    agreement = Agreement(
        "bf16",
        name,
        len(photo_pixels),
        DEFAULT_MIN_AGREEMENT,
        measure(lambda px: got, ref, photo_pixels, batch_size=len(photo_pixels)),
    )
    assert agreement.passed, agreement.summary()  # the guard's default threshold: what auto relies on


@pytest.mark.parametrize("name", [*EXPORTED, "torch"])
def test_imagenet_top1_of_the_cat_is_a_cat_in_every_runtime(name: str, photo_files) -> None:
    _available(name)
    preds = deepfeat.classify_images("efficientnet_lite0", [photo_files["cat"]], top_k=3, runtime=name, workers=0)
    assert preds[0].error is None and preds[0].labels[0] in ("tiger cat", "tabby, tabby cat", "Egyptian cat")


def test_auto_picks_an_exported_runtime_on_the_cpu() -> None:
    installed = [n for n in EXPORTED if RUNTIMES[n].unavailable_reason() is None]
    choice = resolve_runtime("auto", "cpu", "auto")
    assert choice.runtime == (installed[0] if installed else "torch")
    with pytest.raises(UsageError, match="'runtime' parameter must be one of"):
        resolve_runtime("tensorrt", "cpu", "auto")
    with pytest.raises(UsageError, match="runs fp32"):
        resolve_runtime("onnxruntime", "cpu", "fp16")


def test_export_is_cached_and_a_corrupt_entry_is_rebuilt(tmp_path, photo_pixels, caplog) -> None:
    _available("onnxruntime")
    bb = load_backbone("efficientnet_lite0")
    specs = layer_specs(bb, "blocks.4")
    first = build_runtime(bb, specs, runtime="onnxruntime", cache_dir=str(tmp_path), fallback=False)
    (entry,) = [p for p in tmp_path.iterdir() if p.name.startswith("onnxruntime-")]
    record = json.loads((entry / DONE_FILE).read_text())
    assert record["key"]["taps"] == [["blocks.4", "avg"]] and record["key"]["model"]["weights_sha256"]
    model_file = entry / "model.onnx"
    stamp = model_file.stat().st_mtime_ns
    ref = first(photo_pixels)["blocks.4"]

    # A second build (another run, a resume, another worker) loads the cached graph: no new export.
    again = build_runtime(bb, specs, runtime="onnxruntime", cache_dir=str(tmp_path), fallback=False)
    assert model_file.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again(photo_pixels)["blocks.4"], ref)

    # A truncated file is detected by its checksum and the entry rebuilt, with one warning.
    data = model_file.read_bytes()
    model_file.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="deepfeat.runtimes.export"):
        rebuilt = build_runtime(bb, specs, runtime="onnxruntime", cache_dir=str(tmp_path), fallback=False)
    assert any("corrupt" in r.getMessage() for r in caplog.records)
    assert model_file.stat().st_size == len(data)
    np.testing.assert_array_equal(rebuilt(photo_pixels)["blocks.4"], ref)

    # Another tap set is another entry.
    build_runtime(bb, layer_specs(bb, "blocks.4", "max"), runtime="onnxruntime", cache_dir=str(tmp_path))
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("onnxruntime-")]) == 2


@pytest.mark.parametrize("name", EXPORTED)
def test_a_model_that_cannot_be_exported_falls_back_to_torch(name: str, tmp_path, caplog) -> None:
    """A TorchScript model cannot be re-traced with taps: one warning, then torch; strict mode refuses."""
    _available(name)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()
    ts = tmp_path / "net.ts"
    torch.jit.script(net).save(str(ts))
    bb = load_backbone(str(ts), input_size=32)
    specs = layer_specs(bb, "output", "none")
    with caplog.at_level(logging.WARNING, logger="deepfeat.runtimes"):
        rt = build_runtime(bb, specs, runtime=name)
    assert rt.describe()["runtime"] == "torch"
    warnings = [r for r in caplog.records if "falling back to torch" in r.getMessage()]
    assert len(warnings) == 1 and name in warnings[0].getMessage()
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.inference_mode():
        want = net(bb.preprocess.normalize(torch.from_numpy(pixels))).numpy()
    np.testing.assert_allclose(rt(pixels)["output"], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(UsageError, match="cannot run"):
        build_runtime(bb, specs, runtime=name, fallback=False)


def _stop_after_first_part(event: dict) -> None:
    if event["phase"] == "part":
        raise KeyboardInterrupt


def test_store_records_its_runtime_and_a_resume_keeps_it(fm_dir, tmp_path) -> None:
    """``auto`` resumes with the store's runtime; an explicit other runtime is refused (features never mix)."""
    _available("onnxruntime")
    out = tmp_path / "feats"
    kw = dict(layers="pre_logits", input_size=64, workers=0, part_size=30)
    with pytest.raises(KeyboardInterrupt):
        deepfeat.extract(fm_dir, out, runtime="onnxruntime", progress=_stop_after_first_part, **kw)
    meta = json.loads((out / "deepfeat-store.json").read_text())
    assert meta["config"]["runtime"] == "onnxruntime" and meta["runtime"]["runtime"] == "onnxruntime"
    with pytest.raises(ConfigMismatchError, match="runtime"):
        deepfeat.extract(fm_dir, out, runtime="torch", **kw)
    s = deepfeat.extract(fm_dir, out, runtime="auto", **kw)
    assert s.resumed and s.already_done == 30 and s.embedded_total == 80 and s.accounted
    store = deepfeat.open_store(out)
    assert store.metadata["runtime"]["runtime"] == "onnxruntime"

    # The same images through torch fp32: a head trained on one runtime's store scores the same on the other's.
    ref = tmp_path / "ref"
    deepfeat.extract(fm_dir, ref, runtime="torch", precision="fp32", **kw)
    X, _, meta_a = store.load(["pre_logits"], views=0)
    Y, _, meta_b = deepfeat.open_store(ref).load(["pre_logits"], views=0)
    ids_a = meta_a.column("id").to_pylist()
    ids_b = meta_b.column("id").to_pylist()
    order = [ids_a.index(i) for i in ids_b]
    assert min_cosine(X[order], Y) >= 0.9999
    bundle = tmp_path / "m.dfm"
    deepfeat.train(out, layers="pre_logits", solver="exact", out=bundle)
    acc_same = deepfeat.evaluate(bundle, out, split="test")["accuracy"]
    acc_other = deepfeat.evaluate(bundle, ref, split="test")["accuracy"]
    assert abs(acc_same - acc_other) <= 0.005


@pytest.mark.parametrize("name", [*EXPORTED, "torch"])
def test_bundle_predictions_are_bit_identical_to_extraction(name: str, fm_dir, tmp_path) -> None:
    """predict recomputes features with the bundle's own runtime: scores equal the stored features' scores."""
    _available(name)
    out = tmp_path / "feats"
    deepfeat.extract(
        fm_dir / "train",
        out,
        layers="blocks.4,pre_logits",
        input_size=64,
        workers=1,
        runtime=name,
        precision="fp32",
        batch_size=8,
    )
    bundle = tmp_path / "m.dfm"
    deepfeat.train(out, layers="blocks.4,pre_logits", solver="exact", out=bundle)
    b = deepfeat.load_bundle(bundle)
    assert b.metadata["runtime"]["runtime"] == name
    store = deepfeat.open_store(out)
    X, _, meta = store.load(["blocks.4", "pre_logits"], views=0)
    rows = store.rows()
    path_of = dict(zip(rows.column("id").to_pylist(), rows.column("path_bytes").to_pylist()))
    paths = [os.fsdecode(path_of[i]) for i in meta.column("id").to_pylist()]
    want = b.scores(X)
    preds = deepfeat.predict_images(bundle, paths, top_k=len(b.classes), batch_size=8)
    for row, p in enumerate(preds):
        assert p.error is None
        got = dict(zip(p.labels, p.scores))
        assert [got[c] for c in b.classes] == [float(v) for v in want[row]], p.path


def test_cli_runtime_flags(fm_dir, tmp_path) -> None:
    _available("onnxruntime")
    exe = [sys.executable, "-m", "deepfeat.cli"]
    out = tmp_path / "feats"
    r = subprocess.run(
        [
            *exe,
            "extract",
            str(fm_dir / "test"),
            "--out",
            str(out),
            "--input-size",
            "64",
            "--runtime",
            "onnxruntime",
            "--precision",
            "fp32",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "with onnxruntime fp32" in r.stdout + r.stderr
    bad = subprocess.run(
        [*exe, "extract", str(fm_dir / "test"), "--out", str(tmp_path / "x"), "--runtime", "tensorrt"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--runtime must be one of 'auto', 'openvino', 'onnxruntime', 'torch'" in bad.stderr + bad.stdout


@pytest.mark.parametrize("name", EXPORTED)
def test_unpooled_and_mixed_pooling_taps_are_graph_outputs(name: str, fm_pixels) -> None:
    """Any pooling, ``none`` (a whole feature map) included, comes out of the exported graph."""
    _available(name)
    pools = "avgmax,blocks.4=none,blocks.2=max"
    bb = load_backbone("efficientnet_lite0", input_size=96)
    specs = layer_specs(bb, "blocks.2,blocks.4,pre_logits", pools)
    ref = build_runtime(bb, specs, runtime="torch", precision="fp32")(fm_pixels)
    bb2 = load_backbone("efficientnet_lite0", input_size=96)
    got = build_runtime(
        bb2, layer_specs(bb2, "blocks.2,blocks.4,pre_logits", pools), runtime=name, precision="fp32", fallback=False
    )(fm_pixels)
    assert got["blocks.4"].shape == ref["blocks.4"].shape == (len(fm_pixels), 112 * 6 * 6)
    for layer in ref:
        assert min_cosine(got[layer], ref[layer]) >= 0.9999, layer

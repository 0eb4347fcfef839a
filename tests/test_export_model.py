"""``deepfeat export-model`` (issue 27): a bundle or model directory as one ONNX / OpenVINO graph.

Real Fashion-MNIST test images (conftest) and two JPEG photos, the bundled EfficientNet-Lite0 at
64 px. The exported files are run by the snippets of docs/EXPORT.md in a process that never
imports deepfeat (PIL + numpy + ONNX Runtime or OpenVINO only) and compared with
``deepfeat.predict_images(..., precision="fp32")`` on the bundle: identical top-1, probabilities
(and SVM decision values) within 1e-4 at fp32; fp16 weights within 0.03 (measured 0.009).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import deepfeat
from deepfeat.cli import main
from deepfeat.shipping import METADATA_KEYS, export_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
FP32_TOL = 1e-4
FP16_TOL = 0.03

#: runs a docs snippet with sys.argv = [snippet, model, *images] and saves its `scores`
RUNNER = """
import json, runpy, sys
import numpy as np
snippet, model, out, images = sys.argv[1], sys.argv[2], sys.argv[3], json.load(open(sys.argv[4]))
sys.argv = [snippet, model, *images]
ns = runpy.run_path(snippet)
assert not any(m == "deepfeat" or m.startswith("deepfeat.") for m in sys.modules), "deepfeat was imported"
assert "torch" not in sys.modules, "torch was imported"
np.save(out, np.asarray(ns["scores"], dtype=np.float64))
"""


def _snippet(name: str, doc: Path = ROOT / "docs" / "EXPORT.md") -> str:
    m = re.search(rf"<!-- snippet:{name} -->\n```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert m, f"no {name} snippet in {doc}"
    return m.group(1)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_model")


@pytest.fixture(scope="module")
def images(fm_dir: Path, photo_files: dict[str, Path]) -> list[str]:
    """40 Fashion-MNIST test PNGs (28 x 28 gray) and two JPEG photos (decoded in draft mode by deepfeat)."""
    return sorted(str(p) for p in (fm_dir / "test").glob("*/*.png")) + [str(photo_files["cat"]), str(photo_files["coffee"])]


@pytest.fixture(scope="module")
def bundles(fm_dir: Path, work: Path) -> dict[str, Path]:
    """A logreg on two layers (blocks.4 + pre_logits), svm and mlp on pre_logits, from one float32 store."""
    from deepfeat.models import load_backbone

    bb = load_backbone("efficientnet_lite0", input_size=SIZE)
    # Pillow's resize, as the standalone snippet does it: the exported graph is then compared with predict on
    # identical pixels (the default torch resizer is within 1 grey level of it: tests/test_resize.py)
    bb.preprocess = dataclasses.replace(bb.preprocess, resizer="pillow")
    store = work / "store"
    deepfeat.extract(
        fm_dir,
        store,
        layers="blocks.4,pre_logits",
        pool="avg",
        dtype="float32",
        input_size=SIZE,
        workers=0,
        backbone=bb,
        runtime="torch",
        precision="fp32",
    )
    out = {}
    for name, layers, head, extra in (
        ("logreg", "blocks.4,pre_logits", "logreg", {}),
        ("svm", "pre_logits", "svm", {}),
        ("mlp", "pre_logits", "mlp", {"hidden": (32,)}),
    ):
        out[name] = work / f"{name}.dfm"
        deepfeat.train(
            store, layers=layers, head=head, solver="stream", batch_size=32, epochs=5, patience=None, out=out[name], **extra
        )
    return out


def _full(preds, classes: list[str]) -> np.ndarray:
    """N x C scores from predictions made with top_k = C (bundle or backbone predictions)."""
    rows = []
    for p in preds:
        assert p.error is None, p.error
        got = dict(zip(p.labels, p.scores))
        rows.append([got[c] for c in classes])
    return np.asarray(rows)


_REFERENCES: dict[str, tuple[np.ndarray, list[str]]] = {}


def _reference(bundle: Path, images: list[str]) -> tuple[np.ndarray, list[str]]:
    """``deepfeat.predict_images`` of the bundle at fp32 (every class's score), computed once per bundle."""
    from deepfeat.bundle import load_bundle

    key = f"{bundle}:{len(images)}"
    if key not in _REFERENCES:
        b = load_bundle(bundle)
        preds = deepfeat.predict_images(b, images, top_k=len(b.classes), workers=0, precision="fp32")
        _REFERENCES[key] = _full(preds, b.classes), b.classes
    return _REFERENCES[key]


def _standalone(snippet: str, model: Path, images: list[str], tmp: Path) -> np.ndarray:
    """Scores of ``model`` from a docs snippet in a fresh interpreter that cannot import deepfeat from src/."""
    script = tmp / "snippet.py"
    script.write_text(snippet, encoding="utf-8")
    listing = tmp / "images.json"
    listing.write_text(json.dumps(images), encoding="utf-8")
    out = tmp / f"{model.name}.npy"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(script), str(model), str(out), str(listing)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == len(images)
    return np.load(out)


def _agree(got: np.ndarray, want: np.ndarray, tol: float) -> None:
    assert got.shape == want.shape
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))
    assert float(np.max(np.abs(got - want))) <= tol


def test_onnx_export_runs_without_deepfeat_and_matches_predict(bundles, images, work, tmp_path, capsys) -> None:
    """CLI export of a two-layer logreg bundle; the README/EXPORT.md snippet reproduces predict at fp32."""
    import onnx

    out = work / "logreg.onnx"
    assert main(["export-model", str(bundles["logreg"]), "--out", str(out)]) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    assert len(summary) == 1 and "exported logreg classifier (10 classes, 64x64" in summary[0]
    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert set(meta) == {f"deepfeat.{k}" for k in METADATA_KEYS}
    assert json.loads(meta["deepfeat.classes"])[:2] == ["ankle_boot", "bag"]
    assert json.loads(meta["deepfeat.input_size"]) == [SIZE, SIZE] and meta["deepfeat.resize_size"] == "73"
    assert meta["deepfeat.backbone"] == "efficientnet_lite0" and len(meta["deepfeat.backbone_sha256"]) == 64
    assert meta["deepfeat.head"] == "logreg" and meta["deepfeat.deepfeat_version"] == deepfeat.__version__
    assert [d["name"] for d in json.loads(meta["deepfeat.layers"])] == ["blocks.4", "pre_logits"]
    (pixels,) = model.graph.input
    dims = pixels.type.tensor_type.shape.dim
    assert pixels.name == "pixels" and dims[0].dim_param and [d.dim_value for d in dims[1:]] == [SIZE, SIZE, 3]
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert _snippet("onnxruntime") == _snippet("onnxruntime", ROOT / "README.md"), "README and EXPORT.md differ"
    want, _ = _reference(bundles["logreg"], images)
    _agree(_standalone(_snippet("onnxruntime"), out, images, tmp_path), want, FP32_TOL)


@pytest.mark.parametrize("name", ["svm", "mlp"])
def test_svm_and_mlp_heads(name, bundles, images, work, tmp_path) -> None:
    """SVM decision values (as predict reports them) and an MLP: the same agreement."""
    r = export_model(bundles[name], work / name, format="onnx")
    assert r.path.endswith(f"{name}.onnx") and r.max_abs_diff < 1e-4
    want, classes = _reference(bundles[name], images)
    assert r.classes == classes
    assert r.metadata["score_kind"] == ("decision" if name == "svm" else "probability")
    _agree(_standalone(_snippet("onnxruntime"), Path(r.path), images, tmp_path), want, FP32_TOL)


def test_openvino_export_and_predict_reads_it(bundles, images, work, tmp_path, fm_dir) -> None:
    """OpenVINO IR: the OpenVINO-only snippet, and `deepfeat predict clf.xml` through the CLI."""
    r = export_model(bundles["logreg"], work / "logreg_ov.xml", format="openvino")
    assert os.path.isfile(work / "logreg_ov.bin") and r.files == [str(work / "logreg_ov.bin")]
    want, classes = _reference(bundles["logreg"], images)
    _agree(_standalone(_snippet("openvino"), Path(r.path), images, tmp_path), want, FP32_TOL)
    # the round trip in one command, CSV like any predict
    csv_out = tmp_path / "preds.json"
    assert main(["predict", r.path, *images, "--top-k", "10", "--workers", "0", "--out", str(csv_out)]) == 0
    rows = json.loads(csv_out.read_text())
    got = np.asarray([[dict(zip(row["labels"], row["scores"]))[c] for c in classes] for row in rows])
    _agree(got, want, FP32_TOL)


def test_predict_accepts_an_onnx_file(bundles, images, work, tmp_path) -> None:
    """`deepfeat predict clf.onnx images/` prints predict's usual lines; errors stay per image."""
    out = work / "logreg.onnx"
    if not out.exists():
        export_model(bundles["logreg"], out)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    preds = deepfeat.predict_images(out, [*images[:3], str(bad)], top_k=2, workers=0)
    assert [p.error is None for p in preds] == [True, True, True, False]
    ref = deepfeat.predict_images(bundles["logreg"], images[:3], top_k=2, workers=0, precision="fp32")
    assert [p.labels for p in preds[:3]] == [p.labels for p in ref]
    csv_out = tmp_path / "preds.csv"
    assert main(["predict", str(out), *images[:3], "--workers", "0", "--out", str(csv_out)]) == 0
    assert csv_out.read_text().splitlines()[0].startswith("path,label_1,score_1")


def test_fp16_weights_agree_within_a_stated_tolerance(bundles, images, work, tmp_path) -> None:
    """fp16: backbone weights stored as float16 (half the file); probabilities within 0.03 (measured 0.009)."""
    fp32 = work / "mlp.onnx"
    if not fp32.exists():
        export_model(bundles["mlp"], fp32)
    r = export_model(bundles["mlp"], work / "mlp16.onnx", precision="fp16")
    assert r.metadata["precision"] == "fp16" and r.bytes < 0.6 * os.path.getsize(fp32)
    want, _ = _reference(bundles["mlp"], images)
    got = _standalone(_snippet("onnxruntime"), Path(r.path), images, tmp_path)
    diff = float(np.max(np.abs(got - want)))
    assert diff <= FP16_TOL, diff
    assert np.mean(got.argmax(axis=1) == want.argmax(axis=1)) >= 0.95


def test_a_model_directory_exports_its_own_classifier(fm_dir, images, work, tmp_path) -> None:
    """A train-cnn model directory: its classifier + softmax, as `deepfeat predict DIR` computes it."""
    from deepfeat.cnn.training import train_cnn
    from deepfeat.predict import predict_images

    model_dir = work / "cnn"
    train_cnn(fm_dir, model_dir, epochs=1, workers=0, device="cpu", batch_size=32)
    out = work / "cnn.onnx"
    assert main(["export-model", str(model_dir), "--out", str(out)]) == 0
    preds = predict_images(str(model_dir), images, top_k=10, workers=0, runtime="torch", precision="fp32")
    from deepfeat.models.trained import read_model_config

    classes = read_model_config(model_dir)["classes"]
    want = _full(preds, classes)
    _agree(_standalone(_snippet("onnxruntime"), out, images, tmp_path), want, FP32_TOL)


def test_a_vit_token_bundle(fm_dir, images, work, tmp_path) -> None:
    """A tiny DINOv2 with 4 registers (random weights, a timm model folder): class token + patch average of
    a block and the pre_logits tokens; bicubic resize, crop_pct 1.0."""
    import timm
    import torch
    from timm.models import save_for_hf

    folder = work / "dinov2"
    torch.manual_seed(1)
    vit = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, depth=2, embed_dim=48, num_heads=2
    )
    save_for_hf(vit, folder, safe_serialization=True)
    store = work / "vit_store"
    deepfeat.extract(
        fm_dir,
        store,
        model=str(folder),
        layers="blocks.1,pre_logits",
        pool={"blocks.1": "clsavg", "pre_logits": "none"},
        workers=0,
        runtime="torch",
        precision="fp32",
    )
    bundle = work / "vit.dfm"
    deepfeat.train(store, head="logreg", solver="stream", batch_size=32, epochs=5, patience=None, out=bundle)
    r = export_model(bundle, work / "vit.onnx")
    assert r.metadata["interpolation"] == "bicubic" and r.metadata["resize_size"] == "56"
    want, _ = _reference(bundle, images)
    _agree(_standalone(_snippet("onnxruntime"), Path(r.path), images, tmp_path), want, FP32_TOL)


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize(
    "kind, params",
    [
        ("logreg", {}),
        ("svm", {}),
        ("svm", {"fit_intercept": False}),
        ("mlp", {"hidden": (8,), "activation": "tanh"}),
        ("mlp", {"hidden": (8, 4), "activation": "gelu"}),
    ],
)
def test_head_ops_match_the_heads(kind, params, n_classes) -> None:
    """The torch ops of every head (binary: sigmoid / [-d, d]) give the scores Bundle.scores gives."""
    import torch

    from deepfeat.heads import HEADS
    from deepfeat.shipping import _head_module

    rng = np.random.default_rng(n_classes)
    X = rng.normal(size=(60, 5)).astype(np.float32)
    y = np.arange(60) % n_classes
    head = HEADS[kind](random_state=0, max_iter=5, **params).fit(X, y)
    if kind == "svm":
        d = head.decision_function(X)
        want = np.column_stack([-d, d]) if d.ndim == 1 else d
    else:
        want = head.predict_proba(X)
    with torch.no_grad():
        got = _head_module(kind, head)(torch.from_numpy(X)).numpy()
    assert got.shape == (60, n_classes)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_inputs_exit_with_the_documented_status(bundles, work, tmp_path, capsys) -> None:
    """A damaged bundle exits 3; a TorchScript backbone exits 2 naming why; an existing --out needs --overwrite."""
    import torch

    from deepfeat.bundle import save_bundle
    from deepfeat.data.preprocess import Preprocess
    from deepfeat.heads import LogisticHead, StreamingScaler
    from deepfeat.store.layerspec import LayerSpec

    damaged = tmp_path / "damaged.dfm"
    data = bytearray(bundles["logreg"].read_bytes())
    n = struct.unpack("<Q", data[:8])[0]
    data[8 + n // 2 : 8 + n // 2 + 6] = b"\xff\xfe{]]}"  # inside the header's JSON
    damaged.write_bytes(bytes(data))
    assert main(["export-model", str(damaged), "--out", str(tmp_path / "d.onnx")]) == 3
    assert "damaged" in capsys.readouterr().err
    assert not (tmp_path / "d.onnx").exists()

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()
    ts = tmp_path / "net.ts"
    torch.jit.script(net).save(str(ts))
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 2)), np.r_[np.zeros(10), np.ones(10)].astype(int).astype(str)
    ts_bundle = save_bundle(
        tmp_path / "ts.dfm",
        backbone={"name": str(ts), "family": "torchscript", "weights": str(ts), "weights_sha256": None},
        preprocess=Preprocess(input_size=(32, 32)).to_dict(),
        layers=[LayerSpec("output", "output", (2,), "none", 2)],
        dtype="float32",
        scaler=StreamingScaler().fit(X),
        head=LogisticHead(random_state=0).fit(X, y),
        head_kind="logreg",
        classes=["0", "1"],
    )
    assert main(["export-model", ts_bundle, "--out", str(tmp_path / "ts.onnx")]) == 2
    err = capsys.readouterr().err
    assert "TorchScript" in err and "cannot be exported" in err

    existing = tmp_path / "exists.onnx"
    existing.write_bytes(b"keep me")
    assert main(["export-model", str(bundles["logreg"]), "--out", str(existing)]) == 2
    assert "--overwrite" in capsys.readouterr().err and existing.read_bytes() == b"keep me"
    assert main(["export-model", str(bundles["logreg"]), "--out", str(tmp_path / "x.xml")]) == 2  # onnx needs .onnx
    assert ".onnx" in capsys.readouterr().err
    # predict on ONNX files that are not deepfeat classifiers: a foreign graph exits 2, garbage exits 3
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(foreign))
    assert main(["predict", str(foreign), str(tmp_path), "--workers", "0"]) == 2
    assert "not a classifier exported by 'deepfeat export-model'" in capsys.readouterr().err
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 10)
    assert main(["predict", str(garbage), str(tmp_path), "--workers", "0"]) == 3
    assert "cannot be loaded" in capsys.readouterr().err

    not_a_model = tmp_path / "notes.txt"
    not_a_model.write_text("hello")
    assert main(["export-model", str(not_a_model), "--out", str(tmp_path / "n.onnx")]) == 2
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]

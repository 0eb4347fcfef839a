"""Train / evaluate / predict on real Fashion-MNIST features, through the API and the CLI."""

from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
from killing import kill_at_marker
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

import deepfeat
from deepfeat.bundle import META_KEY, is_bundle, load_bundle
from deepfeat.cli import main
from deepfeat.errors import StoreError, UsageError
from deepfeat.trainrows import holdout_mask

LAYERS = "blocks.4,pre_logits"
CHANCE = 0.1


@pytest.fixture(scope="module")
def bb64():
    from deepfeat.models import load_backbone

    return load_backbone("efficientnet_lite0", input_size=64)


@pytest.fixture(scope="module")
def fm30(tmp_path_factory) -> Path:
    """600 real Fashion-MNIST images: train/<class>/ and test/<class>/, 30 per class and split."""
    from deepfeat.datasets import write_fashion_mnist

    root = tmp_path_factory.mktemp("fm30") / "fm"
    write_fashion_mnist(root, per_class=30)
    return root


@pytest.fixture(scope="module")
def store(fm30, bb64, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "fm"
    # fp32: predict's recomputation of the stored features is bit for bit at fp32 (test_cli_train_evaluate_predict);
    # reduced precisions promise the guard's agreement instead (test_predict_at_bf16_agrees_within_the_guard)
    s = deepfeat.extract(
        fm30, out, layers=LAYERS, pool="avg", dtype="float16", input_size=64, workers=1, backbone=bb64, precision="fp32"
    )
    assert s.embedded_total == 600 and s.failed_total == 0
    return out


@pytest.fixture(scope="module")
def unpooled_store(fm30, bb64, tmp_path_factory) -> Path:
    """blocks.2 without pooling: 40 x 8 x 8 = 2,560 dims per image, in 4 parts."""
    out = tmp_path_factory.mktemp("stores") / "fm_none"
    deepfeat.extract(
        fm30, out, layers="blocks.2", pool="none", dtype="float16", input_size=64, workers=1, part_size=150, backbone=bb64
    )
    return out


@pytest.fixture(scope="module")
def logreg(store, tmp_path_factory):
    """A streaming logistic regression on pre_logits, saved as a bundle."""
    path = tmp_path_factory.mktemp("bundles") / "logreg.dfm"
    return deepfeat.train(
        store, layers="pre_logits", head="logreg", solver="stream", batch_size=32, epochs=30, patience=None, out=path
    )


def features_of_test(store, layers):
    X, y, _ = deepfeat.open_store(store).load(layers, "test")
    return X, y


def accuracy(result, store, layers) -> float:
    X, y = features_of_test(store, layers)
    return float(np.mean(result.predict(X) == y))


# ----------------------------------------------------------------------------- training
def test_streaming_logreg_is_close_to_exact_sklearn(store, logreg):
    st = deepfeat.open_store(store)
    assert logreg.solver == "stream" and logreg.n_train + logreg.n_val == 300
    acc_stream = accuracy(logreg, store, ["pre_logits"])
    # scikit-learn's exact solver on the same rows (train minus the hashed hold-out), same objective
    X, y, meta = st.load(["pre_logits"], "train")
    keep = ~holdout_mask(meta.column("id").to_pylist(), 0.1)
    scaler = StandardScaler().fit(X[keep])
    ref = LogisticRegression(C=1 / (1e-4 * keep.sum()), max_iter=3000).fit(scaler.transform(X[keep]), y[keep])
    Xt, yt = features_of_test(store, ["pre_logits"])
    acc_ref = float(ref.score(scaler.transform(Xt), yt))
    exact = deepfeat.train(store, layers="pre_logits", solver="exact")
    acc_exact = accuracy(exact, store, ["pre_logits"])
    print(
        f"\nFashion-MNIST 64px, 272 train rows, pre_logits: stream {acc_stream:.3f}, train(solver='exact') "
        f"{acc_exact:.3f}, sklearn LogisticRegression {acc_ref:.3f}"
    )
    assert acc_stream > 0.6 and acc_ref > 0.6
    assert abs(acc_stream - acc_ref) <= 0.03
    assert abs(acc_exact - acc_ref) <= 0.01
    assert exact.solver == "exact" and not exact.history
    assert len(logreg.history) == 30 and all(h["val_accuracy"] is not None for h in logreg.history)
    assert logreg.history[-1]["train_loss"] < logreg.history[0]["train_loss"]


def test_streaming_never_loads_the_store(store, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("streaming training must not load the store into memory")

    monkeypatch.setattr(deepfeat.FeatureStore, "load", refuse)
    r = deepfeat.train(store, layers="pre_logits", head="logreg", solver="auto", memory_budget=100_000, epochs=2)
    assert r.solver == "stream"  # 272 x 1280 float32 rows do not fit in 100 kB
    assert deepfeat.train(store, layers="pre_logits", solver="auto", epochs=1).solver == "exact"


def test_svm_and_mlp_on_concatenated_layers(store):
    svm = deepfeat.train(store, layers=LAYERS, head="svm", solver="stream", batch_size=32, epochs=15)
    mlp = deepfeat.train(store, layers=LAYERS, head="mlp", hidden=(64,), batch_size=32, epochs=15)
    assert svm.scaler.n_features_in_ == mlp.scaler.n_features_in_ == 112 + 1280
    assert [s.name for s in svm.layers] == ["blocks.4", "pre_logits"]
    acc_svm, acc_mlp = accuracy(svm, store, ["blocks.4", "pre_logits"]), accuracy(mlp, store, ["blocks.4", "pre_logits"])
    print(f"\nblocks.4+pre_logits: svm {acc_svm:.3f}, mlp(64) {acc_mlp:.3f}")
    assert acc_svm > 0.6 and acc_mlp > 0.6
    balanced = deepfeat.train(store, layers="blocks.4", head="logreg", class_weight="balanced", epochs=3)
    assert accuracy(balanced, store, ["blocks.4"]) > 3 * CHANCE


def test_seed_mlp_256_16_on_unpooled_features_from_disk(unpooled_store, monkeypatch):
    monkeypatch.setattr(deepfeat.FeatureStore, "load", lambda *a, **k: pytest.fail("store loaded"))
    st = deepfeat.open_store(unpooled_store)
    assert st.layer("blocks.2").pool == "none" and st.layer("blocks.2").dims == 2560 and len(st.parts) == 4
    r = deepfeat.train(st, head="mlp", hidden="256,16", batch_size=32, epochs=8, memory_budget="2MiB", seed=1)
    assert r.solver == "stream"
    assert [w.shape for w in r.head.coefs_] == [(2560, 256), (256, 16), (16, 10)]
    monkeypatch.undo()
    acc = accuracy(r, unpooled_store, ["blocks.2"])
    print(f"\nunpooled blocks.2 (2560 dims) -> 256 -> 16 -> 10: test accuracy {acc:.3f}")
    assert acc > 3 * CHANCE


def test_augmented_views_train_only_and_tta(fm_dir, bb64, tmp_path):
    out = tmp_path / "views"
    deepfeat.extract(
        fm_dir,
        out,
        layers="pre_logits",
        dtype="float16",
        input_size=64,
        workers=0,
        views=1,
        views_splits=("train", "test"),
        backbone=bb64,
    )
    st = deepfeat.open_store(out)
    assert st.num_rows("train") == st.num_rows("test") == 80  # 40 images x (original + 1 augmented view)
    r = deepfeat.train(st, solver="exact", val_fraction=0.25, out=tmp_path / "v.dfm")
    ids = st.rows(["id", "split", "view"]).to_pylist()
    train_ids = [row["id"] for row in ids if row["split"] == "train" and row["view"] == 0]
    held = int(holdout_mask(train_ids, 0.25).sum())
    assert r.n_val == held and r.n_train == 2 * (40 - held)  # views train; validation is view 0 only
    plain = deepfeat.evaluate(tmp_path / "v.dfm", st, split="test")
    tta = deepfeat.evaluate(tmp_path / "v.dfm", st, split="test", tta=True)
    assert plain["n"] == tta["n"] == 40 and plain["views_averaged"] == 1 and tta["views_averaged"] == 2
    assert plain["accuracy"] > CHANCE and tta["accuracy"] > CHANCE


# ----------------------------------------------------------------------------- bundles
def test_bundle_roundtrip_gives_identical_scores(store, logreg):
    path = logreg.bundle_path
    assert is_bundle(path) and path.endswith(".dfm")
    with open(path, "rb") as f:
        assert b"pickle" not in f.read()
    b = load_bundle(path)
    assert b.classes == logreg.classes and b.layer_names == ["pre_logits"] and b.head_kind == "logreg"
    meta = b.metadata
    st = deepfeat.open_store(store)
    assert meta["backbone"]["weights_sha256"] == st.metadata["model"]["weights_sha256"]
    assert meta["preprocess"]["input_size"] == [64, 64] and meta["dtype"] == "float16"
    assert meta["validation"]["accuracy"] == logreg.validation["accuracy"]
    assert meta["training"]["head"] == "logreg" and len(meta["history"]) == 30
    X, _ = features_of_test(store, ["pre_logits"])
    np.testing.assert_array_equal(b.scores(X), logreg.scores(X))


def test_mlp_bundle_roundtrip(store, tmp_path):
    r = deepfeat.train(store, layers=LAYERS, head="mlp", hidden=(32, 8), epochs=2, out=tmp_path / "mlp.dfm")
    b = load_bundle(tmp_path / "mlp.dfm")
    X, _ = features_of_test(store, ["blocks.4", "pre_logits"])
    np.testing.assert_array_equal(b.scores(X), r.scores(X))
    assert b.metadata["head"]["params"]["hidden"] == [32, 8]


def _rewrite_metadata(src: Path, dst: Path, edit) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    with safe_open(src, framework="np") as f:
        doc = json.loads(f.metadata()[META_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    edit(doc)
    save_file(tensors, dst, metadata={META_KEY: json.dumps(doc)})


def test_tampered_weights_hash_is_refused(logreg, fm30, tmp_path):
    bad = tmp_path / "tampered.dfm"
    _rewrite_metadata(Path(logreg.bundle_path), bad, lambda d: d["backbone"].__setitem__("weights_sha256", "0" * 64))
    with pytest.raises(UsageError, match="backbone weights do not match the bundle"):
        load_bundle(bad).load_backbone()
    img = next((fm30 / "test" / "bag").iterdir())
    with pytest.raises(UsageError, match="sha256 0000"):
        deepfeat.predict_images(bad, [img])
    assert main(["predict", str(bad), str(img)]) == 2


def test_bundle_on_a_store_with_other_layers_is_refused(logreg, unpooled_store, store, tmp_path):
    with pytest.raises(UsageError, match=r"needs layer 'pre_logits' \(avg, 1280 dims\).*has: blocks.2 \(none, 2560"):
        deepfeat.evaluate(logreg.bundle_path, unpooled_store)
    other = tmp_path / "other.dfm"
    _rewrite_metadata(Path(logreg.bundle_path), other, lambda d: d["preprocess"].__setitem__("input_size", [96, 96]))
    with pytest.raises(UsageError, match="other preprocessing"):
        deepfeat.evaluate(other, store)
    assert main(["evaluate", logreg.bundle_path, str(unpooled_store)]) == 2


# ----------------------------------------------------------------------------- bad requests
def test_bad_requests_name_the_problem(store, logreg, photo_files, bb64, tmp_path):
    with pytest.raises(
        UsageError,
        match=r"The 'head' parameter of train must be one of 'logreg', 'svm', 'mlp'; "
        r"got 'tree' instead\.",
    ):
        deepfeat.train(store, head="tree")
    with pytest.raises(UsageError, match="'exact' only for head 'logreg' or 'svm'"):
        deepfeat.train(store, head="mlp", solver="exact")
    with pytest.raises(UsageError, match="The store has no layer 'blocks.9'"):
        deepfeat.train(store, layers="blocks.9")
    with pytest.raises(
        UsageError,
        match=r"The 'split' parameter of evaluate must be a split of the store .* "
        r"\(it has: 'test', 'train'; or 'all'\); got 'val' instead\.",
    ):
        deepfeat.evaluate(logreg.bundle_path, store, split="val")
    assert main(["evaluate", logreg.bundle_path, str(store), "--split", "val"]) == 2
    assert main(["train", str(store), "--head", "tree", "--out", str(tmp_path / "x.dfm")]) == 2

    # unlabelled images (a flat folder), with the bundle's layers
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in photo_files.values():
        shutil.copy(p, flat)
    deepfeat.extract(flat, tmp_path / "flat_store", layers=LAYERS, pool="avg", dtype="float16", workers=0, backbone=bb64)
    with pytest.raises(UsageError, match="4 rows of the store .* have no label"):
        deepfeat.train(tmp_path / "flat_store")
    with pytest.raises(UsageError, match="have no label; evaluate needs labelled rows"):
        deepfeat.evaluate(logreg.bundle_path, tmp_path / "flat_store", split="all")

    # one class only
    listing = tmp_path / "one_class.csv"
    listing.write_text("path,label\n" + "".join(f"{p},cat\n" for p in photo_files.values()))
    deepfeat.extract(listing, tmp_path / "one_store", layers="pre_logits", dtype="float16", workers=0, backbone=bb64)
    with pytest.raises(UsageError, match=r"needs at least 2 classes; .* have 1 class \('cat'\)"):
        deepfeat.train(tmp_path / "one_store")

    # an empty store: every input failed
    broken = tmp_path / "broken" / "a"
    broken.mkdir(parents=True)
    (broken / "x.png").write_bytes(b"not an image")
    deepfeat.extract(broken.parent, tmp_path / "empty_store", layers="pre_logits", workers=0, backbone=bb64)
    with pytest.raises(StoreError, match="holds no rows"):
        deepfeat.train(tmp_path / "empty_store")
    assert main(["train", str(tmp_path / "empty_store"), "--out", str(tmp_path / "e.dfm")]) == 3


def test_two_classes_from_an_unsplit_list(photo_files, bb64, tmp_path):
    listing = tmp_path / "two.csv"
    rows = [(p, "cat" if k in ("cat", "coffee") else "other") for k, p in photo_files.items()]
    listing.write_text("path,label\n" + "".join(f"{p},{lbl}\n" for p, lbl in rows))
    deepfeat.extract(listing, tmp_path / "two", layers="pre_logits", dtype="float16", workers=0, backbone=bb64)
    for head in ("logreg", "svm"):
        r = deepfeat.train(
            tmp_path / "two",
            head=head,
            solver="stream",
            val_fraction=0,
            epochs=30,
            batch_size=2,
            out=tmp_path / f"{head}.dfm",
        )
        assert r.classes == ["cat", "other"] and r.n_train == 4 and r.head.coef_.shape == (1, 1280)
        report = deepfeat.evaluate(tmp_path / f"{head}.dfm", tmp_path / "two", split="all")
        assert (
            report["n"] == 4
            and report["accuracy"] == 1.0
            and report["scores"] == ("probability" if head == "logreg" else "decision")
        )


# ----------------------------------------------------------------------------- the CLI chain
def test_cli_train_evaluate_predict(store, fm30, tmp_path, capsys):
    model = tmp_path / "m.dfm"
    assert (
        main(
            [
                "train",
                str(store),
                "--layers",
                "pre_logits",
                "--head",
                "logreg",
                "--solver",
                "stream",
                "--batch-size",
                "32",
                "--epochs",
                "8",
                "--out",
                str(model),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "epoch 1/8" in out and "saved" in out and model.is_file()

    rep = tmp_path / "rep"
    assert main(["evaluate", str(model), str(store), "--split", "test", "--out", str(rep)]) == 0
    for name in ("report.txt", "report.json", "confusion_matrix.csv", "confusion_matrix.png", "predictions.csv"):
        assert (rep / name).stat().st_size > 0, name
    assert (rep / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((rep / "report.json").read_text())
    cm = np.asarray(report["confusion_matrix"]["matrix"])
    labels = report["confusion_matrix"]["labels"]
    assert cm.sum() == report["n"] == 300 and len(labels) == 10
    assert report["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert report["top_k"]["top_1"] == pytest.approx(report["accuracy"])
    assert report["top_k"]["top_3"] >= report["accuracy"] and report["accuracy"] > 0.6
    for i, name in enumerate(labels):
        m = report["per_class"][name]
        assert m["support"] == cm[i].sum() == 30
        assert m["recall"] == pytest.approx(cm[i, i] / cm[i].sum())
        assert m["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum() if cm[:, i].sum() else 0.0)
    assert report["macro_avg"]["recall"] == pytest.approx(np.mean(np.diag(cm) / cm.sum(axis=1)))
    with open(rep / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == labels and [int(v) for v in rows[1][1:]] == cm[0].tolist()
    assert "precision" in (rep / "report.txt").read_text()
    with pytest.raises(UsageError, match="holds none"):  # no augmented views here: tta would be a no-op
        deepfeat.evaluate(model, store, split="test", tta=True)

    # predict on a test class folder, a list file and a bad file, end to end from the images
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{p}\n" for p in sorted((fm30 / "test" / "sneaker").iterdir())[:10]))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    preds_csv = tmp_path / "preds.csv"
    inputs = [str(fm30 / "test" / "coat"), str(bad), str(listing), str(empty), str(tmp_path / "missing.png")]
    assert main(["predict", str(model), *inputs, "--top-k", "3", "--out", str(preds_csv)]) == 0
    with open(preds_csv, newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == 43  # input order: 30 coats, bad.png, 10 sneakers, empty.jpg, missing.png
    assert [p["path"] for p in preds[30:31] + preds[41:]] == [str(bad), str(empty), str(tmp_path / "missing.png")]
    reasons = [p["error"].split(":")[0] for p in preds if p["error"]]
    assert reasons[0] in ("decode_error", "truncated") and reasons[1:] == ["unidentified", "missing"]
    assert "not found" in preds[-1]["error"]  # a path that never existed did not "vanish"
    with open(rep / "predictions.csv", newline="") as f:
        by_path = {os.path.realpath(r["path"]): r for r in csv.DictReader(f)}
    agree, diffs = 0, []
    for p in preds:
        if p["error"]:
            continue
        assert p["label_3"] and float(p["score_1"]) >= float(p["score_2"]) >= float(p["score_3"])
        ref = by_path[os.path.realpath(p["path"])]
        agree += p["label_1"] == ref["predicted"]
        diffs.append(abs(float(p["score_1"]) - float(ref["score"])))
    assert agree >= 39 and np.median(diffs) < 1e-3

    from deepfeat.prediction import Prediction

    js = deepfeat.write_predictions(
        [
            Prediction(p["path"], [p["label_1"]], [float(p["score_1"])])
            if not p["error"]
            else Prediction(p["path"], error=p["error"])
            for p in preds
        ],
        tmp_path / "preds.json",
    )
    data = json.loads(Path(js).read_text())
    assert len(data) == 43 and data[0]["labels"] and data[30]["error"] and data[30]["labels"] == []


# ----------------------------------------------------------------------------- scikit-learn transformer
def test_feature_extractor_in_a_pipeline(fm_dir, photo_files):
    def split(name):
        paths = sorted(str(p) for p in (fm_dir / name).glob("*/*.png"))
        return paths, [Path(p).parent.name for p in paths]

    train_x, train_y = split("train")
    test_x, test_y = split("test")
    fx = deepfeat.FeatureExtractor(layers="pre_logits", pool="avg", input_size=64)
    assert all(isinstance(v, (str, int, type(None))) for v in fx.get_params().values())
    pipe = Pipeline([("features", fx), ("clf", LogisticRegression(max_iter=2000))])
    pipe.fit(train_x, train_y)
    acc = pipe.score(test_x, test_y)
    print(f"\nFeatureExtractor + LogisticRegression on 40 Fashion-MNIST images: test accuracy {acc:.3f}")
    assert acc > 3 * CHANCE
    features = pipe.named_steps["features"]
    assert "_computer_obj" not in copy.deepcopy(features).__dict__  # the network is never copied
    assert clone(pipe).named_steps["features"].get_params() == fx.get_params()

    from conftest import photo_array
    from PIL import Image

    photos = [Image.open(photo_files["cat"]), photo_array("coffee"), str(photo_files["rocket"])]
    Z = features.transform(photos)
    assert Z.shape == (3, 1280) and np.isfinite(Z).all()
    np.testing.assert_allclose(features.transform([str(photo_files["cat"])])[0], Z[0], rtol=1e-5, atol=1e-5)
    assert features.get_feature_names_out()[0] == "pre_logits_0"
    with pytest.raises(UsageError, match=r"Image 1 \(.*missing.png\) of the X of FeatureExtractor cannot be used"):
        features.transform([str(photo_files["cat"]), "/nonexistent/missing.png"])


def test_seed_network_100352_256_16_2_trains_from_disk(fm_dir, tmp_path, monkeypatch):
    """The seed's network: unpooled ResNet-50 layer4 (7x7x2048) -> 256 -> 16 -> 2, two classes, from disk."""
    src = tmp_path / "two"
    for split in ("train", "test"):
        for cls in ("trouser", "bag"):
            shutil.copytree(fm_dir / split / cls, src / split / cls)
    out = tmp_path / "layer4"
    deepfeat.extract(
        src,
        out,
        model="timm:resnet50",
        weights="random",
        layers="layer4",
        pool="none",
        dtype="float16",
        workers=0,
        batch_size=4,
        part_size=4,
    )
    st = deepfeat.open_store(out)
    assert st.layer("layer4").dims == 100_352 and len(st.parts) == 4
    monkeypatch.setattr(deepfeat.FeatureStore, "load", lambda *a, **k: pytest.fail("store loaded"))
    r = deepfeat.train(
        st,
        head="mlp",
        hidden="256,16",
        batch_size=4,
        epochs=3,  # what it proves is the shape and that it streams from disk: 30 epochs took 88 s
        lr=1e-3,
        val_fraction=0.0,
        patience=None,
        memory_budget="8MiB",
        seed=0,
        out=tmp_path / "seed.dfm",
    )
    monkeypatch.undo()
    assert r.solver == "stream" and r.classes == ["bag", "trouser"]
    assert [w.shape for w in r.head.coefs_] == [(100_352, 256), (256, 16), (16, 2)]
    X, y, _ = st.load("layer4", split="train")
    proba = r.scores(X)
    assert proba.shape == (8, 2) and np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert float(np.mean(r.predict(X) == y)) == 1.0  # 25.7M weights fit 8 training rows exactly
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"] / 2
    rep = deepfeat.evaluate(tmp_path / "seed.dfm", out, split="test")
    assert rep["n"] == 8 and set(rep["per_class"]) == {"bag", "trouser"}


_KILLABLE_TRAIN = textwrap.dedent("""
    import os, sys, time
    import deepfeat
    from deepfeat.store import fsutil

    store, out, marker, mode = sys.argv[1:5]
    if mode == "during-save":
        real = fsutil.write_bytes_durable
        def dying(path, data):            # the 3rd checkpoint dies half written
            if ".ckpt.tmp-" in path and deepfeat.checkpoint_epochs[0] == 2:
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                    f.flush()
                os.kill(os.getpid(), 9)
            real(path, data)
        fsutil.write_bytes_durable = dying
    deepfeat.checkpoint_epochs = [0]

    def progress(event):
        if event["phase"] == "checkpoint":
            deepfeat.checkpoint_epochs[0] = event["epoch"]
            if mode == "after-epoch" and event["epoch"] == 2:
                open(marker, "w").close()
                time.sleep(300)   # the test kills us here, after the checkpoint of epoch 2

    deepfeat.train(store, layers="pre_logits", head="mlp", hidden=(32,), solver="stream", batch_size=32, epochs=4,
                   patience=None, out=out, progress=progress)
""")


@pytest.mark.parametrize("mode", ["after-epoch", "during-save"])
def test_killed_training_resumes_to_the_uninterrupted_head(store, tmp_path, capsys, mode):
    """RELIABILITY: training killed mid-run or while saving a checkpoint resumes from the last complete one."""
    from deepfeat.checkpoint import load_state

    out, marker = tmp_path / "resumed.dfm", tmp_path / "killed.marker"
    returncode = kill_at_marker(
        _KILLABLE_TRAIN, [str(store), str(out), str(marker), mode], marker, timeout=180, may_die_first=mode == "during-save"
    )
    assert returncode == -signal.SIGKILL
    ckpt = Path(str(out) + ".ckpt")
    assert ckpt.exists() and not out.exists()
    assert load_state(str(ckpt))[1]["epoch"] == 2  # a half-written 3rd checkpoint never replaced the 2nd

    assert (
        main(
            [
                "train",
                str(store),
                "--layers",
                "pre_logits",
                "--head",
                "mlp",
                "--hidden",
                "32",
                "--solver",
                "stream",
                "--batch-size",
                "32",
                "--epochs",
                "4",
                "--patience",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "resuming after epoch 2 of 4" in printed
    assert "epoch 3/4" in printed and "epoch 1/4" not in printed and "feature statistics" not in printed
    assert out.exists() and not ckpt.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    straight = deepfeat.train(
        store,
        layers="pre_logits",
        head="mlp",
        hidden=(32,),
        solver="stream",
        batch_size=32,
        epochs=4,
        patience=None,
        out=tmp_path / "straight.dfm",
    )
    resumed = load_bundle(out)
    for name, arr in straight.head.export_tensors().items():
        assert np.array_equal(arr, resumed.head.export_tensors()[name]), name
    assert [h["val_loss"] for h in resumed.metadata["history"]] == [h["val_loss"] for h in straight.history]


def test_a_checkpoint_of_other_options_is_refused_and_no_resume_starts_over(store, tmp_path, capsys):
    out = tmp_path / "m.dfm"
    ckpt = Path(str(out) + ".ckpt")
    stop = {"phase": None}

    def interrupt(event):
        if event["phase"] == "checkpoint":
            stop["phase"] = "checkpoint"
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        deepfeat.train(store, layers="pre_logits", head="logreg", solver="stream", epochs=3, out=out, progress=interrupt)
    assert ckpt.exists() and stop["phase"] == "checkpoint"
    with pytest.raises(UsageError, match="another configuration"):
        deepfeat.train(store, layers="pre_logits", head="logreg", solver="stream", epochs=3, alpha=1e-3, out=out)
    assert ckpt.exists()
    assert (
        main(
            [
                "train",
                str(store),
                "--layers",
                "pre_logits",
                "--solver",
                "stream",
                "--epochs",
                "3",
                "--alpha",
                "1e-3",
                "--out",
                str(out),
                "--no-resume",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "resuming" not in printed and "epoch 1/3" in printed and out.exists() and not ckpt.exists()


def test_a_class_never_vanishes_into_the_hold_out(store, caplog):
    """With a large hold-out some classes lose every training id to it; they must still be learnt."""
    st = deepfeat.open_store(store)
    rows = st.rows(["id", "label", "split"]).to_pylist()
    train_rows = [r for r in rows if r["split"] == "train"]
    held = holdout_mask([r["id"] for r in train_rows], 0.95)
    by_class: dict[str, list[bool]] = {}
    for r, h in zip(train_rows, held):
        by_class.setdefault(r["label"], []).append(bool(h))
    swallowed = sorted(c for c, hs in by_class.items() if all(hs))
    assert swallowed, "the hold-out of this test must swallow at least one class"
    with caplog.at_level("WARNING", logger="deepfeat.training"):
        r = deepfeat.train(store, layers="pre_logits", solver="stream", epochs=1, val_fraction=0.95)
    assert r.classes == sorted(by_class) and len(r.classes) == 10
    assert r.n_train == sum(1 for hs in by_class.values() for h in hs if not h) + sum(len(by_class[c]) for c in swallowed)
    assert r.n_train + r.n_val == 300
    assert all(c in caplog.text for c in swallowed) and "used for training instead" in caplog.text


def test_cli_fashion_mnist_two_thousand_images_end_to_end(tmp_path):
    """The issue's evidence: extract -> train (stream and exact) -> evaluate through the CLI on 2,000 images."""
    from deepfeat.datasets import write_fashion_mnist

    src, feats = tmp_path / "fm", tmp_path / "feats"
    write_fashion_mnist(src, per_class=100)
    assert (
        main(
            [
                "extract",
                str(src),
                "--layers",
                "pre_logits",
                "--pool",
                "avg",
                "--dtype",
                "float16",
                "--input-size",
                "64",
                "--workers",
                "1",
                "--out",
                str(feats),
                "-q",
            ]
        )
        == 0
    )
    accuracy = {}
    for solver in ("stream", "exact"):
        bundle = tmp_path / f"{solver}.dfm"
        assert (
            main(
                [
                    "train",
                    str(feats),
                    "--layers",
                    "pre_logits",
                    "--solver",
                    solver,
                    "--epochs",
                    "20",
                    "--out",
                    str(bundle),
                    "-q",
                ]
            )
            == 0
        )
        assert main(["evaluate", str(bundle), str(feats), "--split", "test", "--out", str(tmp_path / solver)]) == 0
        report = json.loads((tmp_path / solver / "report.json").read_text())
        assert report["n"] == 1000
        accuracy[solver] = report["accuracy"]
    print(f"\n2,000 Fashion-MNIST images via the CLI: stream {accuracy['stream']:.3f}, exact {accuracy['exact']:.3f}")
    assert accuracy["stream"] > 0.7 and accuracy["exact"] > 0.7  # chance is 0.1
    assert abs(accuracy["stream"] - accuracy["exact"]) < 0.03


def test_predict_at_bf16_agrees_within_the_guard(fm30, tmp_path):
    """At bf16, predict recomputes a bundle's features with other batches than extract did, and bf16 results
    depend on the batch: the promise is the precision guard's agreement, not bit identity (docs/DECISIONS.md)."""
    from deepfeat.agreement import Agreement
    from deepfeat.bundle import bundle_runtime
    from deepfeat.embed import embed_files
    from deepfeat.runtimes import cpu_has_bf16, resolve_runtime
    from deepfeat.runtimes.guard import row_cosines

    if not cpu_has_bf16():
        pytest.skip(
            "this CPU has no native bf16: auto never picks it here (the guard's logic is tested with a "
            "stand-in runtime in test_precision_guard.py)"
        )
    resolve_runtime("auto", "cpu", "bf16")
    out = tmp_path / "bf16"
    deepfeat.extract(fm30, out, layers="pre_logits", input_size=64, workers=1, precision="bf16")
    store = deepfeat.open_store(out)
    recorded = Agreement.from_dict(store.metadata["runtime"]["agreement"])
    assert recorded.precision == "bf16" and recorded.passed
    model = tmp_path / "m.dfm"
    deepfeat.train(out, layers="pre_logits", head="logreg", solver="stream", epochs=3, out=model)
    b = load_bundle(model)
    rows = store.rows()
    paths = [os.fsdecode(v) for v in rows.column("path_bytes").to_pylist()][:100]
    rt = bundle_runtime(b)
    assert rt.describe()["precision"] == "bf16"
    got = np.concatenate(
        [e.features["pre_logits"] for e in embed_files(rt, paths, preprocess=b.preprocess, batch_size=7, workers=0)]
    )
    stored = store.load("pre_logits", views=0)[0][:100]
    cos = row_cosines(got, stored)
    assert cos.min() >= recorded.threshold and np.median(cos) >= 0.995, (cos.min(), np.median(cos))

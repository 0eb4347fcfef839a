"""Training works with hundreds of classes and with two, on real Fashion-MNIST images.

Hundreds: 200 real Fashion-MNIST test images, each its own class (``item_000`` .. ``item_199``);
the test image is the original, the three training images and the validation image are small
deterministic variants of it (shifted, mirrored, dimmed). Two: the real Fashion-MNIST classes
trouser and bag. Both go through extract -> train -> evaluate -> predict end to end with the
bundled EfficientNet-Lite0.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deepfeat
from deepfeat.bundle import load_bundle
from deepfeat.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist_arrays

N_MANY = 200
MANY = [f"item_{i:03d}" for i in range(N_MANY)]
VARIANTS = ("shift", "mirror", "dim")  # training images per class; val/ holds one more variant
TWO = ("trouser", "bag")
TWO_PER_SPLIT = 20
INPUT_SIZE = 64


def _shift(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels, the uncovered border black (Fashion-MNIST's background)."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def _variants(img: np.ndarray) -> dict[str, np.ndarray]:
    """The training variants of one image."""
    dim = np.clip(np.rint(img.astype(np.float32) * 0.8), 0, 255).astype(np.uint8)
    return {"shift": _shift(img, 1, 2), "mirror": np.ascontiguousarray(img[:, ::-1]), "dim": dim}


@pytest.fixture(scope="module")
def bb64():
    from deepfeat.models import load_backbone

    return load_backbone("efficientnet_lite0", input_size=INPUT_SIZE)


@pytest.fixture(scope="module")
def fm_test() -> tuple[np.ndarray, np.ndarray]:
    """The 10,000 real Fashion-MNIST test images (uint8, 28 x 28) and their labels."""
    return load_fashion_mnist_arrays("test", download=False)


@pytest.fixture(scope="module")
def many_dir(fm_test: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """For 200 real images: train/item_NNN/item_NNN_{shift,mirror,dim}.png, val/item_NNN/item_NNN_up.png
    (shifted up and left) and test/item_NNN/item_NNN.png (the original).

    A val/ split, so that every class is validated (with only 3 training images per class the
    hash hold-out can take all 3 of a class; train then trains on them instead, see
    test_train_eval.py::test_a_class_never_vanishes_into_the_hold_out; before that fix item_145
    vanished from the bundle with these file names).
    """
    images, _ = fm_test
    root = tmp_path_factory.mktemp("many") / "items"
    for name, img in zip(MANY, images[:N_MANY]):
        for split in ("train", "val", "test"):
            (root / split / name).mkdir(parents=True)
        Image.fromarray(img).save(root / "test" / name / f"{name}.png")
        Image.fromarray(_shift(img, -1, -1)).save(root / "val" / name / f"{name}_up.png")
        for kind, variant in _variants(img).items():
            Image.fromarray(variant).save(root / "train" / name / f"{name}_{kind}.png")
    return root


@pytest.fixture(scope="module")
def many_store(many_dir: Path, bb64, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "many"
    s = deepfeat.extract(
        many_dir, out, layers="pre_logits", pool="avg", input_size=INPUT_SIZE, workers=0, dtype="float16", backbone=bb64
    )
    assert s.embedded_total == N_MANY * (2 + len(VARIANTS)) and s.failed_total == 0
    return out


@pytest.fixture(scope="module")
def many_stream(many_store: Path, tmp_path_factory: pytest.TempPathFactory) -> deepfeat.TrainResult:
    """A streaming logistic head on the 200 classes, saved as a bundle."""
    path = tmp_path_factory.mktemp("bundles") / "many.dfm"
    return deepfeat.train(
        many_store, layers="pre_logits", head="logreg", solver="stream", batch_size=64, epochs=10, out=path
    )


@pytest.fixture(scope="module")
def two_dir(fm_test: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real trousers and 40 real bags: the first 20 of each in train/<class>/, the next 20 in test/<class>/."""
    images, labels = fm_test
    root = tmp_path_factory.mktemp("two") / "fm"
    for name in TWO:
        index = np.flatnonzero(labels == FASHION_MNIST_CLASSES.index(name))[: 2 * TWO_PER_SPLIT]
        for split, chosen in (("train", index[:TWO_PER_SPLIT]), ("test", index[TWO_PER_SPLIT:])):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in chosen:
                Image.fromarray(images[i]).save(folder / f"test_{i:05d}.png")
    return root


@pytest.fixture(scope="module")
def two_store(two_dir: Path, bb64, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "two"
    s = deepfeat.extract(
        two_dir, out, layers="pre_logits", pool="avg", input_size=INPUT_SIZE, workers=0, dtype="float16", backbone=bb64
    )
    assert s.embedded_total == 4 * TWO_PER_SPLIT and s.failed_total == 0
    return out


# ----------------------------------------------------------------------------- 200 classes
def test_200_classes_stream_logreg_and_its_report(
    many_store: Path, many_stream: deepfeat.TrainResult, tmp_path: Path
) -> None:
    r = many_stream
    b = load_bundle(r.bundle_path)
    assert r.classes == b.classes == MANY and b.head.coef_.shape == (N_MANY, 1280)
    assert r.config["class_counts"] == {name: len(VARIANTS) for name in MANY}
    assert r.n_train == N_MANY * len(VARIANTS) and r.n_val == N_MANY and r.validation["source"] == "split 'val'"
    assert len(r.history) >= 5 and r.history[-1]["train_loss"] < r.history[0]["train_loss"]

    out = tmp_path / "report"
    report = deepfeat.evaluate(r.bundle_path, many_store, split="test", out=out)
    print(
        f"\n200 classes, 1 test image each: streaming logreg accuracy {report['accuracy']:.3f}, "
        f"top-3 {report['top_k']['top_3']:.3f}, validation {r.validation['accuracy']:.3f}"
    )
    assert report["n"] == N_MANY and report["unknown_labels"] == []
    assert report["accuracy"] > 0.8 and r.validation["accuracy"] > 0.7  # measured 1.0 and 0.97; chance 1/200
    assert report["top_k"]["top_3"] >= report["accuracy"]
    assert list(report["per_class"]) == MANY
    assert all(m["support"] == 1 for m in report["per_class"].values())
    correct = round(report["accuracy"] * N_MANY)
    assert sum(m["recall"] for m in report["per_class"].values()) == correct

    saved = json.loads((out / "report.json").read_text())
    assert saved["confusion_matrix"]["labels"] == MANY and len(saved["per_class"]) == N_MANY
    assert sum(line.strip().startswith("item_") for line in (out / "report.txt").read_text().splitlines()) == N_MANY

    with open(out / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0][1:] == MANY and [row[0] for row in rows[1:]] == MANY
    cm = np.asarray([[int(v) for v in row[1:]] for row in rows[1:]])
    assert cm.shape == (N_MANY, N_MANY)
    assert int(np.trace(cm)) == correct and cm.sum() == N_MANY
    assert cm.sum(axis=1).tolist() == [1] * N_MANY

    with open(out / "predictions.csv", newline="") as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == N_MANY and sum(p["label"] == p["predicted"] for p in preds) == correct
    assert {p["predicted"] for p in preds} <= set(MANY)

    with Image.open(out / "confusion_matrix.png") as im:
        assert im.format == "PNG"
        im.load()
        width, height = im.size
        gray = np.asarray(im.convert("L"))
    print(f"confusion_matrix.png: {width} x {height} px, {(out / 'confusion_matrix.png').stat().st_size} bytes")
    assert 1000 <= width <= 6000 and 1000 <= height <= 6000  # grows with the classes, capped (40 in a side)
    assert gray.std() > 5  # not a blank canvas


def test_200_classes_exact_solver_agrees_with_streaming(
    many_store: Path, many_stream: deepfeat.TrainResult, tmp_path: Path
) -> None:
    exact = deepfeat.train(many_store, layers="pre_logits", head="logreg", solver="exact", out=tmp_path / "exact.dfm")
    assert exact.solver == "exact" and exact.classes == MANY and exact.head.coef_.shape == (N_MANY, 1280)
    report = deepfeat.evaluate(tmp_path / "exact.dfm", many_store, split="test")
    X, y, _ = deepfeat.open_store(many_store).load("pre_logits", "test")
    agree = float(np.mean(exact.predict(X) == many_stream.predict(X)))
    print(f"\n200 classes: exact logreg accuracy {report['accuracy']:.3f}; agrees with streaming on {agree:.3f}")
    assert report["accuracy"] > 0.8 and report["n"] == N_MANY
    assert report["accuracy"] == pytest.approx(float(np.mean(exact.predict(X) == y)))
    assert agree > 0.8


def test_200_classes_predict_from_the_image_files(
    many_dir: Path, many_store: Path, many_stream: deepfeat.TrainResult
) -> None:
    picks = MANY[::25]  # 8 classes across the range
    paths = [many_dir / "test" / name / f"{name}.png" for name in picks]
    preds = deepfeat.predict_images(many_stream.bundle_path, paths, top_k=5)
    assert [p.path for p in preds] == [str(p) for p in paths] and all(p.error is None for p in preds)
    for p in preds:
        assert len(p.labels) == len(set(p.labels)) == 5 and set(p.labels) <= set(MANY)
        assert p.scores == sorted(p.scores, reverse=True) and 0 < sum(p.scores) <= 1 + 1e-6
    hits = sum(p.label == name for p, name in zip(preds, picks))
    in_top5 = sum(name in p.labels for p, name in zip(preds, picks))
    # the same images' stored features, scored by the same bundle: end to end must agree with the store
    st = deepfeat.open_store(many_store)
    X, y, _ = st.load("pre_logits", "test")
    stored = dict(zip(y.tolist(), many_stream.predict(X).tolist()))
    agree = sum(p.label == stored[name] for p, name in zip(preds, picks))
    print(f"\npredict on 8 of the 200 classes: top-1 {hits}/8, top-5 {in_top5}/8, agrees with the store {agree}/8")
    assert hits >= 6 and in_top5 >= 7 and agree >= 7


def test_confusion_matrix_figure_stays_readable_with_hundreds_of_classes(tmp_path: Path) -> None:
    """The figure stops growing at 40 inches a side; past what fits there, every n-th class is named."""
    from deepfeat.viz.plots import plot_confusion_matrix

    k = 500
    names = [f"item_{i:03d}" for i in range(k)]
    res = plot_confusion_matrix(np.eye(k, dtype=int), names, tmp_path / "cm500.png", dpi=20)  # low dpi: fast
    assert res.size == (830, 800)  # (40 + 1.5) x 40 in, the cap, at 20 dpi
    assert res.extra["label_step"] == 2  # 500 names at 4 pt do not fit on 40 in; 250 do


# ----------------------------------------------------------------------------- 2 classes
@pytest.mark.parametrize(
    "head,solver", [("logreg", "stream"), ("svm", "stream"), ("mlp", "stream"), ("logreg", "exact"), ("svm", "exact")]
)
def test_two_fashion_mnist_classes_every_head(two_store: Path, tmp_path: Path, head: str, solver: str) -> None:
    bundle = tmp_path / f"{head}-{solver}.dfm"
    r = deepfeat.train(
        two_store,
        layers="pre_logits",
        head=head,
        solver=solver,
        hidden=(32,) if head == "mlp" else None,
        batch_size=8,
        epochs=20,
        out=bundle,
    )
    assert r.classes == ["bag", "trouser"] and r.solver == solver
    X, y, _ = deepfeat.open_store(two_store).load("pre_logits", "test")
    S = load_bundle(bundle).scores(X)
    assert S.shape == (2 * TWO_PER_SPLIT, 2)
    Xs = r.scaler.transform(X)
    if head == "svm":
        d = r.head.decision_function(Xs)
        assert d.shape == (2 * TWO_PER_SPLIT,)  # one signed score, positive for classes_[1] = 'trouser'
        np.testing.assert_array_equal(np.where(d > 0, "trouser", "bag"), r.predict(X))
        assert not hasattr(r.head, "predict_proba")
    else:
        proba = r.head.predict_proba(Xs)
        assert proba.shape == (2 * TWO_PER_SPLIT, 2)
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_array_equal(r.head.classes_[proba.argmax(axis=1)], r.predict(X))
    if head == "mlp":
        assert [w.shape for w in r.head.coefs_] == [(1280, 32), (32, 2)]
    else:
        assert r.head.coef_.shape == (1, 1280)

    report = deepfeat.evaluate(bundle, two_store, split="test")
    print(f"\ntrouser vs bag, {head} ({solver}): test accuracy {report['accuracy']:.3f}")
    assert report["n"] == 2 * TWO_PER_SPLIT and report["accuracy"] >= 0.85  # measured 0.95-1.0; chance 0.5
    assert report["accuracy"] == pytest.approx(float(np.mean(r.predict(X) == y)))
    cm = np.asarray(report["confusion_matrix"]["matrix"])
    assert report["confusion_matrix"]["labels"] == ["bag", "trouser"] and cm.shape == (2, 2)
    assert cm.sum(axis=1).tolist() == [TWO_PER_SPLIT, TWO_PER_SPLIT]


def test_two_classes_report_files_and_predict_from_images(two_dir: Path, two_store: Path, tmp_path: Path) -> None:
    """The SVM, whose two classes share one decision value, end to end from the image files."""
    bundle = tmp_path / "svm.dfm"
    deepfeat.train(two_store, layers="pre_logits", head="svm", solver="stream", batch_size=8, epochs=20, out=bundle)
    report = deepfeat.evaluate(bundle, two_store, split="test", out=tmp_path / "report")
    assert report["scores"] == "decision" and report["top_k"]["top_3"] == 1.0  # top-3 of 2 classes: always hit
    with open(tmp_path / "report" / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert [row[0] for row in rows] == ["true \\ predicted", "bag", "trouser"] and rows[0][1:] == ["bag", "trouser"]
    assert sum(int(rows[i][i]) for i in (1, 2)) == round(report["accuracy"] * 2 * TWO_PER_SPLIT)
    with Image.open(tmp_path / "report" / "confusion_matrix.png") as im:
        assert im.format == "PNG" and max(im.size) < 1500

    images = sorted((two_dir / "test" / "bag").iterdir())[:3] + sorted((two_dir / "test" / "trouser").iterdir())[:3]
    preds = deepfeat.predict_images(bundle, images, top_k=3)
    assert all(p.error is None and p.score_kind == "decision" for p in preds)
    assert all(sorted(p.labels) == ["bag", "trouser"] and p.scores[0] == -p.scores[1] for p in preds)
    assert sum(p.label == path.parent.name for p, path in zip(preds, images)) >= 5

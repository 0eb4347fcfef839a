"""Plots: real PNG files of the expected pixel size, with the expected number of panels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfeat.errors import UsageError
from deepfeat.viz import plot_activations, plot_confusion_matrix, plot_embedding, plot_filters, plot_history

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(res, size: tuple[int, int] | None = None) -> None:
    path = Path(res.path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == res.size
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    if size is not None:
        assert res.size == size
    assert res.title


@pytest.fixture(scope="module")
def cnn_dir(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from deepfeat.cnn import train_cnn

    out = tmp_path_factory.mktemp("plots") / "cnn"
    return train_cnn(fm_dir, out, epochs=2, batch_size=16, workers=0, device="cpu").out


@pytest.fixture(scope="module")
def dense_store(fm_dir: Path, cnn_dir: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import deepfeat

    out = tmp_path_factory.mktemp("plots") / "feats"
    deepfeat.extract(fm_dir, out, model=cnn_dir, layers="dense", workers=0, device="cpu")
    return out


def test_filters_of_a_gray_first_layer_one_tile_per_filter(cnn_dir: str, tmp_path: Path) -> None:
    res = plot_filters(cnn_dir, "conv1", tmp_path / "conv1.png")
    assert res.panels == 32 and res.extra["grid"] == (6, 6) and res.extra["weight_shape"] == [32, 1, 3, 3]
    _check_png(res, (620, 660))  # 6 x 0.9 in + margins, at 100 dpi


def test_filters_of_an_rgb_first_layer_and_of_a_deeper_layer(lite0, cnn_dir: str, tmp_path: Path) -> None:
    rgb = plot_filters(lite0, "conv_stem", tmp_path / "stem.png")
    assert rgb.panels == 32 and rgb.title.endswith("RGB")
    _check_png(rgb, (620, 660))
    deep = plot_filters(cnn_dir, "conv2", tmp_path / "conv2.png", max_filters=8, max_channels=5)
    assert deep.panels == 8 * 5 and deep.extra["grid"] == (8, 5)
    _check_png(deep, (345, 490))  # 5 x 0.45 + 1.2 in by 8 x 0.45 + 1.3 in
    with pytest.raises(UsageError, match="conv1"):
        plot_filters(cnn_dir, "conv9", tmp_path / "x.png")
    with pytest.raises(UsageError, match="holds no convolution"):
        plot_filters(cnn_dir, "dense", tmp_path / "x.png")


def test_activations_bar_plot_for_a_vector_and_map_grid_for_a_conv_layer(fm_dir: Path, cnn_dir: str, tmp_path: Path) -> None:
    image = sorted((fm_dir / "test" / "sneaker").iterdir())[0]
    bars = plot_activations(cnn_dir, image, "dense", tmp_path / "dense.png")
    assert bars.panels == 1 and bars.extra["shape"] == [256] and "predicted" in bars.title
    _check_png(bars, (1100, 420))
    maps = plot_activations(cnn_dir, image, "conv1", tmp_path / "maps.png")
    assert maps.panels == 32 and maps.extra["shape"] == [32, 26, 26]
    _check_png(maps, (740, 780))  # 6 x 1.1 in + margins


def test_history_plot(cnn_dir: str, tmp_path: Path) -> None:
    res = plot_history(cnn_dir, tmp_path / "hist.png")
    assert res.panels == 2 and res.extra["epochs"] == 2
    _check_png(res, (1100, 420))
    with pytest.raises(UsageError, match="no training history"):
        plot_history(tmp_path, tmp_path / "none.png")


def test_confusion_matrix_with_class_names(tmp_path: Path) -> None:
    names = [f"class_{i}" for i in range(10)]
    cm = np.diag(np.arange(1, 11)) + 1
    res = plot_confusion_matrix(cm, names, tmp_path / "cm.png")
    _check_png(res, (990, 825))  # (7.5 + 1.5) x 7.5 in at 110 dpi
    with pytest.raises(UsageError, match="class names"):
        plot_confusion_matrix(cm, names[:3], tmp_path / "bad.png")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_coloured_by_class(dense_store: Path, tmp_path: Path, method: str) -> None:
    from deepfeat.datasets import FASHION_MNIST_CLASSES

    res = plot_embedding(dense_store, "dense", tmp_path / f"{method}.png", method=method, max_points=60)
    assert res.extra["n_points"] == 60 and res.extra["classes"] == sorted(FASHION_MNIST_CLASSES)
    _check_png(res, (1000, 700))
    test_only = plot_embedding(dense_store, None, tmp_path / "t.png", split="test")
    assert test_only.extra["n_points"] == 40 and "split test" in test_only.title


def test_plot_cli(cnn_dir: str, dense_store: Path, fm_dir: Path, tmp_path: Path, capsys) -> None:
    from deepfeat.cli import main

    image = sorted((fm_dir / "test" / "bag").iterdir())[0]
    runs = [
        (["plot", "filters", cnn_dir, "--layer", "conv1"], "32 panels"),
        (["plot", "activations", cnn_dir, str(image), "--layer", "dense"], "1 panel"),
        (["plot", "embedding", str(dense_store), "--layer", "dense", "--method", "pca"], "1 panel"),
        (["plot", "history", cnn_dir], "2 panels"),
    ]
    for i, (argv, expect) in enumerate(runs):
        out = tmp_path / f"{i}.png"
        assert main([*argv, "--out", str(out)]) == 0
        assert expect in capsys.readouterr().out and out.read_bytes()[:8] == PNG_MAGIC
    assert main(["plot", "filters", cnn_dir, "--layer", "conv1", "--out", str(tmp_path / "x.jpg")]) == 2


def test_importing_deepfeat_does_not_import_matplotlib() -> None:
    code = "import sys, deepfeat, deepfeat.viz, deepfeat.cnn; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

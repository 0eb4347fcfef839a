"""Tests of deepfeat.datasets on the real Fashion-MNIST files of the Debian package."""

from __future__ import annotations

import gzip
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deepfeat import datasets
from deepfeat.datasets import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    load_fashion_mnist_arrays,
    write_dataset,
    write_fashion_mnist,
)
from deepfeat.errors import UsageError
from deepfeat.sources.walk import walk

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

pytestmark = pytest.mark.skipif(
    not all((DEBIAN / f"{f}.gz").is_file() for f in FILES),
    reason="needs the Debian package dataset-fashion-mnist",
)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user env var, no user cache, no network."""
    monkeypatch.delenv(datasets.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(datasets, "FASHION_MNIST_URL", "http://127.0.0.1:9/")


@pytest.fixture(scope="module")
def arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: load_fashion_mnist_arrays(s, source=DEBIAN) for s in ("train", "test")}


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


def test_classes_and_registry() -> None:
    assert FASHION_MNIST_CLASSES == (
        "t-shirt_top",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle_boot",
    )
    assert DATASETS == {"fashion-mnist": write_fashion_mnist}


def test_arrays(arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = arrays[split]
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.int64
        assert np.bincount(labels).tolist() == [n // 10] * 10
    # default lookup (no source) finds the Debian package too
    images, labels = load_fashion_mnist_arrays("test")
    assert np.array_equal(images, arrays["test"][0]) and np.array_equal(labels, arrays["test"][1])


def test_write_counts_pixels_and_labels(tmp_path: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    out = tmp_path / "fm"
    summary = write_fashion_mnist(out, per_class=5)
    assert summary.out_dir == out and summary.source == DEBIAN
    assert summary.counts == {s: {c: 5 for c in FASHION_MNIST_CLASSES} for s in ("train", "test")}
    assert summary.total == 100 and summary.split_total("test") == 50
    # nothing but the images: extract of the folder excludes nothing (a classes.txt was "1 excluded")
    assert sorted(p.name for p in out.iterdir()) == ["test", "train"]
    assert walk(out).excluded == []

    files = _pngs(out)
    assert len(files) == 100
    for split in ("train", "test"):
        images, labels = arrays[split]
        for cls_idx, cls in enumerate(FASHION_MNIST_CLASSES):
            written = sorted((out / split / cls).glob("*.png"))
            # first 5 of each class, in file order
            expected = np.flatnonzero(labels == cls_idx)[:5]
            assert [p.name for p in written] == [f"{split}_{i:05d}.png" for i in expected]
            for p in written:
                index = int(p.stem.split("_")[1])
                assert labels[index] == cls_idx  # folder matches label
                with Image.open(p) as im:
                    assert im.format == "PNG" and im.mode == "L" and im.size == (28, 28)
                    assert np.array_equal(np.asarray(im), images[index])
    # no temporary files left behind
    assert [p for p in out.rglob("*") if p.is_file() and p.suffix not in (".png", ".txt")] == []


def test_idempotent_rerun(tmp_path: Path) -> None:
    out = tmp_path / "fm"
    first = write_fashion_mnist(out, per_class=3, splits=("test",))
    before = {p: p.read_bytes() for p in _pngs(out)}
    second = write_fashion_mnist(out, per_class=3, splits=["test"])
    after = {p: p.read_bytes() for p in _pngs(out)}
    assert first.counts == second.counts and len(before) == 30
    assert before == after
    assert not (out / "train").exists()


def test_shuffle_is_seeded(tmp_path: Path) -> None:
    a = write_fashion_mnist(tmp_path / "a", per_class=3, splits=("test",), shuffle=True, seed=1)
    b = write_fashion_mnist(tmp_path / "b", per_class=3, splits=("test",), shuffle=True, seed=1)
    names = lambda root: [p.relative_to(root) for p in _pngs(root)]  # noqa: E731
    assert a.counts == b.counts and names(tmp_path / "a") == names(tmp_path / "b")


def test_source_and_env_var_uncompressed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in FILES[2:]:  # test split only, uncompressed
        (src / f).write_bytes(gzip.decompress((DEBIAN / f"{f}.gz").read_bytes()))
    s = write_fashion_mnist(tmp_path / "o1", per_class=3, splits=("test",), source=src)
    assert s.source == src and s.total == 30
    monkeypatch.setenv(datasets.FASHION_MNIST_ENV, str(src))
    s = write_dataset("fashion-mnist", tmp_path / "o2", per_class=3, splits=("test",))
    assert s.source == src and s.total == 30
    # the env var points at a folder without the train files: clear error, no fallback
    with pytest.raises(UsageError, match="train-images-idx3-ubyte"):
        write_fashion_mnist(tmp_path / "o3", per_class=3)


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="fashion-mnist"):
        write_dataset("imagenet-22k", tmp_path / "x")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="split"):
        write_fashion_mnist(tmp_path / "x", splits=("validation",))
    with pytest.raises(UsageError, match="per_class"):
        write_fashion_mnist(tmp_path / "x", per_class=0)
    with pytest.raises(UsageError, match="split"):
        load_fashion_mnist_arrays("val")


@pytest.mark.parametrize(
    "damage",
    ["truncated_gzip", "bad_magic", "short_data", "not_gzip"],
)
def test_corrupt_idx_file(tmp_path: Path, damage: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for f in FILES[2:]:
        shutil.copy(DEBIAN / f"{f}.gz", src / f"{f}.gz")
    bad = src / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(bad.read_bytes())
    if damage == "truncated_gzip":
        bad.write_bytes(bad.read_bytes()[:200])
    elif damage == "bad_magic":
        bad.write_bytes(gzip.compress(b"\x00\x00\x08\x99" + raw[4:]))
    elif damage == "short_data":
        bad.write_bytes(gzip.compress(raw[:-10]))
    else:
        bad.write_bytes(b"this is not a gzip file at all")
    with pytest.raises(UsageError, match="t10k-labels-idx1-ubyte"):
        write_fashion_mnist(tmp_path / "out", per_class=3, splits=("test",), source=src)


def test_missing_data_download_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", empty)
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        write_fashion_mnist(tmp_path / "out", per_class=3)
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert datasets.FASHION_MNIST_ENV in msg and "source" in msg
    assert "127.0.0.1:9" in msg
    # nothing half-downloaded is left in the cache
    cache = tmp_path / "home" / ".cache" / "deepfeat" / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []
    # without download: same advice, no network attempt
    with pytest.raises(UsageError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist_arrays("test", download=False)

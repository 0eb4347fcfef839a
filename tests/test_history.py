"""One history schema (deepfeat.history): train-cnn and train write it, plot history reads both and old directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import deepfeat
from deepfeat.errors import UsageError
from deepfeat.history import KEYS, normalize, read_history

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def cnn_dir(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepfeat.cnn import train_cnn

    out = tmp_path_factory.mktemp("hist") / "cnn"
    train_cnn(fm_dir, out, epochs=2, batch_size=16, workers=0, device="cpu", input_size=16)
    return out


@pytest.fixture(scope="module")
def bundle(fm_dir: Path, cnn_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("hist")
    deepfeat.extract(fm_dir, base / "feats", model=str(cnn_dir), layers="dense", workers=0, device="cpu")
    out = base / "head.dfm"
    deepfeat.train(base / "feats", head="logreg", solver="stream", epochs=3, patience=None, out=out)
    return out


def test_old_valid_keys_are_read_as_the_schema() -> None:
    old = [
        {"epoch": 1, "train_loss": 0.9, "valid_loss": 0.8, "train_valid_ratio": 1.125, "valid_accuracy": 0.5, "seconds": 1.0}
    ]
    (row,) = normalize(old)
    assert row == {
        "epoch": 1,
        "train_loss": 0.9,
        "val_loss": 0.8,
        "train_val_ratio": 1.125,
        "val_accuracy": 0.5,
        "seconds": 1.0,
    }
    assert normalize([{"epoch": 2}])[0] == dict.fromkeys(KEYS) | {"epoch": 2}


def test_both_loops_write_the_schema_and_plot_history_reads_both(cnn_dir: Path, bundle: Path, tmp_path: Path) -> None:
    from deepfeat.viz import plot_history

    cnn_rows = json.loads((cnn_dir / "history.json").read_text())
    head_rows = read_history(bundle)
    assert len(cnn_rows) == 2 and len(head_rows) == 3
    for row in cnn_rows + head_rows:
        assert set(KEYS) <= set(row) and not any(k.startswith("valid_") for k in row)
    res = plot_history(cnn_dir, tmp_path / "cnn.png")
    assert res.panels == 2 and res.extra["epochs"] == 2
    res = plot_history(bundle, tmp_path / "head.png")
    assert res.panels == 2 and res.extra["epochs"] == 3 and "head.dfm" in res.title
    with pytest.raises(UsageError, match="no training history"):
        plot_history(tmp_path, tmp_path / "none.png")


def test_a_model_directory_written_before_the_schema_still_plots(cnn_dir: Path, tmp_path: Path) -> None:
    from deepfeat.viz import plot_history

    old = tmp_path / "old"
    old.mkdir()
    back = {"val_loss": "valid_loss", "val_accuracy": "valid_accuracy", "train_val_ratio": "train_valid_ratio"}
    rows = [{back.get(k, k): v for k, v in r.items()} for r in json.loads((cnn_dir / "history.json").read_text())]
    (old / "config.json").write_text(json.dumps({"format": "deepfeat-model", "history": rows}))
    assert read_history(old) == normalize(json.loads((cnn_dir / "history.json").read_text()))
    (old / "history.json").write_text(json.dumps(rows))
    assert plot_history(old, tmp_path / "old.png").extra["epochs"] == 2

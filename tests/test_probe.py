"""deepfeat probe: a linear probe per layer (and stage, all layers, FNE) on a real Fashion-MNIST store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reportstore import LAYERS, shared_store

import deepfeat
from deepfeat.cli import main
from deepfeat.errors import UsageError
from deepfeat.probing import stage_of
from deepfeat.store.reader import FeatureStore


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return shared_store(tmp_path_factory)[1]


@pytest.fixture(scope="module")
def swept(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe_out") / "probe"
    return deepfeat.probe(store, out=out), out


def test_stage_names():
    assert stage_of("blocks.2.1.conv_pwl") == "blocks.2"
    assert stage_of("blocks.4") == "blocks.4"
    assert stage_of("layer4.1.conv2") == "layer4"
    assert stage_of("features.3.conv") == "features.3"
    assert stage_of("pre_logits") is None and stage_of("conv_head") is None


def test_pre_logits_probe_agrees_with_train_and_evaluate(swept, store, tmp_path):
    """The probe's pre_logits head is train --solver stream's head: the same accuracies within a point."""
    r, _ = swept
    row = next(x for x in r.rows if x["name"] == "pre_logits")
    bundle = tmp_path / "pl.dfm"
    t = deepfeat.train(store, layers="pre_logits", head="logreg", solver="stream", out=bundle)
    report = deepfeat.evaluate(bundle, store, split="test")
    assert report["n"] == r.n_test == 200
    assert report["accuracy"] > 0.5  # far above chance (0.1): a real signal on real images
    assert abs(row["test_accuracy"] - report["accuracy"]) <= 0.01, (row, report["accuracy"])
    assert abs(row["val_accuracy"] - t.validation["accuracy"]) <= 0.01, (row, t.validation)


def test_rows_files_and_advice(swept):
    r, out = swept
    names = [x["name"] for x in r.rows]
    # single layers in depth (store) order, then the stage of blocks.2, all layers, the FNE
    assert names == [
        "blocks.2.0.conv_pwl",
        "blocks.2.1.conv_pwl",
        "blocks.4",
        "pre_logits",
        "blocks.2 (stage)",
        "all layers",
        "full-network embedding",
    ]
    by = {x["name"]: x for x in r.rows}
    assert by["blocks.2 (stage)"]["layers"] == ["blocks.2.0.conv_pwl", "blocks.2.1.conv_pwl"]
    assert by["blocks.2 (stage)"]["dims"] == by["blocks.2.0.conv_pwl"]["dims"] + by["blocks.2.1.conv_pwl"]["dims"]
    assert by["all layers"]["dims"] == by["full-network embedding"]["dims"] == sum(by[n]["dims"] for n in names[:4])
    assert r.best["val_accuracy"] == max(x["val_accuracy"] for x in r.rows)
    assert sum(x["best"] for x in r.rows) == 1 and r.best["name"] in r.advice
    for x in r.rows:
        assert 0.1 < x["val_accuracy"] <= 1 and 0.1 < x["test_accuracy"] <= 1 and x["seconds"] >= 0
    # the deeper features carry more than an early projection on these images
    assert by["pre_logits"]["test_accuracy"] > by["blocks.2.0.conv_pwl"]["test_accuracy"]
    with open(out / "probe.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [t["name"] for t in table] == names
    assert float(table[3]["test_accuracy"]) == pytest.approx(by["pre_logits"]["test_accuracy"], abs=1e-6)
    doc = json.loads((out / "probe.json").read_text())
    assert doc["best"] == r.best["name"] and doc["n_test"] == 200 and len(doc["rows"]) == len(names)
    with Image.open(out / "probe.png") as im:
        assert im.size[0] > 400 and len(np.unique(np.asarray(im.convert("L")))) > 10
    page = (out / "report.html").read_text()
    assert r.best["name"] in page and "Accuracy by depth" in page and "data:image/png;base64," in page
    text = r.table()
    assert text.splitlines()[0].split()[:2] == ["layer", "kind"] and "<- best" in text


def _count_passes(monkeypatch) -> list[tuple]:
    calls: list[tuple] = []
    original = FeatureStore.batches

    def spy(self, layers=None, split=None, batch_size=1024, **kw):
        calls.append((tuple(layers), split, kw.get("read_bytes")))
        return original(self, layers, split, batch_size, **kw)

    monkeypatch.setattr(FeatureStore, "batches", spy)
    return calls


def test_one_pass_per_epoch_whatever_the_number_of_layers(store, monkeypatch):
    calls = _count_passes(monkeypatch)
    one = deepfeat.probe(store, layers="pre_logits", groups="none", epochs=2, patience=None)
    n_one = len(calls)
    calls.clear()
    many = deepfeat.probe(store, epochs=2, patience=None)
    # statistics + 2 x (training + validation) + final validation + test, for 1 candidate or for 7
    assert n_one == len(calls) == 7
    assert len(one.rows) == 1 and len(many.rows) == 7
    assert all(c[0] == tuple(LAYERS.split(",")) for c in calls)  # each pass reads every layer at once


def test_memory_budget_bounds_the_reads(store, monkeypatch):
    calls = _count_passes(monkeypatch)
    events: list[dict] = []
    r = deepfeat.probe(store, groups="none", epochs=2, memory_budget="1MiB", progress=events.append)
    plan = next(e for e in events if e["phase"] == "plan")
    assert plan["memory_budget"] == 1 << 20 and plan["read_bytes"] == (1 << 20) // 16
    assert {c[2] for c in calls} == {(1 << 20) // 16}
    assert all(x["val_accuracy"] > 0.1 for x in r.rows)
    with pytest.raises(UsageError, match="memory_budget"):
        deepfeat.probe(store, memory_budget="lots")


def test_bad_arguments_are_clear_errors(store, tmp_path):
    with pytest.raises(UsageError, match="'groups' parameter of probe"):
        deepfeat.probe(store, groups="stages,everything")
    with pytest.raises(UsageError, match="no layer 'nope'"):
        deepfeat.probe(store, layers="nope")
    with pytest.raises(UsageError, match="validation rows"):
        deepfeat.probe(store, val_fraction=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="must be a directory"):
        deepfeat.probe(store, out=tmp_path / "file")


def test_cli(store, tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["probe", str(store), "--out", str(out), "--groups", "all", "--epochs", "3", "-q"]) == 0
    text = capsys.readouterr().out
    assert "layer" in text and "pre_logits" in text and "all layers" in text and "<- best" in text
    assert text.strip().splitlines()[-1].startswith("done in ")
    assert {p.name for p in out.iterdir()} >= {"probe.csv", "probe.json", "probe.png", "report.html"}
    doc = json.loads((out / "probe.json").read_text())
    assert doc["config"]["epochs"] == 3 and np.isclose(doc["config"]["alpha"], 1e-4)
    assert main(["probe", str(store), "--groups", "bogus"]) == 2
    err = capsys.readouterr().err
    assert "groups" in err and "Traceback" not in err

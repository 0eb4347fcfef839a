"""Training a ConvNet from scratch / fine-tuning, on real Fashion-MNIST images.

The trained model directory must be a backbone like any other (layers, extract, predict), a
killed run must resume to exactly the weights of an uninterrupted one, and a fixed seed must
give the same weights twice (CPU).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from killing import kill_at_marker

from deepfeat.checkpoint import load_checkpoint, read_checkpoint_state, save_checkpoint
from deepfeat.cnn import train_cnn
from deepfeat.cnn.data import BatchAugment
from deepfeat.datasets import FASHION_MNIST_CLASSES
from deepfeat.errors import UsageError

FAST = dict(workers=0, device="cpu", batch_size=32)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def fm20(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Fashion-MNIST: 20 images per class in train and test (200 + 200)."""
    from deepfeat.datasets import write_fashion_mnist

    root = tmp_path_factory.mktemp("fm20") / "fm"
    write_fashion_mnist(root, per_class=20)
    return root


@pytest.fixture(scope="module")
def trained(fm20: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("cnn") / "fm_cnn"
    return train_cnn(fm20, out, epochs=1, **FAST)


# ----------------------------------------------------------------------------- training
def test_one_epoch_writes_a_model_directory(trained) -> None:
    out = Path(trained.out)
    assert {"model.safetensors", "config.json", "history.json"} <= set(os.listdir(out))
    assert not (out / "checkpoint.safetensors").exists()  # removed once the run is complete
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "cnn" and cfg["complete"] is True
    assert cfg["arch"]["name"] == "small" and cfg["arch"]["in_channels"] == 1  # gray images detected
    assert cfg["arch"]["blocks"] == [[32, 64]] and cfg["arch"]["dense"] == 256
    assert cfg["classes"] == sorted(FASHION_MNIST_CLASSES)
    assert cfg["preprocess"]["input_size"] == [28, 28]
    # validation is held out of train (2 of 20 per class), never the test split, which is scored apart
    assert trained.n_train == 180 and trained.n_val == 20 and trained.val_source == "held-out"
    assert cfg["metrics"]["valid_source"] == "held-out" and cfg["metrics"]["n_test"] == 200
    (row,) = json.loads((out / "history.json").read_text())
    assert set(row) == {"epoch", "train_loss", "val_loss", "train_val_ratio", "val_accuracy", "seconds", "best"}
    assert row["train_val_ratio"] == pytest.approx(row["train_loss"] / row["val_loss"], rel=1e-4)
    # One epoch on 200 real images already beats chance (0.1) clearly.
    assert trained.metrics["test_accuracy"] > 0.25
    assert np.asarray(cfg["metrics"]["confusion_matrix"]).sum() == 20


def test_fixed_seed_reproduces_the_weights_on_cpu(fm20: Path, trained, tmp_path: Path) -> None:
    again = train_cnn(fm20, tmp_path / "again", epochs=1, **FAST)
    assert _same(_weights(Path(trained.out)), _weights(Path(again.out)))
    assert again.history[0]["train_loss"] == trained.history[0]["train_loss"]


def test_streaming_from_disk_gives_the_cached_result(fm20: Path, trained, tmp_path: Path) -> None:
    streamed = train_cnn(fm20, tmp_path / "streamed", epochs=1, memory_budget=0, **FAST)
    assert not streamed.cached and trained.cached
    assert _same(_weights(Path(trained.out)), _weights(Path(streamed.out)))


def test_same_directory_and_config_is_not_retrained_and_other_config_is_refused(fm20: Path, trained) -> None:
    again = train_cnn(fm20, trained.out, epochs=1, **FAST)
    assert again.already_complete and again.history == trained.history
    with pytest.raises(UsageError, match="another configuration"):
        train_cnn(fm20, trained.out, epochs=2, **FAST)
    foreign = Path(trained.out).parent / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text('{"name": "not ours"}')
    with pytest.raises(UsageError, match="did not write"):
        train_cnn(fm20, foreign, epochs=1, **FAST)
    assert json.loads((foreign / "config.json").read_text()) == {"name": "not ours"}


_KILLABLE = textwrap.dedent("""
    import sys, time
    from deepfeat.cnn import train_cnn

    def progress(event):
        if event["phase"] == "checkpoint" and event["epoch"] == 1:
            open(sys.argv[3], "w").close()
            time.sleep(300)   # the test kills us here, between epochs 1 and 2

    train_cnn(sys.argv[1], sys.argv[2], epochs=2, batch_size=32, workers=0, device="cpu", progress=progress)
""")


def test_killed_run_resumes_to_the_uninterrupted_weights(fm20: Path, tmp_path: Path, capsys) -> None:
    from deepfeat.cli import main

    out, marker = tmp_path / "killed", tmp_path / "epoch1.done"
    returncode = kill_at_marker(_KILLABLE, [str(fm20), str(out), str(marker)], marker, timeout=120)
    assert returncode == -signal.SIGKILL
    assert (out / "checkpoint.safetensors").exists() and not (out / "config.json").exists()
    assert read_checkpoint_state(str(out / "checkpoint.safetensors"))["epoch"] == 1

    assert (
        main(
            [
                "train-cnn",
                str(fm20),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--workers",
                "0",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "resuming after epoch 1 of 2" in printed
    assert printed.count("\n    2 ") == 1 and "\n    1 " not in printed  # epoch 2 only

    straight = train_cnn(fm20, tmp_path / "straight", epochs=2, **FAST)
    assert _same(_weights(out), _weights(Path(straight.out)))
    resumed_hist = json.loads((out / "history.json").read_text())
    assert [r["val_accuracy"] for r in resumed_hist] == [r["val_accuracy"] for r in straight.history]


_EARLY = dict(epochs=7, schedule="constant", augment="none", patience=1)  # on fm20: val loss rises at epoch 6


def test_early_stopping_keeps_the_best_epoch_and_resumes_from_a_stopped_checkpoint(
    fm20: Path, tmp_path: Path, capsys
) -> None:
    """train-cnn --patience: the run stops after `patience` epochs without a better validation loss and the
    model directory holds the best epoch's weights, not the last epoch's; a run interrupted after the stop
    resumes from its checkpoint (which holds the best weights) to the same directory."""
    from safetensors.torch import load_file

    from deepfeat.cli import main

    out = tmp_path / "early"
    assert (
        main(
            [
                "train-cnn",
                str(fm20),
                "--out",
                str(out),
                "--epochs",
                "7",
                "--schedule",
                "constant",
                "--augment",
                "none",
                "--patience",
                "1",
                "--keep-checkpoint",
                "--batch-size",
                "32",
                "--workers",
                "0",
                "--device",
                "cpu",
                "-q",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    history = json.loads((out / "history.json").read_text())
    losses = [r["val_loss"] for r in history]
    stop = len(history)
    assert stop < 7 and history[-1].get("stopped_early") is True
    best = min(range(stop), key=lambda i: losses[i]) + 1
    assert best == stop - 1 and losses[-1] > losses[best - 1]  # patience 1: one epoch without a better loss
    assert f"early stopping after epoch {stop} of 7" in printed and f"keeping epoch {best}" in printed
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["metrics"]["best_epoch"] == best and cfg["metrics"]["valid_loss"] == losses[best - 1]
    assert cfg["metrics"]["valid_accuracy"] == pytest.approx(history[best - 1]["val_accuracy"])
    # the kept checkpoint holds the last epoch's weights (model.*) and the best epoch's (extra.best.*):
    # the model directory holds the best
    ckpt = load_file(str(out / "checkpoint.safetensors"))
    kept = _weights(out)
    from deepfeat.models.arch import build_cnn

    names = list(build_cnn(cfg["arch"]).state_dict())  # best.<i> is the i-th entry of the state dict
    assert len(names) == len(kept) == sum(k.startswith("extra.best.") for k in ckpt)
    assert all(torch.equal(kept[name], ckpt[f"extra.best.{i}"]) for i, name in enumerate(names))
    assert not all(torch.equal(kept[k], ckpt[f"model.{k}"]) for k in kept)

    def interrupt_after_the_stop(event: dict) -> None:
        if event["phase"] == "checkpoint" and event["epoch"] == stop:
            raise KeyboardInterrupt

    again = tmp_path / "again"
    with pytest.raises(KeyboardInterrupt):
        train_cnn(fm20, again, progress=interrupt_after_the_stop, **_EARLY, **FAST)
    assert read_checkpoint_state(str(again / "checkpoint.safetensors"))["stopped"] is True
    resumed = train_cnn(fm20, again, **_EARLY, **FAST)
    assert resumed.resumed_from == stop and resumed.best_epoch == best
    assert _same(_weights(again), kept)
    finished = train_cnn(fm20, again, **_EARLY, **FAST)  # nothing left to do: the same kept epoch
    assert finished.already_complete and finished.best_epoch == best


def test_checkpoint_keeps_optimizer_state_without_pickle(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 4)).square().sum().backward()
        opt.step()
    path = str(tmp_path / "ck.safetensors")
    save_checkpoint(path, model, opt, {"epoch": 3, "note": "x"})
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        assert json.loads(f.read(header_len))  # a safetensors header, not a pickle
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    state = load_checkpoint(path, model2, opt2)
    assert state == {"epoch": 3, "note": "x"}
    assert _same(model.state_dict(), model2.state_dict())
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for pid in a["state"]:
        for k, v in a["state"][pid].items():
            assert torch.equal(v, b["state"][pid][k])


def test_batch_augment_is_seeded_and_flip_is_exact() -> None:
    x = torch.rand(5, 3, 12, 16)
    flipped = BatchAugment("flip=1")(x, torch.Generator().manual_seed(0))
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    aug = BatchAugment("flip,crop=0.8,rotate=10,color=0.2")
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == x.shape
    with pytest.raises(UsageError, match="not available for training"):
        BatchAugment("blur")


def test_held_out_validation_for_a_class_folder(fm20: Path, tmp_path: Path) -> None:
    from deepfeat.cnn.data import make_splits
    from deepfeat.sources.walk import walk

    src = tmp_path / "classes"
    for cls in ("bag", "trouser", "sandal"):
        shutil.copytree(fm20 / "train" / cls, src / cls)
    splits = make_splits(walk(src), val_fraction=0.25, seed=0)
    assert splits.val_source == "held-out" and splits.classes == ["bag", "sandal", "trouser"]
    assert len(splits.val) == 15 and len(splits.train) == 45
    assert sorted(np.bincount(splits.val.labels).tolist()) == [5, 5, 5]
    assert not set(splits.val.ids) & set(splits.train.ids)
    with pytest.raises(UsageError, match="at least 2 classes"):
        make_splits(walk(fm20 / "train" / "bag"), 0.1, 0)


# ----------------------------------------------------------------------------- the model directory as a backbone
def test_validation_is_val_or_a_hashed_holdout_of_train_never_test_unless_asked(fm20: Path, tmp_path: Path) -> None:
    """Issue 28: with train + test only, validation rows come from train (a stratified hashed hold-out) and
    test stays apart; a val split is used when present; test only with validation='test'."""
    from deepfeat.cnn.data import make_splits
    from deepfeat.sources.walk import walk

    d = walk(fm20)
    train_ids = {it.id for it in d.items if it.split == "train"}
    test_ids = {it.id for it in d.items if it.split == "test"}
    s = make_splits(d, 0.1, 0)
    assert s.val_source == "held-out" and set(s.val.ids) <= train_ids and not set(s.val.ids) & set(s.train.ids)
    assert np.bincount(s.val.labels).tolist() == [2] * 10 and set(s.test.ids) == test_ids
    assert make_splits(d, 0.1, 0).val.ids == s.val.ids  # deterministic; another seed holds out others
    assert make_splits(d, 0.1, 1).val.ids != s.val.ids
    # adding images to a class moves no held-out id of the other classes (a hash, not a permutation)
    src = tmp_path / "more"
    shutil.copytree(fm20, src)
    for i in range(5):
        shutil.copyfile(next((fm20 / "train" / "bag").iterdir()), src / "train" / "bag" / f"extra_{i}.png")
    more = make_splits(walk(src), 0.1, 0)
    bag = s.classes.index("bag")
    rel = {it.id: it.relpath for it in d.items}
    rel_more = {it.id: it.relpath for it in walk(src).items}
    kept = {rel[i] for i, y in zip(s.val.ids, s.val.labels) if y != bag}
    assert kept == {rel_more[i] for i, y in zip(more.val.ids, more.val.labels) if y != bag}
    asked = make_splits(d, 0.1, 0, validation="test")
    assert asked.val_source == "test" and set(asked.val.ids) == test_ids and asked.test is None
    with pytest.raises(UsageError, match="no val split"):
        make_splits(d, 0.1, 0, validation="val")
    shutil.move(str(src / "test"), str(src / "val"))
    with_val = make_splits(walk(src), 0.1, 0)
    assert with_val.val_source == "val" and len(with_val.val) == 200 and with_val.test is None


def test_model_directory_round_trips_through_layers_and_extract(fm20: Path, trained, tmp_path: Path, capsys) -> None:
    import deepfeat
    from deepfeat.cli import main
    from deepfeat.data.decode import decode_file
    from deepfeat.models import describe_layers, load_backbone
    from deepfeat.models.weights import file_sha256
    from deepfeat.sources.walk import walk

    bb = load_backbone(trained.out)
    assert bb.family == "deepfeat" and bb.classifier == "classifier"
    assert bb.class_names == trained.classes and len(bb.class_names) == 10
    assert bb.weights_sha256 == file_sha256(os.path.join(trained.out, "model.safetensors"))
    infos = describe_layers(bb)
    assert infos["dense"].shape == (256,) and infos["pre_logits"].shape == (256,)
    assert infos["conv1"].shape == (32, 26, 26) and infos["output"].shape == (10,)
    with pytest.raises(UsageError, match="trained on"):
        load_backbone(trained.out, input_size=64)  # the dense layer fixes the input size

    assert main(["layers", trained.out, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["dense"]["shape"] == [256]

    store = tmp_path / "feats"
    s = deepfeat.extract(fm20, store, model=trained.out, layers="dense", workers=0, device="cpu", precision="fp32")
    assert s.embedded_total == 400 and s.failed_total == 0
    x, _labels, meta = deepfeat.open_store(store).load("dense")
    assert x.shape == (400, 256)
    paths = {it.id: it.path for it in walk(fm20).items}
    ids = meta.column("id").to_pylist()
    pick = [0, 57, 199, 200, 399]
    batch = torch.cat([bb.preprocess(decode_file(paths[ids[i]]).image) for i in pick])
    m = bb.model
    with torch.no_grad():  # the network up to its dense layer, called directly
        h = m.dense(m.flatten(m.drop1(m.pool1(m.conv2(m.conv1(batch.mean(1, keepdim=True)))))))
    np.testing.assert_allclose(x[pick], h.numpy(), rtol=1e-4, atol=1e-5)

    image = next((fm20 / "test" / "trouser").iterdir())
    assert main(["predict", trained.out, str(image), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(image)) and sum(c in line for c in trained.classes) >= 1


def test_finetune_lite0_freezes_the_first_stages(fm_dir: Path, lite0, tmp_path: Path) -> None:
    from deepfeat.cnn import finetune
    from deepfeat.models import describe_layers, load_backbone

    src = tmp_path / "three"
    for split in ("train", "test"):
        for cls in ("bag", "sandal", "trouser"):
            shutil.copytree(fm_dir / split / cls, src / split / cls)
    out = tmp_path / "tuned"
    r = finetune(src, out, model="efficientnet_lite0", freeze=4, epochs=1, input_size=48, **FAST)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "finetune" and cfg["base"]["model"] == "efficientnet_lite0"
    assert cfg["training"]["frozen_stages"] == ["blocks.0", "blocks.1", "blocks.2", "blocks.4"]
    assert cfg["preprocess"]["input_size"] == [48, 48] and len(r.history) == 1
    assert (r.n_train, r.n_val, r.val_source) == (9, 3, "held-out")  # 1 of 4 per class held out; test apart
    tuned = _weights(out)
    before = lite0.model.state_dict()
    # frozen: the stem and blocks 0-4, batch-norm statistics included; trained: block 6 and the new head
    for name in ("conv_stem.weight", "bn1.running_mean", "blocks.4.0.conv_pwl.weight", "blocks.4.2.bn3.running_var"):
        assert torch.equal(tuned[name], before[name]), name
    for name in ("blocks.6.0.conv_pw.weight", "conv_head.weight", "bn2.running_mean"):
        assert not torch.equal(tuned[name], before[name]), name
    assert tuned["classifier.weight"].shape == (3, 1280)

    bb = load_backbone(str(out))
    assert bb.class_names == r.classes == ["bag", "sandal", "trouser"] and bb.preprocess.input_size == (48, 48)
    infos = describe_layers(bb)
    assert infos["pre_logits"].shape == (1280,) and infos["output"].shape == (3,)
    with pytest.raises(UsageError, match="5 stages"):
        finetune(src, tmp_path / "bad", freeze=6, epochs=1, input_size=48, **FAST)

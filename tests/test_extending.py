"""The table "to add X, touch these files" of docs/ARCHITECTURE.md, proved by adding a toy X.

Each test adds one toy extension through the registry the table names -- and nothing else -- and
runs the real chain through it on real Fashion-MNIST images: a toy source, a toy engine, a toy
runtime and a toy head. A last test checks that the package has no import cycles.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deepfeat
from deepfeat.sources.items import Discovery, SourceItem, item_id

KW = dict(
    model="efficientnet_lite0", layers="pre_logits", input_size=32, workers=0, batch_size=16, part_size=40, precision="fp32"
)


# ------------------------------------------------------------------ a source: one new file + register_source
class GlobSource:
    """``glob:PATTERN``: the files a glob names, labelled by their folder's name."""

    kind: ClassVar[str] = "glob"
    OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, spec: str) -> None:
        self.pattern = spec[len("glob:") :]

    @classmethod
    def claims(cls, spec: str) -> bool:
        return spec.startswith("glob:")

    def discover(self, *, skip_dirs=()) -> Discovery:
        paths = sorted(glob.glob(self.pattern))
        root = os.path.commonpath(paths)
        items = [
            SourceItem(
                id=item_id(os.path.relpath(p, root)),
                path=p,
                relpath=os.path.relpath(p, root),
                label=os.path.basename(os.path.dirname(p)),
                split=None,
                size=os.path.getsize(p),
            )
            for p in paths
        ]
        return Discovery(root=root, layout=self.kind, items=items)


@pytest.fixture()
def glob_source(monkeypatch):
    from deepfeat.sources import base

    sources = {"glob": GlobSource, **base.SOURCES}  # asked first
    monkeypatch.setattr(base, "SOURCES", sources)
    import deepfeat.sources as pkg

    monkeypatch.setattr(pkg, "SOURCES", sources)
    return GlobSource


def test_a_new_source_is_one_class_and_one_registration(glob_source, fm_dir: Path, lite0, tmp_path: Path) -> None:
    spec = f"glob:{fm_dir}/train/*/*.png"
    s = deepfeat.extract(spec, tmp_path / "store", backbone=lite0, runtime="torch", **KW)
    assert (s.embedded_total, s.failed_total) == (40, 0)
    store = deepfeat.open_store(tmp_path / "store")
    assert store.metadata["source"]["layout"] == "glob"
    assert sorted(set(store.rows(["label"]).column("label").to_pylist())) == sorted(os.listdir(fm_dir / "train"))


# ------------------------------------------------------------------ an engine: one new file + register_engine
class SerialEngine:
    """Every part computed in this process, one after the other, from the public building blocks."""

    name = "serial"

    def check(self) -> None:
        pass

    def default_workers(self) -> int:
        return 0

    def resolve_device(self, device: str) -> str:
        from deepfeat.devices import resolve_device

        return resolve_device(device)

    def prepare(self, plan: Any, settings: Any) -> None:
        from deepfeat.runtimes import build_runtime

        self.runtime = build_runtime(
            plan.backbone,
            plan.layers,
            plan.infos,
            runtime=plan.runtime,
            device=settings.device,
            precision=plan.precision,
            dtype=plan.dtype,
        )
        plan.use_runtime(self.runtime.describe())

    def run(self, plan: Any, pending: Any, writer: Any, settings: Any) -> tuple[int, int, int]:
        from deepfeat.data.worker import prepare_batch
        from deepfeat.engines.parts import PartBuilder, add_batch, part_batches, plan_parts

        embedded = failed = 0
        parts = plan_parts(pending, plan.part_size, writer.next_index())
        for name, items in parts:
            builder = PartBuilder(name, items, plan.layers)
            for batch in part_batches(items, settings.batch_size, plan):
                results = prepare_batch(batch, plan.backbone.preprocess.to_dict(), settings.policy)
                ok, bad = add_batch(builder, self.runtime, results)
                embedded, failed = embedded + ok, failed + bad
            writer.commit(builder.write(writer.path))
        return embedded, failed, len(parts)


def test_a_new_engine_is_one_class_and_one_registration(monkeypatch, fm_dir: Path, lite0, tmp_path: Path) -> None:
    from deepfeat import engines

    monkeypatch.setitem(engines.ENGINES, "serial", SerialEngine)
    local = deepfeat.extract(fm_dir, tmp_path / "local", backbone=lite0, runtime="torch", **KW)
    serial = deepfeat.extract(fm_dir, tmp_path / "serial", backbone=lite0, runtime="torch", engine="serial", **KW)
    assert (serial.embedded_total, serial.parts_committed) == (local.embedded_total, local.parts_committed) == (80, 2)
    # the same parts, rows, ledgers and feature files, byte for byte
    assert (tmp_path / "serial" / "manifest.json").read_bytes() == (tmp_path / "local" / "manifest.json").read_bytes()


# ------------------------------------------------------------------ a runtime: one new class + register_runtime
def test_a_new_runtime_is_one_class_and_one_registration(monkeypatch, fm_dir: Path, lite0, tmp_path: Path) -> None:
    from deepfeat import runtimes
    from deepfeat.runtimes.base import Runtime
    from deepfeat.runtimes.torch_runtime import TorchRuntime

    calls: list[int] = []

    class CountingRuntime(Runtime):
        """torch underneath, counting the batches it is given."""

        name = "counting"
        precisions = {"cpu": ("fp32",)}

        def __init__(
            self, backbone, specs, infos, *, device="cpu", precision="fp32", dtype="float32", cache_dir=None, threads=None
        ) -> None:
            super().__init__(backbone, specs, infos, device=device, precision=precision, dtype=dtype)
            self.inner = TorchRuntime(backbone, specs, infos, device=device, precision=precision, dtype=dtype)

        def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
            calls.append(len(pixels))
            return self.inner.forward(pixels)

    monkeypatch.setitem(runtimes.RUNTIMES, "counting", CountingRuntime)
    s = deepfeat.extract(fm_dir, tmp_path / "store", backbone=lite0, runtime="counting", **KW)
    assert sum(calls) == s.embedded_total == 80
    assert deepfeat.open_store(tmp_path / "store").metadata["config"]["runtime"] == "counting"


# ------------------------------------------------------------------ a head: one new class + one HEADS entry
def test_a_new_head_is_one_class_and_one_entry(monkeypatch, fm_dir: Path, lite0, tmp_path: Path) -> None:
    from deepfeat.heads import HEADS, LogisticHead

    class LeastSquaresHead(LogisticHead):
        """Linear least squares on one-hot targets."""

        default_learning_rate = 3e-3

        @classmethod
        def exact_estimator(cls, C, class_weight, seed, params):
            return None  # no in-memory solver: train streams

        def _n_outputs(self, n_classes: int) -> int:
            return n_classes

        def _loss(self, z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return ((z - F.one_hot(target, z.shape[1]).to(z.dtype)) ** 2).sum(dim=1)

    monkeypatch.setitem(HEADS, "lsq", LeastSquaresHead)
    deepfeat.extract(fm_dir, tmp_path / "store", backbone=lite0, runtime="torch", **{**KW, "input_size": 96})
    r = deepfeat.train(tmp_path / "store", head="lsq", solver="auto", epochs=60, patience=None, out=tmp_path / "lsq.dfm")
    assert r.solver == "stream", "no exact solver declared: auto streams"
    assert r.head.learning_rate == 3e-3, "the head's own default learning rate"
    bundle = deepfeat.load_bundle(tmp_path / "lsq.dfm")
    assert type(bundle.head) is LeastSquaresHead
    report = deepfeat.evaluate(bundle, tmp_path / "store", split="test")
    assert report["accuracy"] > 0.3, "far above the 0.1 of chance on 10 classes"

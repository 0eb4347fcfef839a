"""int8: OpenVINO quantised by NNCF on a seeded sample of the job's own images, cached, through the guard.

The calibration sample is seeded and identified by its pixels' digest (part of the export's cache
key); a job with fewer images than the calibration wants uses all of them and says so; the guard
measures int8 against torch fp32 like any reduced precision, and an explicit int8 that fails it is
refused with the numbers. ``auto`` never picks int8 (docs/DECISIONS.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

import deepfeat
from deepfeat.errors import UsageError
from deepfeat.models import load_backbone
from deepfeat.runtimes import CALIBRATION_IMAGES, CALIBRATION_SEED, Calibration, layer_specs, resolve_runtime
from deepfeat.runtimes.export import cache_key
from deepfeat.runtimes.guard import sample_indices
from deepfeat.runtimes.openvino_runtime import nncf_missing

pytestmark = pytest.mark.skipif(
    bool(nncf_missing()) or deepfeat.runtimes.RUNTIMES["openvino"].unavailable_reason() is not None,
    reason="int8 needs OpenVINO and NNCF",
)

LAYERS = "blocks.4,pre_logits"


def _runtime_cache() -> list[str]:
    root = os.path.join(os.environ["DEEPFEAT_CACHE_DIR"], "runtimes")
    return sorted(os.listdir(root)) if os.path.isdir(root) else []


def test_the_calibration_sample_is_seeded_and_identified_by_its_pixels() -> None:
    assert CALIBRATION_IMAGES == 300
    assert sample_indices(1000, CALIBRATION_IMAGES, CALIBRATION_SEED) == sample_indices(1000, 300, 1)
    assert sample_indices(1000, 300, 1) != sample_indices(1000, 300, 0)  # not the guard's own sample
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    a, b = Calibration.of(pixels), Calibration.of(pixels.copy())
    assert a.digest == b.digest and a.images == 5 and a.short
    other = pixels.copy()
    other[0, 0, 0, 0] ^= 1
    assert Calibration.of(other).digest != a.digest
    bb = load_backbone("efficientnet_lite0", input_size=96)
    specs = layer_specs(bb, LAYERS)
    keys = [cache_key(bb, specs, "openvino", "v", {"int8": {"calibration": c.digest}}) for c in (a, Calibration.of(other))]
    assert keys[0] != keys[1]  # another sample is another export
    assert resolve_runtime("auto", "cpu", "int8").runtime == "openvino"
    with pytest.raises(UsageError, match="int8"):
        resolve_runtime("torch", "cpu", "int8")
    with pytest.raises(UsageError, match="int8"):
        resolve_runtime("onnxruntime", "cpu", "int8")


def test_int8_is_calibrated_on_the_jobs_images_cached_and_guarded(fm_dir: Path, tmp_path: Path, caplog) -> None:
    source = fm_dir / "train"  # 40 images at 64 px: a small job, so quantising stays quick
    kw = dict(layers=LAYERS, input_size=64, runtime="openvino", precision="int8", workers=1, batch_size=16)
    first = tmp_path / "first"
    before = _runtime_cache()
    with caplog.at_level(logging.WARNING, logger="deepfeat.extraction"):
        try:
            deepfeat.extract(source, first, **kw)
        except UsageError as exc:  # the guard refused int8 at the default threshold: with its numbers
            assert "'int8' does not agree with fp32" in str(exc) and "min" in str(exc)
            deepfeat.extract(source, first, min_agreement=0.5, **kw, overwrite=True)
    n = len(list(source.rglob("*.png")))
    assert n < CALIBRATION_IMAGES
    assert any(f"calibrated on all {n} decodable images" in r.getMessage() for r in caplog.records)
    md = deepfeat.open_store(first).metadata
    assert md["precision"] == "int8" and md["runtime"]["runtime"] == "openvino"
    calibration = md["runtime"]["calibration"]
    assert calibration["images"] == n and calibration["wanted"] == CALIBRATION_IMAGES
    agreement = md["runtime"]["agreement"]
    assert agreement["precision"] == "int8"
    floor = agreement["threshold"]
    assert agreement["passed"]
    for tap in agreement["taps"].values():
        assert tap["min"] >= floor and tap["median"] >= agreement["median_floor"]
    built = _runtime_cache()
    assert len(built) > len(before)
    # the same inputs again: the same seeded sample, the cached int8 export (nothing new exported)
    second = tmp_path / "second"
    deepfeat.extract(source, second, min_agreement=floor, **kw)
    assert deepfeat.open_store(second).metadata["runtime"]["calibration"] == calibration
    assert _runtime_cache() == built
    x1, _, m1 = deepfeat.open_store(first).load("pre_logits")
    x2, _, m2 = deepfeat.open_store(second).load("pre_logits")
    assert m1.column("id").to_pylist() == m2.column("id").to_pylist() and np.array_equal(x1, x2)


def test_int8_runs_on_the_local_engine_only(fm_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    with pytest.raises(UsageError, match="local engine"):
        deepfeat.extract(fm_dir, tmp_path / "s", layers=LAYERS, input_size=96, precision="int8", engine="ray")


def test_without_vnni_every_layer_is_quantised_for_saturating_int8_products(
    fm_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """A CPU without VNNI (AVX2 only) multiplies int8 with 16-bit saturating sums: NNCF's overflow fix then
    applies to every layer, not the first only; the recipe is part of the export's cache key. Runs on any
    CPU: the flags are what ``int8_recipe`` is told."""
    import nncf

    from deepfeat.runtimes import openvino_runtime

    asked: list[str] = []
    quantize = nncf.quantize

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        asked.append(kwargs["advanced_parameters"].overflow_fix.value)
        return quantize(*args, **kwargs)

    monkeypatch.setattr(nncf, "quantize", spy)
    source = fm_dir / "test"
    kw = dict(layers=LAYERS, input_size=64, runtime="openvino", precision="int8", workers=1, min_agreement=0.5)
    before = _runtime_cache()
    stores = {}
    for vnni in (False, True):
        monkeypatch.setattr(openvino_runtime, "cpu_has_vnni", lambda vnni=vnni: vnni)
        stores[vnni] = tmp_path / f"vnni-{vnni}"
        deepfeat.extract(source, stores[vnni], **kw)
    assert asked == ["enable", "first_layer_only"]
    assert len(_runtime_cache()) >= len(before) + 2  # two int8 exports, one per recipe
    x0, _, _ = deepfeat.open_store(stores[False]).load("pre_logits")
    x1, _, _ = deepfeat.open_store(stores[True]).load("pre_logits")
    assert not np.array_equal(x0, x1)

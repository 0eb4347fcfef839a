"""The precision guard on any CPU: a stand-in runtime whose "bf16" adds noise of a chosen size.

What ``auto`` picks is asserted from the CPU flags; the guard's fallback (auto), refusal (explicit),
its record in the store, the bundle and ``deepfeat info``, the resume that does not measure again,
and the analysis commands' warning on a reduced-precision store all run on AVX2-only CPUs too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import deepfeat
from deepfeat.agreement import Agreement
from deepfeat.cli import main
from deepfeat.errors import UsageError
from deepfeat.runtimes import RUNTIMES, register_runtime, resolve_runtime
from deepfeat.runtimes.base import cpu_has_bf16
from deepfeat.runtimes.guard import DEFAULT_MIN_AGREEMENT, GUARD_IMAGES, ladder, row_cosines, sample_indices
from deepfeat.runtimes.openvino_runtime import OpenVINORuntime
from deepfeat.runtimes.torch_runtime import TorchRuntime

KW = dict(layers="blocks.4,pre_logits", input_size=64, workers=0, runtime="noisy")


class NoisyRuntime(TorchRuntime):
    """torch fp32, plus Gaussian noise of ``sigma`` x the layer's RMS per value at any other precision
    (deterministic per batch): a reduced precision of a chosen quality."""

    name = "noisy"
    precisions = {"cpu": ("fp32", "bf16")}
    sigma = 0.0
    built: list[str] = []

    def __init__(self, *args, cache_dir=None, threads=None, **kwargs) -> None:  # as the exported runtimes take
        super().__init__(*args, **kwargs)
        NoisyRuntime.built.append(self.precision)

    @classmethod
    def auto_precision(cls, device: str) -> str:
        return "bf16"

    def _autocast(self):
        return contextlib.nullcontext()

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        feats = super().forward(pixels)
        if self.precision == "fp32":
            return feats
        rng = np.random.default_rng(int(pixels.sum()) % (1 << 32))
        return {
            k: v + rng.normal(0, self.sigma * float(np.sqrt((v**2).mean())), v.shape).astype(np.float32)
            for k, v in feats.items()
        }


@pytest.fixture
def noisy():
    register_runtime(NoisyRuntime)
    NoisyRuntime.built = []
    try:
        yield NoisyRuntime
    finally:
        del RUNTIMES["noisy"]


def test_auto_picks_bf16_exactly_where_the_cpu_computes_it(monkeypatch) -> None:
    """On this machine: from its flags. Then as an AVX2-only CPU and as a bf16 CPU would see it."""
    installed = OpenVINORuntime.unavailable_reason() is None
    expected = "bf16" if installed and cpu_has_bf16() and OpenVINORuntime.supports_bf16() else "fp32"
    assert resolve_runtime("auto", "cpu", "auto").precision == expected
    for flags, want in (
        ({"avx2", "fma"}, "fp32"),
        ({"avx2", "avx512f", "avx512_bf16"}, "bf16"),
        ({"avx2", "amx_bf16"}, "bf16"),
    ):
        monkeypatch.setattr("deepfeat.runtimes.base.cpu_flags", lambda f=flags: f)
        monkeypatch.setattr(OpenVINORuntime, "supports_bf16", classmethod(lambda cls: cpu_has_bf16()))
        assert resolve_runtime("torch", "cpu", "auto").precision == want
        if installed:
            assert resolve_runtime("openvino", "cpu", "auto").precision == want


def test_ladder_and_sample_are_fixed() -> None:
    assert ladder(TorchRuntime, "cuda", "bf16") == ["bf16", "fp16", "fp32"]
    assert ladder(TorchRuntime, "cpu", "bf16") == ["bf16", "fp32"]
    assert ladder(TorchRuntime, "cpu", "fp32") == ["fp32"]
    assert sample_indices(10) == list(range(10))
    picked = sample_indices(10_000)
    assert len(picked) == GUARD_IMAGES and picked == sorted(picked) == sample_indices(10_000)
    assert row_cosines(np.array([[1.0, 0.0], [0.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 0.0]])).tolist() == [1.0, 1.0]


def test_a_close_precision_passes_and_is_recorded_in_store_bundle_and_info(
    noisy, fm_dir: Path, tmp_path: Path, capsys
) -> None:
    noisy.sigma = 0.01  # cosine ~ 0.99995
    out = tmp_path / "feats"
    s = deepfeat.extract(fm_dir, out, **KW)
    assert s.embedded_total == 80
    store = deepfeat.open_store(out)
    assert store.metadata["precision"] == "bf16"
    rec = Agreement.from_dict(store.metadata["runtime"]["agreement"])
    assert rec.passed and rec.precision == "bf16" and rec.runtime == "noisy" and rec.images == GUARD_IMAGES == 64
    assert rec.threshold == DEFAULT_MIN_AGREEMENT and set(rec.taps) == {"blocks.4", "pre_logits"}
    assert all(0.999 < t["min"] <= t["median"] < 1.0 for t in rec.taps.values())
    # the features stored are the noisy runtime's (the guard measured what the job then computed)
    ref = deepfeat.extract(fm_dir, tmp_path / "ref", **{**KW, "precision": "fp32"})
    assert ref.embedded_total == 80
    a = store.load("pre_logits")[0]
    b = deepfeat.open_store(tmp_path / "ref").load("pre_logits")[0]
    assert 0.999 < row_cosines(a, b).min() < 1.0

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "agreement" in text and "bf16 (noisy) vs torch fp32 on 64 images" in text and "passed" in text
    assert main(["info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["agreement"]["passed"] is True

    model = tmp_path / "m.dfm"
    deepfeat.train(out, layers="pre_logits", head="logreg", solver="stream", epochs=2, out=model)
    from deepfeat.bundle import load_bundle

    assert load_bundle(model).metadata["runtime"]["agreement"] == store.metadata["runtime"]["agreement"]

    # a resume keeps the recorded precision and measures nothing: only the job's runtime is built
    noisy.built = []
    again = deepfeat.extract(fm_dir, out, **KW)
    assert again.resumed and noisy.built == ["bf16"]


def test_auto_falls_back_to_fp32_below_the_threshold(noisy, fm_dir: Path, tmp_path: Path, caplog) -> None:
    noisy.sigma = 0.5  # cosine ~ 0.89
    with caplog.at_level(logging.WARNING, logger="deepfeat.runtimes.guard"):
        deepfeat.extract(fm_dir, tmp_path / "feats", **KW)
    lines = [r.getMessage() for r in caplog.records if "precision guard" in r.getMessage()]
    assert len(lines) == 1 and "bf16 (noisy)" in lines[0] and "failed" in lines[0]
    store = deepfeat.open_store(tmp_path / "feats")
    assert store.metadata["precision"] == "fp32" and "agreement" not in store.metadata["runtime"]
    assert noisy.built[-1] == "fp32"


def test_an_explicit_precision_below_the_threshold_is_refused_with_the_numbers(
    noisy, fm_dir: Path, tmp_path: Path, capsys
) -> None:
    noisy.sigma = 0.5
    with pytest.raises(UsageError, match=r"does not agree with fp32 .* min cosine 0\.\d{4} .* threshold 0\.98"):
        deepfeat.extract(fm_dir, tmp_path / "feats", **{**KW, "precision": "bf16"})
    assert not (tmp_path / "feats").exists()  # refused before the store was created
    args = [
        "extract",
        str(fm_dir),
        "--out",
        str(tmp_path / "cli"),
        "--input-size",
        "64",
        "--workers",
        "0",
        "--runtime",
        "noisy",
        "--precision",
        "bf16",
        "-q",
    ]
    assert main(args) == 2
    assert "min cosine" in capsys.readouterr().err
    # a lower threshold is the user's choice, and is recorded
    assert main([*args, "--min-agreement", "0.5"]) == 0
    rec = deepfeat.open_store(tmp_path / "cli").metadata["runtime"]["agreement"]
    assert rec["threshold"] == 0.5 and rec["passed"]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1", "nan"])
def test_min_agreement_outside_0_1_exits_2(fm_dir: Path, tmp_path: Path, value: str, capsys) -> None:
    assert main(["extract", str(fm_dir), "--out", str(tmp_path / "x"), f"--min-agreement={value}"]) == 2
    assert "min-agreement" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_analysis_of_a_reduced_precision_store_says_so(noisy, fm_dir: Path, tmp_path: Path, caplog) -> None:
    noisy.sigma = 0.01
    out = tmp_path / "feats"
    deepfeat.extract(fm_dir, out, **KW)
    with caplog.at_level(logging.WARNING):
        deepfeat.full_network_embedding(out, tmp_path / "fne")
        deepfeat.analyze(out, tmp_path / "analysis", layers="blocks.4")
    notes = [r.getMessage() for r in caplog.records if "computed at bf16, not fp32" in r.getMessage()]
    assert len(notes) == 2 and all("--precision fp32" in n for n in notes)
    caplog.clear()
    fp32 = tmp_path / "fp32"
    deepfeat.extract(fm_dir, fp32, **{**KW, "precision": "fp32"})
    with caplog.at_level(logging.WARNING):
        deepfeat.full_network_embedding(fp32, tmp_path / "fne32")
    assert not [r for r in caplog.records if "not fp32" in r.getMessage()]

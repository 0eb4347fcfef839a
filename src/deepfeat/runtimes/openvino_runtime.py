"""OpenVINO on the CPU: the backbone with its taps converted once, cached as IR, compiled with the LATENCY hint.

One synchronous request per batch with the LATENCY hint measured faster than the THROUGHPUT
hint on 2-core machines (one stream uses every core for one batch). bf16 runs only where the
CPU computes it natively (OpenVINO reports ``BF16`` among the CPU's capabilities).

int8: NNCF post-training quantisation of the fp32 IR (mixed preset: symmetric weights, asymmetric
activations; full bias correction), calibrated on a :class:`~deepfeat.runtimes.base.Calibration`
sample of the job's own images and cached under the sample's digest; the ops left in float run
in bf16 where the CPU computes it natively. On a CPU without VNNI every layer's weights are
quantised to 7 bits (NNCF's overflow fix), where the 16-bit sums of ``vpmaddubsw`` would
saturate (:func:`int8_recipe`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

import numpy as np

from ..interrupts import import_held
from .base import RuntimeUnavailable, cpu_has_vnni
from .export import ExportedRuntime, example_pixels

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
IR_FILE = "model.xml"
#: how the int8 graph is quantised (part of its cache key): measured best agreement on Lite0 (issue 24)
INT8_RECIPE = {"preset": "mixed", "fast_bias_correction": False}


def int8_recipe() -> dict[str, Any]:
    """:data:`INT8_RECIPE` with the overflow fix this CPU needs: NNCF's default (the first layer's weights
    at 7 bits) where the CPU has VNNI; every layer's without it, where full-range weights saturate.

    Measured on an AVX2-only EPYC, Lite0 at 224 px, 128 photos (pre_logits cosine against torch fp32):
    min 0.880 / median 0.946 with the default, 0.941 / 0.969 with every layer fixed (docs/DECISIONS.md).

    Example:
        >>> int8_recipe()["overflow_fix"] in ("first_layer_only", "enable")
        True
    """
    return {**INT8_RECIPE, "overflow_fix": "first_layer_only" if cpu_has_vnni() else "enable"}


def _openvino() -> Any:
    """``import openvino``, without OpenVINO's usage telemetry.

    OpenVINO's model converter reports usage to Google Analytics from a forked child process
    (which also receives a terminal's Ctrl-C and prints a ``KeyboardInterrupt`` traceback).
    deepfeat sends no usage data: ``openvino_telemetry`` is hidden, so OpenVINO uses its no-op stub.
    """
    if "openvino_telemetry" not in sys.modules:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]
    return import_held("openvino")  # a Ctrl-C in the middle of its native start-up can crash or vanish


def _core() -> Any:
    return _openvino().Core()


class OpenVINORuntime(ExportedRuntime):
    """The taps as outputs of an OpenVINO model, compiled for the CPU."""

    name = "openvino"
    precisions = {"cpu": ("fp32", "bf16", "int8")}

    def setup(self) -> None:
        import torch

        ov = _openvino()

        core = _core()
        h, w = self.backbone.preprocess.input_size

        def build(folder: str) -> None:
            with torch.no_grad():
                model = ov.convert_model(self.tap_graph(), example_input=example_pixels(self.backbone))
            model.reshape([-1, h, w, 3])
            ov.save_model(model, os.path.join(folder, IR_FILE), compress_to_fp16=False)

        model = self.cached(build, lambda folder: core.read_model(os.path.join(folder, IR_FILE)))
        if len(model.outputs) != len(self.specs):
            raise RuntimeUnavailable(f"the converted model has {len(model.outputs)} outputs, expected {len(self.specs)}")
        hint = _PRECISION_HINT.get(self.precision, "f32")
        if self.precision == "int8":
            model = self._quantized(model, core)
            hint = "bf16" if self.supports_bf16() else "f32"
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": hint}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _quantized(self, model: Any, core: Any) -> Any:
        """The int8 graph of the fp32 ``model``, calibrated on :attr:`calibration` (cached by its digest)."""
        calibration = self.calibration
        if calibration is None:
            raise RuntimeUnavailable("int8 needs calibration images of the job (extract calibrates on its own inputs)")
        if nncf_missing():
            raise RuntimeUnavailable(nncf_missing())
        ov = _openvino()
        recipe = int8_recipe()

        def build(folder: str) -> None:
            if calibration.pixels is None or not len(calibration.pixels):
                raise RuntimeUnavailable("the int8 export is not cached here and its calibration images are not at hand")
            nncf = import_held("nncf")
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

            pixels = calibration.pixels
            quantized = nncf.quantize(
                model,
                nncf.Dataset([pixels[i : i + 1] for i in range(len(pixels))]),
                subset_size=len(pixels),
                preset=nncf.QuantizationPreset.MIXED,
                fast_bias_correction=recipe["fast_bias_correction"],
                advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix(recipe["overflow_fix"])),
            )
            ov.save_model(quantized, os.path.join(folder, IR_FILE), compress_to_fp16=False)

        extra = {
            "int8": {**recipe, "calibration": calibration.digest, "images": calibration.images, "nncf": _nncf_version()}
        }
        return self.cached(build, lambda folder: core.read_model(os.path.join(folder, IR_FILE)), extra)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            _openvino()
        except ImportError:
            return "OpenVINO is not installed: pip install openvino"
        return None

    @classmethod
    def auto_precision(cls, device: str) -> str:
        return "bf16" if cls.supports_bf16() else "fp32"

    @classmethod
    def supports_bf16(cls) -> bool:
        try:
            return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception:  # noqa: BLE001
            return False

    @classmethod
    def version(cls) -> str:
        return str(_openvino().get_version())

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        results = self.request.infer([pixels])
        return {spec.name: np.array(results[out]) for spec, out in zip(self.specs, self.compiled.outputs)}

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "hint": "LATENCY"}
        if self.precision == "int8" and self.calibration is not None:
            out["calibration"] = self.calibration.describe()
        return out


def nncf_missing() -> str | None:
    """None when NNCF (int8 quantisation) is installed, else the install hint."""
    if importlib.util.find_spec("nncf") is None:
        return "int8 needs NNCF: pip install 'deepfeat[int8]' (or pip install nncf)"
    return None


def _nncf_version() -> str:
    from importlib.metadata import version

    return version("nncf")

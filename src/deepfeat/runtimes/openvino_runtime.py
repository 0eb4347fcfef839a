"""OpenVINO on the CPU: the backbone with its taps converted once, cached as IR, compiled with the LATENCY hint.

One synchronous request per batch with the LATENCY hint measured faster than the THROUGHPUT
hint on 2-core machines (one stream uses every core for one batch). bf16 runs only where the
CPU computes it natively (OpenVINO reports ``BF16`` among the CPU's capabilities).
"""
from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np

from ..interrupts import import_held
from .base import RuntimeUnavailable
from .export import ExportedRuntime, example_pixels

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
IR_FILE = "model.xml"


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
    precisions = {"cpu": ("fp32", "bf16")}

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
            raise RuntimeUnavailable(f"the converted model has {len(model.outputs)} outputs, "
                                     f"expected {len(self.specs)}")
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY",
                                  "INFERENCE_PRECISION_HINT": _PRECISION_HINT[self.precision]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()

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
        return _openvino().get_version()

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        results = self.request.infer([pixels])
        return {spec.name: np.array(results[out]) for spec, out in zip(self.specs, self.compiled.outputs)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hint": "LATENCY"}

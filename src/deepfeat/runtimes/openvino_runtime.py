"""OpenVINO on the CPU: the backbone with its taps converted once, cached as IR, compiled with the LATENCY hint.

One synchronous request per batch with the LATENCY hint measured faster than the THROUGHPUT
hint on 2-core machines (one stream uses every core for one batch). bf16 runs only where the
CPU computes it natively (OpenVINO reports ``BF16`` among the CPU's capabilities).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from .base import RuntimeUnavailable
from .export import ExportedRuntime, example_pixels

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
IR_FILE = "model.xml"


def _core() -> Any:
    import openvino as ov

    return ov.Core()


class OpenVINORuntime(ExportedRuntime):
    """The taps as outputs of an OpenVINO model, compiled for the CPU."""

    name = "openvino"
    precisions = {"cpu": ("fp32", "bf16")}

    def setup(self) -> None:
        import openvino as ov
        import torch

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
            import openvino  # noqa: F401
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
        import openvino as ov

        return ov.get_version()

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        results = self.request.infer([pixels])
        return {spec.name: np.array(results[out]) for spec, out in zip(self.specs, self.compiled.outputs)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "hint": "LATENCY"}

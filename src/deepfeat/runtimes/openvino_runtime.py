"""OpenVINO on the CPU: the backbone with its taps converted once, cached as IR, compiled with the LATENCY hint.

One synchronous request per batch with the LATENCY hint measured faster than the THROUGHPUT
hint on 2-core machines (one stream uses every core for one batch). bf16 runs only where the
CPU computes it natively (OpenVINO reports ``BF16`` among the CPU's capabilities).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..models.registry import Backbone
from ..store.reader import LayerSpec
from .base import Runtime, RuntimeUnavailable
from .export import ArtifactCache, TapGraph, cache_key, example_pixels

log = logging.getLogger(__name__)

_PRECISION_HINT = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
IR_FILE = "model.xml"


def _core() -> Any:
    import openvino as ov

    return ov.Core()


class OpenVINORuntime(Runtime):
    """The taps as outputs of an OpenVINO model, compiled for the CPU."""

    name = "openvino"
    precisions = {"cpu": ("fp32", "bf16")}

    def __init__(self, backbone: Backbone, specs: Sequence[LayerSpec], infos: Mapping[str, Any], *,
                 device: str = "cpu", precision: str = "fp32", dtype: str = "float32",
                 cache_dir: str | None = None, threads: int | None = None) -> None:
        super().__init__(backbone, specs, infos, device=device, precision=precision, dtype=dtype)
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        import openvino as ov
        import torch

        core = _core()
        if isinstance(backbone.model, torch.jit.ScriptModule):
            raise RuntimeUnavailable("TorchScript models run in torch only")
        h, w = backbone.preprocess.input_size

        def build(folder: str) -> None:
            graph = TapGraph(backbone, specs, infos).eval()
            with torch.inference_mode(False), torch.no_grad():
                model = ov.convert_model(graph, example_input=example_pixels(backbone))
            model.reshape([-1, h, w, 3])
            ov.save_model(model, os.path.join(folder, IR_FILE), compress_to_fp16=False)

        def load(folder: str) -> Any:
            return core.read_model(os.path.join(folder, IR_FILE))

        key = cache_key(backbone, specs, self.name, self.version())
        try:
            model = ArtifactCache(cache_dir).get_or_build(key, build, load)
            if len(model.outputs) != len(self.specs):
                raise RuntimeUnavailable(f"the converted model has {len(model.outputs)} outputs, "
                                         f"expected {len(self.specs)}")
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": _PRECISION_HINT[precision]}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            self.compiled = core.compile_model(model, "CPU", config)
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - conversion/compilation failures fall back to torch
            raise RuntimeUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
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

"""ONNX Runtime: the backbone with its taps exported once to ONNX (cached), run by an inference session.

CPU by default; ``device="cuda"`` uses the CUDA execution provider when the installed build has it.
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

ONNX_FILE = "model.onnx"
OPSET = 17


class ONNXRuntime(Runtime):
    """The taps as outputs of an ONNX graph, run by ONNX Runtime with every graph optimisation on."""

    name = "onnxruntime"
    precisions = {"cpu": ("fp32",), "cuda": ("fp32",)}

    def __init__(self, backbone: Backbone, specs: Sequence[LayerSpec], infos: Mapping[str, Any], *,
                 device: str = "cpu", precision: str = "fp32", dtype: str = "float32",
                 cache_dir: str | None = None, threads: int | None = None) -> None:
        super().__init__(backbone, specs, infos, device=device, precision=precision, dtype=dtype)
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        import onnxruntime as ort
        import torch

        if isinstance(backbone.model, torch.jit.ScriptModule):
            raise RuntimeUnavailable("TorchScript models run in torch only")
        outputs = [f"f{i}" for i in range(len(self.specs))]

        def build(folder: str) -> None:
            graph = TapGraph(backbone, specs, infos).eval()
            dynamic = {"pixels": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
            with torch.no_grad():
                torch.onnx.export(graph, (example_pixels(backbone),), os.path.join(folder, ONNX_FILE),
                                  input_names=["pixels"], output_names=outputs, dynamic_axes=dynamic,
                                  opset_version=OPSET, dynamo=False)

        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailable("this ONNX Runtime build has no CUDA provider (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(threads) if threads else max(1, torch.get_num_threads())
        opts.log_severity_level = 3

        def load(folder: str) -> Any:
            return ort.InferenceSession(os.path.join(folder, ONNX_FILE), opts, providers=providers)

        key = cache_key(backbone, specs, self.name, self.version())
        try:
            self.session = ArtifactCache(cache_dir).get_or_build(key, build, load)
        except Exception as exc:  # noqa: BLE001 - export failures fall back to torch
            raise RuntimeUnavailable(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
        self.outputs = outputs

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return "ONNX Runtime is not installed: pip install 'deepfeat[onnx]' (onnxruntime and onnx)"
        try:
            import onnx  # noqa: F401  (torch's exporter writes ONNX through it)
        except ImportError:
            return "the onnx package is not installed: pip install 'deepfeat[onnx]' (onnxruntime and onnx)"
        return None

    @classmethod
    def version(cls) -> str:
        import onnxruntime as ort

        return ort.__version__

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        arrays = self.session.run(self.outputs, {"pixels": pixels})
        return {spec.name: arr for spec, arr in zip(self.specs, arrays)}

"""ONNX Runtime: the backbone with its taps exported once to ONNX (cached), run by an inference session.

CPU by default; ``device="cuda"`` uses the CUDA execution provider when the installed build has it.
"""

from __future__ import annotations

import os

import numpy as np

from ..interrupts import import_held
from .base import RuntimeUnavailable
from .export import ExportedRuntime, example_pixels

ONNX_FILE = "model.onnx"
OPSET = 17


class ONNXRuntime(ExportedRuntime):
    """The taps as outputs of an ONNX graph, run by ONNX Runtime with every graph optimisation on."""

    name = "onnxruntime"
    precisions = {"cpu": ("fp32",), "cuda": ("fp32",)}

    def setup(self) -> None:
        import onnxruntime as ort
        import torch

        self.outputs = [f"f{i}" for i in range(len(self.specs))]

        def build(folder: str) -> None:
            dynamic = {"pixels": {0: "batch"}, **{o: {0: "batch"} for o in self.outputs}}
            with torch.no_grad():
                torch.onnx.export(
                    self.tap_graph(),
                    (example_pixels(self.backbone),),
                    os.path.join(folder, ONNX_FILE),
                    input_names=["pixels"],
                    output_names=self.outputs,
                    dynamic_axes=dynamic,
                    opset_version=OPSET,
                    dynamo=False,
                )

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailable("this ONNX Runtime build has no CUDA provider (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = int(self.threads) if self.threads else max(1, torch.get_num_threads())
        opts.log_severity_level = 3
        self.session = self.cached(
            build, lambda folder: ort.InferenceSession(os.path.join(folder, ONNX_FILE), opts, providers=providers)
        )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        try:
            import_held("onnxruntime")  # a Ctrl-C in the middle of its native start-up can crash or vanish
        except ImportError:
            return "ONNX Runtime is not installed: pip install 'deepfeat[onnx]' (onnxruntime and onnx)"
        try:
            import_held("onnx")  # torch's exporter writes ONNX through it
        except ImportError:
            return "the onnx package is not installed: pip install 'deepfeat[onnx]' (onnxruntime and onnx)"
        return None

    @classmethod
    def version(cls) -> str:
        import onnxruntime as ort

        return str(ort.__version__)

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        arrays = self.session.run(self.outputs, {"pixels": pixels})
        return {spec.name: arr for spec, arr in zip(self.specs, arrays)}

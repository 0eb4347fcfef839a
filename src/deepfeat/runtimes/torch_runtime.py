"""The reference runtime: PyTorch eager with hooks (CPU or CUDA; channels-last; bf16/fp16 autocast)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..models.backbone import Backbone
from ..models.layers import FeatureTaps
from ..store.layerspec import LayerSpec
from .base import Runtime, cpu_has_bf16


class TorchRuntime(Runtime):
    """PyTorch eager: the reference every other runtime is compared with, and the fallback.

    The forward pass stops after the last tapped layer. On CUDA, batches are copied from
    pinned memory without blocking; ``bf16``/``fp16`` run under autocast.
    """

    name = "torch"
    precisions = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")}

    def __init__(
        self,
        backbone: Backbone,
        specs: Sequence[LayerSpec],
        infos: Mapping[str, Any],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        dtype: str = "float32",
        channels_last: bool = True,
    ) -> None:
        super().__init__(backbone, specs, infos, device=device, precision=precision, dtype=dtype)
        self.torch_device = torch.device(device)
        self.channels_last = channels_last and not isinstance(backbone.model, torch.jit.ScriptModule)
        model = backbone.model.to(self.torch_device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        backbone.model = model
        self.taps = FeatureTaps(backbone, {s.name: s.pool for s in self.specs}, infos)

    @classmethod
    def auto_precision(cls, device: str) -> str:
        if device.startswith("cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_bf16() else "fp32"

    @classmethod
    def version(cls) -> str:
        return torch.__version__

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dt = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.torch_device.type, dtype=dt)

    def forward_tensors(self, pixels: np.ndarray) -> dict[str, torch.Tensor]:
        """Like :meth:`forward` but returns float32 tensors on the runtime's device."""
        batch = torch.from_numpy(pixels)
        if self.torch_device.type == "cuda":
            batch = batch.pin_memory().to(self.torch_device, non_blocking=True)
        x = self.backbone.preprocess.normalize(batch, channels_last=self.channels_last)
        with torch.inference_mode(), self._autocast(), self.taps:
            feats = self.taps.run(x)
        return {s.name: feats[s.name].float() for s in self.specs}

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in self.forward_tensors(pixels).items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "channels_last": self.channels_last}

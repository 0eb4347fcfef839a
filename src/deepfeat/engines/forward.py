"""Batched forward passes with taps: uint8 pixels in, pooled numpy features out."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..models.layers import FeatureTaps, LayerInfo
from ..models.registry import Backbone
from ..store.reader import LayerSpec

FLOAT16_MAX = float(np.finfo(np.float16).max)


class FeatureComputer:
    """Runs the backbone on batches of preprocessed pixels and returns stored-dtype features.

    Example:
        >>> fc = FeatureComputer(bb, specs, infos, dtype="float16")   # doctest: +SKIP
        >>> feats = fc(np.zeros((4, 224, 224, 3), np.uint8))           # {layer: 4 x dims}
    """

    def __init__(self, backbone: Backbone, specs: Sequence[LayerSpec], infos: Mapping[str, LayerInfo],
                 dtype: str = "float32", device: str = "cpu", precision: str = "fp32",
                 channels_last: bool = True) -> None:
        self.backbone = backbone
        self.specs = list(specs)
        self.dtype = np.dtype(dtype)
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last and not isinstance(backbone.model, torch.jit.ScriptModule)
        model = backbone.model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        backbone.model = model
        self.taps = FeatureTaps(backbone, {s.name: s.pool for s in self.specs}, infos)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dt = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dt)

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """``pixels``: N x H x W x 3 uint8. Returns {layer name: N x dims} in the store dtype."""
        batch = torch.from_numpy(pixels)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = self.backbone.preprocess.normalize(batch, channels_last=self.channels_last)
        with torch.inference_mode(), self._autocast(), self.taps:
            feats = self.taps.run(x)
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            arr = feats[spec.name].float().cpu().numpy()
            if self.dtype == np.float16:
                arr = np.clip(arr, -FLOAT16_MAX, FLOAT16_MAX)
            out[spec.name] = arr.astype(self.dtype, copy=False)
        return out


def nonfinite_rows(feats: Mapping[str, np.ndarray]) -> np.ndarray:
    """Boolean mask of rows with a NaN or Inf in any layer."""
    masks = [~np.isfinite(a).all(axis=1) for a in feats.values()]
    return np.logical_or.reduce(masks) if masks else np.zeros(0, dtype=bool)

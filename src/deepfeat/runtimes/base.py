"""The runtime interface: uint8 pixels in, pooled features per layer out.

A :class:`Runtime` is a backbone with taps, compiled or exported for one execution engine
(PyTorch eager, OpenVINO, ONNX Runtime). Every path that turns images into features
(extraction engines, ``predict``, ``classify``, :class:`~deepfeat.FeatureExtractor`, plots)
calls one, built by :func:`deepfeat.runtimes.build_runtime`.

The contract: ``runtime(pixels)`` takes an ``N x H x W x 3`` uint8 batch (already resized and
cropped by the decode workers) and returns ``{layer name: N x dims}`` in the store dtype;
:meth:`Runtime.describe` says what ran (recorded in stores and bundles).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..models.backbone import Backbone
from ..store.layerspec import LayerSpec

log = logging.getLogger(__name__)

FLOAT16_MAX = float(np.finfo(np.float16).max)


class RuntimeUnavailable(Exception):
    """The runtime cannot run this model here (package missing, export or compile failed)."""


#: images of the job an int8 runtime is calibrated on by default (a seeded sample; all of them when fewer)
CALIBRATION_IMAGES = 300
CALIBRATION_SEED = 1


@dataclass(frozen=True)
class Calibration:
    """The images a quantised (int8) runtime is calibrated on, and their identity.

    ``digest`` (sha256 of the pixels) is part of the exported graph's cache key, so another sample
    is another export; ``pixels`` may be None where only a cached export can be used.

    Example:
        >>> c = Calibration.of(np.zeros((3, 4, 4, 3), np.uint8), wanted=300)
        >>> c.images, c.wanted, c.short
        (3, 300, True)
    """

    digest: str
    images: int
    wanted: int = CALIBRATION_IMAGES
    pixels: np.ndarray | None = None

    @classmethod
    def of(cls, pixels: np.ndarray, wanted: int = CALIBRATION_IMAGES) -> "Calibration":
        """The calibration of ``pixels`` (N x H x W x 3 uint8)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        digest = hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()
        return cls(digest, len(pixels), wanted, pixels)

    @property
    def short(self) -> bool:
        """Fewer images than :attr:`wanted` (a small job: all of its images were used)."""
        return self.images < self.wanted

    def describe(self) -> dict[str, Any]:
        """What the store records: how many images, how many were wanted, and the sample's digest."""
        return {"images": self.images, "wanted": self.wanted, "sha256": self.digest}


class Runtime:
    """A backbone with taps, ready to run batches. Subclasses implement :meth:`forward`.

    Class attributes (the registry reads them):
        name: the name users pass as ``runtime=`` / ``--runtime``.
        precisions: precisions this runtime can run, by device type.
    """

    name: ClassVar[str] = ""
    precisions: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init__(
        self,
        backbone: Backbone,
        specs: Sequence[LayerSpec],
        infos: Mapping[str, Any],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        dtype: str = "float32",
    ) -> None:
        self.backbone = backbone
        self.specs = list(specs)
        self.infos = infos
        self.device = device
        self.precision = precision
        self.dtype = np.dtype(dtype)

    # ------------------------------------------------------------------ what subclasses provide
    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None when the runtime's package is importable here, else the ``pip install`` hint."""
        return None

    @classmethod
    def auto_precision(cls, device: str) -> str:
        """The fastest precision that keeps agreement with torch fp32 on ``device``."""
        return "fp32"

    @classmethod
    def version(cls) -> str:
        return ""

    def forward(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """``pixels``: N x H x W x 3 uint8. Returns {layer: N x dims float32} (pooled)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared
    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Features of a uint8 batch in the store dtype (float16 values are clipped to its range)."""
        feats = self.forward(np.ascontiguousarray(pixels, dtype=np.uint8))
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            arr = np.asarray(feats[spec.name], dtype=np.float32)
            if self.dtype == np.float16:
                arr = np.clip(arr, -FLOAT16_MAX, FLOAT16_MAX)
            out[spec.name] = arr.astype(self.dtype, copy=False)
        return out

    def describe(self) -> dict[str, Any]:
        """What ran: recorded in store metadata and bundles."""
        return {"runtime": self.name, "precision": self.precision, "device": self.device, "version": self.version()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backbone.name!r}, {len(self.specs)} layers, {self.precision})"


def cpu_flags() -> set[str]:
    """The CPU feature flags of this machine (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX); emulated bf16 is slower than fp32."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_vnni() -> bool:
    """True when the CPU has int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI or AMX): without them,
    int8 convolutions multiply with ``vpmaddubsw``, whose 16-bit sums saturate on full-range weights."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def cpu_model() -> str:
    """The CPU's model name, for benchmark reports."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return re.sub(r"\s+", " ", line.split(":", 1)[1]).strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()

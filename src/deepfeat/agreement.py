"""The precision guard's record: how a reduced precision agreed with torch fp32, per tapped layer.

Written by :mod:`deepfeat.runtimes.guard` into a store's metadata (``runtime.agreement``), copied
into bundles, read by ``deepfeat info`` and the analysis commands. Standard library only.

Example:
    >>> ag = Agreement("bf16", "openvino", images=64, threshold=0.98,
    ...                taps={"pre_logits": {"min": 0.991, "median": 0.9993}})
    >>> ag.passed
    True
    >>> print(ag.summary())  # doctest: +NORMALIZE_WHITESPACE
    bf16 (openvino) vs torch fp32 on 64 images: min cosine 0.9910 (pre_logits), median >= 0.9993;
    threshold 0.98 (median 0.995): passed
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: the precision guard's default threshold on each tap's minimum row cosine (docs/DECISIONS.md: how it was chosen)
DEFAULT_MIN_AGREEMENT = 0.98


def median_floor(threshold: float) -> float:
    """The floor on each tap's median cosine that goes with ``threshold`` on its minimum."""
    return 1.0 - (1.0 - threshold) / 4.0


@dataclass
class Agreement:
    """How a reduced precision agreed with torch fp32 on a job's images, per tapped layer."""

    precision: str
    runtime: str
    images: int
    threshold: float
    #: {layer: {"min": cosine, "median": cosine}}
    taps: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        floor = median_floor(self.threshold)
        return all(t["min"] >= self.threshold and t["median"] >= floor for t in self.taps.values())

    def worst(self) -> tuple[str, float]:
        """The tap with the lowest minimum cosine, and that minimum."""
        name = min(self.taps, key=lambda k: self.taps[k]["min"])
        return name, self.taps[name]["min"]

    def summary(self) -> str:
        name, low = self.worst()
        median = min(t["median"] for t in self.taps.values())
        return (
            f"{self.precision} ({self.runtime}) vs torch fp32 on {self.images} images: min cosine {low:.4f} "
            f"({name}), median >= {median:.4f}; threshold {self.threshold:g} "
            f"(median {median_floor(self.threshold):g}): {'passed' if self.passed else 'failed'}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "runtime": self.runtime,
            "images": self.images,
            "threshold": self.threshold,
            "median_floor": median_floor(self.threshold),
            "reference": "torch fp32",
            "passed": self.passed,
            "taps": {k: {"min": round(v["min"], 6), "median": round(v["median"], 6)} for k, v in self.taps.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Agreement:
        return cls(
            str(d["precision"]),
            str(d["runtime"]),
            int(d["images"]),
            float(d["threshold"]),
            {str(k): {"min": float(v["min"]), "median": float(v["median"])} for k, v in d["taps"].items()},
        )


def describe_agreement(runtime_meta: Mapping[str, Any] | None) -> str | None:
    """One line about the agreement recorded in a store's or bundle's runtime metadata (None if none)."""
    if not isinstance(runtime_meta, Mapping):
        return None
    rec = runtime_meta.get("agreement")
    if not isinstance(rec, Mapping):
        return None
    try:
        return Agreement.from_dict(rec).summary()
    except (KeyError, TypeError, ValueError):
        return "unreadable agreement record"


def reduced_precision_note(metadata: Mapping[str, Any], path: str) -> str | None:
    """The warning analysis commands give for the store at ``path`` (its ``metadata``) when its features were
    computed below fp32; None at fp32 (and for stores older than runtimes, which are fp32)."""
    precision = metadata.get("precision")
    if not isinstance(precision, str) or precision in ("fp32", ""):
        return None
    return (
        f"The store {path!r} was computed at {precision}, not fp32: per-feature statistics (analyze, fne, the "
        f"probe's FNE candidate) read single features, where {precision} rounding moves values near thresholds "
        "and ranks; for analysis-grade numbers extract with --precision fp32"
    )


__all__ = ["Agreement", "DEFAULT_MIN_AGREEMENT", "describe_agreement", "median_floor", "reduced_precision_note"]

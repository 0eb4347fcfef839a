"""The precision guard: a reduced precision is used only after it is measured against fp32.

A runtime may compute in bf16, fp16 (and int8 where a runtime adds it): faster, but not the same
features. Before a job computes with a reduced precision, the guard runs the candidate and the
reference (torch fp32 on the same device) on a seeded sample of the job's own images, and
measures, per tapped layer, the minimum and the median of the per-row cosine similarity.

The precision passes when, for every tap, ``min >= min_agreement`` and
``median >= 1 - (1 - min_agreement) / 4`` (the median floor: 0.995 at the default 0.98). Under
``precision="auto"`` a failing precision falls back to the next one in :data:`REDUCED` the runtime
runs, then fp32 (never measured), with one log line; an explicit precision that fails is refused
with the measured numbers (:class:`~deepfeat.errors.UsageError`).

The measurement is recorded in the store metadata (``runtime.agreement``), copied into bundles,
and printed by ``deepfeat info``. A new reduced precision is one entry of :data:`REDUCED`.

The record and its one-line summary: :mod:`deepfeat.agreement`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..agreement import DEFAULT_MIN_AGREEMENT, Agreement
from ..errors import UsageError
from ..params import check_number
from . import RUNTIMES, build_runtime, resolve_runtime

log = logging.getLogger(__name__)

#: reduced precisions, in the order ``auto`` tries them after the runtime's own choice (fp32 comes last)
REDUCED: tuple[str, ...] = ("int8", "bf16", "fp16")
#: images of the job measured by the guard (a seeded sample; all of them when fewer)
GUARD_IMAGES = 64
GUARD_SEED = 0


def check_min_agreement(value: float, where: str | None = None) -> float:
    """``min_agreement`` must be a number in (0, 1]."""
    return float(check_number(value, "min_agreement", minimum=0, min_open=True, maximum=1, where=where))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b`` (1.0 for two zero rows)."""
    a = np.asarray(a, dtype=np.float64).reshape(len(a), -1)
    b = np.asarray(b, dtype=np.float64).reshape(len(b), -1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(1)
    both_zero = (na == 0) & (nb == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / (na * nb))
    return np.nan_to_num(cos, nan=0.0)


def features_of(
    runtime: Callable[[np.ndarray], Mapping[str, np.ndarray]], pixels: np.ndarray, batch_size: int = 32
) -> dict[str, np.ndarray]:
    """``runtime``'s float32 features of ``pixels``, computed ``batch_size`` images at a time."""
    got: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(pixels), batch_size):
        for name, arr in runtime(pixels[s : s + batch_size]).items():
            got.setdefault(name, []).append(np.asarray(arr, dtype=np.float32))
    return {name: np.concatenate(parts) for name, parts in got.items()}


def measure(
    candidate: Callable[[np.ndarray], Mapping[str, np.ndarray]],
    reference: Mapping[str, np.ndarray],
    pixels: np.ndarray,
    batch_size: int = 32,
) -> dict[str, dict[str, float]]:
    """Per tap min and median row cosine of ``candidate(pixels)`` against the ``reference`` features."""
    got = features_of(candidate, pixels, batch_size)
    out = {}
    for name, ref in reference.items():
        cos = row_cosines(got[name], ref)
        out[name] = {"min": float(cos.min()), "median": float(np.median(cos))}
    return out


def sample_indices(n: int, k: int = GUARD_IMAGES, seed: int = GUARD_SEED) -> list[int]:
    """A seeded sample of ``k`` of ``n`` positions, in order (all of them when ``n <= k``)."""
    if n <= k:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))


def ladder(runtime_cls: Any, device: str, start: str) -> list[str]:
    """The precisions ``auto`` tries for ``runtime_cls`` on ``device``: ``start``, then the reduced
    precisions after it that the runtime runs there, then fp32."""
    dev = "cuda" if device.startswith("cuda") else device
    runs = runtime_cls.precisions.get(dev, ())
    later = REDUCED[REDUCED.index(start) + 1 :] if start in REDUCED else ()
    return [start, *(p for p in later if p in runs), "fp32"] if start != "fp32" else ["fp32"]


def guard_precision(
    build: Callable[[str, str], Any],
    reference: Callable[[], Mapping[str, np.ndarray]],
    pixels: np.ndarray,
    *,
    runtime: str,
    precision: str,
    auto: bool,
    device: str = "cpu",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    batch_size: int = 32,
) -> tuple[str, str, Agreement | None]:
    """Choose the precision a job computes with: returns ``(runtime, precision, agreement)``.

    Args:
        build: ``build(runtime, precision)`` returns a :class:`~deepfeat.runtimes.Runtime` (float32
            features) -- the runtime that would compute the job.
        reference: returns torch fp32 features of ``pixels`` ({layer: N x dims}); called at most once.
        pixels: the sample (N x H x W x 3 uint8), e.g. :func:`sample_indices` of the job's inputs.
        runtime / precision: what :func:`~deepfeat.runtimes.resolve_runtime` chose.
        auto: the user asked for ``precision="auto"`` (fall back) rather than this precision (refuse).

    Raises:
        UsageError: an explicit reduced precision below ``min_agreement``.
    """
    check_min_agreement(min_agreement)
    if precision == "fp32" or len(pixels) == 0:
        return runtime, precision, None
    ref: Mapping[str, np.ndarray] | None = None
    tries = ladder(RUNTIMES[runtime], device, precision) if auto else [precision]
    for p in tries:
        if p == "fp32":
            return runtime, p, None
        try:
            resolve_runtime(runtime, device, p)
        except UsageError:
            continue
        candidate = build(runtime, p)
        described = candidate.describe()
        if described["precision"] == "fp32":  # the runtime fell back to fp32 by itself
            return str(described["runtime"]), "fp32", None
        if ref is None:
            ref = reference()
        agreement = Agreement(
            p, str(described["runtime"]), len(pixels), min_agreement, measure(candidate, ref, pixels, batch_size)
        )
        if agreement.passed:
            log.info("precision guard: %s", agreement.summary())
            return str(described["runtime"]), p, agreement
        if not auto:
            raise UsageError(
                f"The precision {p!r} does not agree with fp32 closely enough on this job's images: "
                f"{agreement.summary()}. Use --precision fp32, or lower --min-agreement "
                "(min_agreement) knowing what it costs."
            )
        log.warning("precision guard: %s; trying the next precision", agreement.summary())
    return runtime, "fp32", None


def guard_backbone(
    backbone: Any,
    specs: Sequence[Any],
    infos: Mapping[str, Any] | None,
    pixels: np.ndarray,
    *,
    runtime: str,
    precision: str,
    auto: bool,
    device: str = "cpu",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    channels_last: bool = True,
    batch_size: int = 32,
    calibration: Any = None,
) -> tuple[str, str, Agreement | None]:
    """:func:`guard_precision` for a backbone and its taps: candidates and the torch fp32 reference are
    built with :func:`~deepfeat.runtimes.build_runtime` (exports come from its cache; an int8 candidate
    is calibrated on ``calibration``, a :class:`~deepfeat.runtimes.Calibration`).

    Example:
        >>> rt, prec, ag = guard_backbone(bb, specs, None, pixels, runtime="openvino", precision="bf16",
        ...                               auto=True)   # doctest: +SKIP
        >>> prec, ag.passed                            # doctest: +SKIP
        ('bf16', True)
    """

    def build(name: str, p: str) -> Any:
        return build_runtime(
            backbone,
            specs,
            infos,
            runtime=name,
            device=device,
            precision=p,
            channels_last=channels_last,
            calibration=calibration if p == "int8" else None,
        )

    def reference() -> dict[str, np.ndarray]:
        return features_of(build("torch", "fp32"), pixels, batch_size)

    return guard_precision(
        build,
        reference,
        pixels,
        runtime=runtime,
        precision=precision,
        auto=auto,
        device=device,
        min_agreement=min_agreement,
        batch_size=batch_size,
    )


__all__ = [
    "DEFAULT_MIN_AGREEMENT",
    "GUARD_IMAGES",
    "REDUCED",
    "check_min_agreement",
    "features_of",
    "guard_backbone",
    "guard_precision",
    "ladder",
    "measure",
    "row_cosines",
    "sample_indices",
]

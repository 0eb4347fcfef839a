"""Inference runtimes: the one seam through which images become features.

``build_runtime(backbone, specs)`` returns a :class:`Runtime` (uint8 batch in, pooled
features per layer out). Runtimes register by name; ``runtime="auto"`` picks the fastest that
is installed for the device (OpenVINO, then ONNX Runtime, then torch on the CPU; torch on CUDA),
and ``precision="auto"`` the fastest precision that keeps agreement with torch fp32 (bf16 only
where the CPU computes it natively). A model that a runtime cannot export or compile falls back
to torch with one log line.

Example:
    >>> from deepfeat.models import load_backbone
    >>> from deepfeat.runtimes import build_runtime, layer_specs
    >>> bb = load_backbone("efficientnet_lite0")
    >>> rt = build_runtime(bb, layer_specs(bb, "blocks.4,pre_logits"), runtime="auto")   # doctest: +SKIP
    >>> feats = rt(pixels)                 # {"blocks.4": N x 112, "pre_logits": N x 1280}  # doctest: +SKIP
    >>> rt.describe()["runtime"]                                                       # doctest: +SKIP
    'openvino'
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..models.backbone import Backbone
from ..models.layers import describe_layers, resolve_layers
from ..models.pooling import parse_pools
from ..params import check_choice
from ..registry import Registry
from ..store.layerspec import LayerSpec
from .base import CALIBRATION_IMAGES, CALIBRATION_SEED, Calibration, Runtime, RuntimeUnavailable, cpu_has_bf16, cpu_model
from .onnx_runtime import ONNXRuntime
from .openvino_runtime import OpenVINORuntime, nncf_missing
from .torch_runtime import TorchRuntime

log = logging.getLogger(__name__)

#: Registered runtimes by name, in ``auto`` preference order on the CPU.
RUNTIMES: Registry[type[Runtime]] = Registry("runtime", entries=(OpenVINORuntime, ONNXRuntime, TorchRuntime))
#: class decorator: add a :class:`Runtime` subclass under ``cls.name`` (last in ``auto``'s order)
register_runtime = RUNTIMES.register
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")


def runtime_choices() -> tuple[str, ...]:
    """Valid values of ``runtime=`` / ``--runtime``."""
    return ("auto", *RUNTIMES)


def _device_type(device: str) -> str:
    return "cuda" if device.startswith("cuda") else device


@dataclass(frozen=True)
class RuntimeChoice:
    """A resolved (runtime, precision) pair and why it was chosen."""

    runtime: str
    precision: str


def available_runtimes(device: str = "cpu") -> list[str]:
    """Names of the runtimes installed here that run on ``device``, in ``auto`` preference order."""
    dev = _device_type(device)
    return [n for n, c in RUNTIMES.items() if dev in c.precisions and c.unavailable_reason() is None]


def resolve_runtime(runtime: str = "auto", device: str = "cpu", precision: str = "auto") -> RuntimeChoice:
    """Turn ``auto`` into names and check the pair; raises ``UsageError`` for an impossible request."""
    check_choice(runtime, "runtime", runtime_choices())
    check_choice(precision, "precision", PRECISIONS)
    dev = _device_type(device)
    if runtime == "auto":
        if dev == "cuda":
            runtime = "torch"
        else:
            candidates = available_runtimes(device)
            if precision != "auto":
                candidates = [n for n in candidates if precision in RUNTIMES[n].precisions.get(dev, ())]
            runtime = candidates[0] if candidates else "torch"
    cls = RUNTIMES[runtime]
    reason = cls.unavailable_reason()
    if reason:
        raise UsageError(f"The runtime {runtime!r} cannot run here: {reason}.")
    supported = cls.precisions.get(dev)
    if supported is None:
        raise UsageError(f"The runtime {runtime!r} does not run on {device!r}; it runs on {', '.join(cls.precisions)}.")
    if precision == "auto":
        precision = cls.auto_precision(device)
    if precision not in supported:
        raise UsageError(f"The runtime {runtime!r} on {dev} runs {', '.join(supported)}; got precision {precision!r}.")
    if precision == "bf16" and dev == "cpu" and runtime == "openvino" and not OpenVINORuntime.supports_bf16():
        raise UsageError(
            "This CPU has no native bf16 (OpenVINO does not list BF16 among its capabilities); use --precision fp32."
        )
    if precision == "int8" and runtime == "openvino" and nncf_missing():
        raise UsageError(f"The precision 'int8' cannot run here: {nncf_missing()}.")
    return RuntimeChoice(runtime, precision)


def prefer_recorded(
    runtime: str, precision: str, device: str, recorded_runtime: Any, recorded_precision: Any, what: str = "the store"
) -> tuple[str, str]:
    """``auto`` means the runtime (and precision) recorded in a store or bundle, when they run here.

    Explicit choices are returned unchanged; a recorded pair that cannot run on ``device`` is
    logged and ``auto`` picks again (the store's fingerprint then refuses a mixed resume).
    """
    if runtime != "auto" or not isinstance(recorded_runtime, str):
        return runtime, precision
    wanted = recorded_precision if precision == "auto" and isinstance(recorded_precision, str) else precision
    try:
        resolve_runtime(recorded_runtime, device, wanted)
    except UsageError as exc:
        log.warning(
            "%s was written with %s %s, which cannot run here (%s); auto picks again",
            what,
            recorded_runtime,
            recorded_precision,
            exc,
        )
        return runtime, precision
    return recorded_runtime, wanted


def layer_specs(
    backbone: Backbone,
    layers: str | Sequence[str],
    pool: str | Mapping[str, str] = "avg",
    infos: Mapping[str, Any] | None = None,
) -> list[LayerSpec]:
    """Resolve a layer selection and its pooling into :class:`LayerSpec` objects (store keys included)."""
    from ..store import layout

    infos = infos if infos is not None else describe_layers(backbone)
    names = resolve_layers(layers, infos)  # type: ignore[arg-type]
    pools = parse_pools(pool, names)
    taken: set[str] = set()
    return [
        LayerSpec(n, layout.layer_key(n, taken), tuple(infos[n].shape), pools[n], infos[n].dims(pools[n])) for n in names
    ]


def build_runtime(
    backbone: Backbone,
    specs: Sequence[LayerSpec],
    infos: Mapping[str, Any] | None = None,
    *,
    runtime: str = "auto",
    device: str = "cpu",
    precision: str = "auto",
    dtype: str = "float32",
    channels_last: bool = True,
    cache_dir: str | None = None,
    fallback: bool = True,
    threads: int | None = None,
    calibration: Calibration | None = None,
) -> Runtime:
    """The one factory of :class:`Runtime` objects.

    Args:
        backbone: a loaded :class:`~deepfeat.models.Backbone` (the torch runtime moves it to ``device``).
        specs: the layers to tap and their pooling (see :func:`layer_specs`).
        infos: ``describe_layers(backbone)`` when already computed.
        runtime: ``auto``, ``torch``, ``openvino`` or ``onnxruntime``.
        device: ``cpu`` or ``cuda[:N]``.
        precision: ``auto``, ``fp32``, ``bf16``, ``fp16`` or ``int8`` (OpenVINO, with ``calibration``).
        dtype: dtype of the returned features (``float32`` or ``float16``).
        cache_dir: where exported graphs are cached (default ``~/.cache/deepfeat/runtimes``).
        fallback: when the chosen runtime cannot export or compile this model, use torch (logged)
            instead of raising ``UsageError``: at fp32 when ``precision="auto"``, else at the
            precision asked for (where torch runs it).
        threads: inference threads of an exported runtime (default: every core).
        calibration: the images an int8 runtime is calibrated on (a sample of the job's own inputs);
            without it int8 can only load an export cached under the same digest.
    """
    infos = infos if infos is not None else describe_layers(backbone)
    choice = resolve_runtime(runtime, device, precision)
    if choice.runtime != "torch":
        extra: dict[str, Any] = {"calibration": calibration} if calibration is not None else {}
        try:
            return RUNTIMES[choice.runtime](
                backbone,
                specs,
                infos,
                device=device,
                precision=choice.precision,
                dtype=dtype,
                cache_dir=cache_dir,
                threads=threads,  # type: ignore[call-arg]
                **extra,
            )
        except RuntimeUnavailable as exc:
            if not fallback:
                raise UsageError(f"The runtime {choice.runtime!r} cannot run {backbone.name!r}: {exc}") from None
            # auto falls back to the reference precision; an explicit precision is kept where torch runs it
            torch_precision = (
                choice.precision
                if precision != "auto" and choice.precision in TorchRuntime.precisions.get(_device_type(device), ())
                else "fp32"
            )
            log.warning(
                "%s cannot run %s (%s); falling back to torch %s", choice.runtime, backbone.name, exc, torch_precision
            )
            choice = RuntimeChoice("torch", torch_precision)
    return TorchRuntime(
        backbone, specs, infos, device=device, precision=choice.precision, dtype=dtype, channels_last=channels_last
    )


__all__ = [
    "CALIBRATION_IMAGES",
    "CALIBRATION_SEED",
    "Calibration",
    "RUNTIMES",
    "PRECISIONS",
    "Runtime",
    "RuntimeChoice",
    "RuntimeUnavailable",
    "available_runtimes",
    "build_runtime",
    "cpu_has_bf16",
    "cpu_model",
    "layer_specs",
    "prefer_recorded",
    "register_runtime",
    "resolve_runtime",
    "runtime_choices",
]

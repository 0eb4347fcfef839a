"""Pooling of one layer's activations into one fixed-size vector per image.

* ``none`` -- flatten everything (C x H x W in channel-major order), e.g. 7x7x2048 = 100,352;
* ``avg`` / ``max`` -- global average / max over the spatial positions (or tokens);
* ``avgmax`` -- both, concatenated (2 x C).

Vectors (N x D outputs such as ``pre_logits``) pass through unchanged whatever the pooling.

Example:
    >>> import torch
    >>> pool(torch.ones(2, 8, 7, 7), "avgmax").shape
    torch.Size([2, 16])
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from ..errors import UsageError

POOLINGS = ("none", "avg", "max", "avgmax")
_ALIASES = {"flatten": "none", "mean": "avg", "gap": "avg", "gmp": "max", "avg+max": "avgmax"}


def normalize_pool(name: str) -> str:
    """Canonical pooling name; raises ``UsageError`` for an unknown one."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in POOLINGS:
        raise UsageError(
            f"The 'pool' parameter must be one of {', '.join(POOLINGS)} (or flatten, avg+max); got {name!r} instead."
        )
    return key


def pooled_dims(shape: tuple[int, ...], mode: str) -> int:
    """Feature size of one sample with per-sample ``shape`` (no batch dim) under ``mode``."""
    if len(shape) <= 1:
        return int(shape[0]) if shape else 1
    if mode == "none":
        return int(math.prod(shape))
    channels = shape[0] if len(shape) == 3 else shape[-1]
    return int(channels) * (2 if mode == "avgmax" else 1)


def pool(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool an N x C x H x W (or N x T x D, or N x D) tensor to N x dims."""
    if x.ndim == 2:
        return x
    if x.ndim == 4:
        if mode == "none":
            return x.contiguous().reshape(x.shape[0], -1)
        flat = x.flatten(2)  # N x C x HW
        dim = 2
    elif x.ndim == 3:  # tokens: N x T x D
        if mode == "none":
            return x.contiguous().reshape(x.shape[0], -1)
        flat, dim = x, 1
    else:
        return x.reshape(x.shape[0], -1)
    if mode == "avg":
        return flat.mean(dim)
    if mode == "max":
        return flat.amax(dim)
    return torch.cat([flat.mean(dim), flat.amax(dim)], dim=1)


def parse_pools(pool: str | Mapping[str, str], layers: Sequence[str]) -> dict[str, str]:
    """``"avg"`` for all, or ``"avg,blocks.4=none"`` / a mapping for per-layer pooling."""
    default = "avg"
    overrides: dict[str, str] = {}
    if isinstance(pool, Mapping):
        overrides = {k: normalize_pool(v) for k, v in pool.items()}
    else:
        for part in str(pool).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" in part:
                k, v = part.rsplit("=", 1)
                overrides[k.strip()] = normalize_pool(v)
            else:
                default = normalize_pool(part)
    overrides = {("pre_logits" if k == "embedding" else k): v for k, v in overrides.items()}
    unknown = [k for k in overrides if k not in layers]
    if unknown:
        raise UsageError(f"The 'pool' parameter names layers that are not extracted: {', '.join(unknown)}.")
    return {name: overrides.get(name, default) for name in layers}

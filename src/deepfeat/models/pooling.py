"""Pooling of one layer's activations into one fixed-size vector per image.

Feature maps (N x C x H x W):

* ``none`` -- flatten everything (C x H x W in channel-major order), e.g. 7x7x2048 = 100,352;
* ``avg`` / ``max`` -- global average / max over the spatial positions;
* ``avgmax`` -- both, concatenated (2 x C).

Token sequences (N x T x D, e.g. a ViT block) whose first ``prefix`` tokens are the class token
and any register / distillation tokens (the model's own ``num_prefix_tokens``):

* ``cls`` -- the class token (token 0), D dims;
* ``avg`` / ``max`` / ``avgmax`` -- over the patch tokens only, prefix tokens excluded (timm's
  ``global_pool='avg'`` convention);
* ``clsavg`` (``cls+avg``) -- the class token and the patch-token average, concatenated (2 x D);
* ``none`` -- every token flattened (T x D).

Vectors (N x D outputs such as ``pre_logits``) pass through unchanged whatever the pooling.

Example:
    >>> import torch
    >>> pool(torch.ones(2, 8, 7, 7), "avgmax").shape
    torch.Size([2, 16])
    >>> pool(torch.ones(2, 1 + 4 + 16, 32), "clsavg", prefix=5).shape
    torch.Size([2, 64])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..errors import UsageError

if TYPE_CHECKING:
    import torch

POOLINGS = ("none", "avg", "max", "avgmax", "cls", "clsavg")
#: Poolings that only exist for token sequences with a class token.
TOKEN_POOLINGS = ("cls", "clsavg")
_ALIASES = {
    "flatten": "none",
    "mean": "avg",
    "gap": "avg",
    "gmp": "max",
    "avg+max": "avgmax",
    "cls+avg": "clsavg",
    "cls_avg": "clsavg",
    "token": "cls",
    "class": "cls",
}


def normalize_pool(name: str) -> str:
    """Canonical pooling name; raises ``UsageError`` for an unknown one."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in POOLINGS:
        raise UsageError(
            f"The 'pool' parameter must be one of {', '.join(POOLINGS)} (or flatten, avg+max, cls+avg); "
            f"got {name!r} instead."
        )
    return key


def is_tokens(shape: Sequence[int]) -> bool:
    """True for a per-sample shape of a token sequence (T x D)."""
    return len(shape) == 2


def pool_applies(shape: Sequence[int], mode: str, prefix: int = 0) -> bool:
    """Whether ``mode`` can pool a per-sample ``shape`` whose first ``prefix`` tokens are class/register tokens."""
    if len(shape) <= 1:
        # vectors pass through; a token pooling only where the model has a class token (a ViT's pre_logits)
        return mode not in TOKEN_POOLINGS or prefix >= 1
    if mode in TOKEN_POOLINGS:
        return is_tokens(shape) and prefix >= 1
    return True


def pooled_dims(shape: tuple[int, ...], mode: str, prefix: int = 0) -> int:
    """Feature size of one sample with per-sample ``shape`` (no batch dim) under ``mode``.

    Raises ``UsageError`` when ``mode`` does not apply (``cls`` of a feature map).
    """
    if not pool_applies(shape, mode, prefix):
        what = (
            "a vector, stored as it is (e.g. a CNN's pre_logits)"
            if len(shape) <= 1
            else "a feature map"
            if not is_tokens(shape)
            else "a token sequence without a class token"
        )
        raise UsageError(
            f"The pooling {mode!r} needs a token sequence with a class token (a ViT block's N x T x D "
            f"output); this layer is {what} ({'x'.join(str(s) for s in shape) or 1}). Use avg, max, avgmax or "
            "none (or name the token layers only, e.g. --pool avg,blocks.11=cls)."
        )
    if len(shape) <= 1:
        return int(shape[0]) if shape else 1
    if mode == "none":
        return int(math.prod(shape))
    channels = shape[0] if len(shape) == 3 else shape[-1]
    return int(channels) * (2 if mode in ("avgmax", "clsavg") else 1)


def pool(x: "torch.Tensor", mode: str, prefix: int = 0) -> "torch.Tensor":
    """Pool an N x C x H x W (or N x T x D with ``prefix`` class/register tokens, or N x D) tensor to N x dims."""
    import torch

    if x.ndim == 2:
        return x
    if mode == "none" or x.ndim not in (3, 4):
        return x.contiguous().reshape(x.shape[0], -1)
    if x.ndim == 4:
        flat, dim = x.flatten(2), 2  # N x C x HW
    else:  # tokens: N x T x D
        if mode == "cls":
            return x[:, 0]
        flat, dim = (x[:, prefix:] if prefix and x.shape[1] > prefix else x), 1
        if mode == "clsavg":
            return torch.cat([x[:, 0], flat.mean(dim)], dim=1)
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

"""Loading weight files safely: safetensors, or torch state dicts with ``weights_only=True``.

Nothing a user hands over is ever unpickled: ``torch.load`` is always called with
``weights_only=True`` and there is no fallback.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..store.fsutil import sha256_file

if TYPE_CHECKING:  # torch is imported where it is used: 'deepfeat models' never loads it
    import torch

log = logging.getLogger(__name__)

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a weights file (:func:`deepfeat.store.fsutil.sha256_file`)."""
    return sha256_file(path)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    Nested checkpoints (``{"state_dict": ...}``, ``{"model": ...}``) are unwrapped and a
    ``module.`` prefix left by DataParallel is removed.

    Example:
        >>> sd = load_state_dict("resnet50.safetensors")  # doctest: +SKIP
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"The weights file {path!r} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        obj: object = load_file(path, device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure is a bad weights file
            raise UsageError(
                f"Could not read weights from {path!r} with torch.load(weights_only=True): {exc}. "
                "deepfeat never unpickles arbitrary objects; save a plain state dict "
                "(torch.save(model.state_dict(), path)) or a .safetensors file."
            ) from None
    for _ in range(3):
        if isinstance(obj, Mapping) and not _is_tensor_mapping(obj):
            inner = next((obj[k] for k in _NESTED_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_mapping(obj):
        raise UsageError(f"The weights file {path!r} does not hold a state dict of tensors.")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _is_tensor_mapping(obj: Mapping) -> bool:
    import torch

    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def load_into(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state_dict`` strictly, or by position when names differ but shapes match in order."""
    target = model.state_dict()
    if set(state_dict) == set(target):
        wrong = [
            f"{k} {tuple(v.shape)} (the model has {tuple(target[k].shape)})"
            for k, v in state_dict.items()
            if tuple(v.shape) != tuple(target[k].shape)
        ]
        if wrong:
            raise UsageError(f"The weights in {source} do not fit the model: {'; '.join(wrong[:3])}.")
        model.load_state_dict(state_dict, strict=True)
        return
    if len(state_dict) == len(target) and all(
        tuple(a.shape) == tuple(b.shape) for a, b in zip(state_dict.values(), target.values())
    ):
        log.info("weights from %s mapped by position (%d tensors)", source, len(target))
        model.load_state_dict(dict(zip(target.keys(), state_dict.values())), strict=True)
        return
    missing = sorted(set(target) - set(state_dict))[:5]
    unexpected = sorted(set(state_dict) - set(target))[:5]
    raise UsageError(f"The weights in {source} do not fit the model: missing keys {missing}, unexpected keys {unexpected}.")

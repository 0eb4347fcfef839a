"""Training checkpoints without pickle: one safetensors file, tensors as tensors, the rest as JSON.

Used by both trainers: the CNN trainer (model + optimizer) and the streaming heads of
:func:`deepfeat.train` (head weights, Adam state, random-generator states, scaler).

An optimizer's ``state_dict()`` nests python containers around its tensors. It is split in
two: every tensor leaf is stored under a flattened key (``optim.state.<param>.<name>``) and
everything else (step counts that are plain numbers, ``param_groups``) goes into a JSON
document kept in the safetensors header's metadata, next to the training state (epoch,
history, random seeds, the configuration fingerprint). The file is written to a temporary
name, fsync'd and renamed, so a checkpoint is either the complete old one or the complete new
one.

Example:
    >>> save_checkpoint("ckpt.safetensors", model, opt, {"epoch": 3})     # doctest: +SKIP
    >>> state = load_checkpoint("ckpt.safetensors", model, opt)           # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .errors import UsageError
from .store.fsutil import atomic_write_bytes

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "read_checkpoint_state",
    "flatten_optimizer",
    "unflatten_optimizer",
    "save_state",
    "load_state",
    "config_fingerprint",
]

_META_KEY = "deepfeat_checkpoint"


def flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into {flat key: tensor} and a JSON-friendly remainder."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, per_param in state_dict.get("state", {}).items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    groups = json.loads(json.dumps(state_dict.get("param_groups", []), default=_jsonable))
    return tensors, {"scalars": scalars, "param_groups": groups, "params": [str(p) for p in state_dict.get("state", {})]}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer`."""
    state: dict[Any, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("optim.state."):
            continue
        pid, _, name = key[len("optim.state.") :].partition(".")
        state.setdefault(int(pid), {})[name] = value
    for pid, values in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    groups = []
    for g in rest.get("param_groups", []):
        groups.append({k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()})
    return {"state": {k: state[k] for k in sorted(state)}, "param_groups": groups}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint's JSON part")


def save_state(path: str, tensors: dict[str, torch.Tensor], document: dict[str, Any]) -> None:
    """Atomically write named tensors plus a JSON ``document`` (in the header) as one safetensors file."""
    from safetensors.torch import save

    blob = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={_META_KEY: json.dumps(document, default=_jsonable)},
    )
    atomic_write_bytes(path, blob)


def _read_document(path: str) -> dict[str, Any]:
    """The JSON document in a checkpoint's header (no tensors are read)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - any failure means a bad checkpoint file
        raise UsageError(f"The checkpoint {path!r} cannot be read ({exc}); delete it to start over.") from None
    if _META_KEY not in meta:
        raise UsageError(f"The file {path!r} is not a deepfeat checkpoint; delete it to start over.")
    try:
        document = json.loads(meta[_META_KEY])
    except (ValueError, RecursionError) as exc:
        raise UsageError(
            f"The checkpoint {path!r} has a malformed document ({type(exc).__name__}); delete it to start over."
        ) from None
    if not isinstance(document, dict) or not isinstance(document.get("state", {}), dict):
        raise UsageError(f"The checkpoint {path!r} has a malformed document (not a JSON object); delete it to start over.")
    return document


def load_state(path: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the JSON document of a file written by :func:`save_state`."""
    from safetensors.torch import load_file

    document = _read_document(path)
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means a bad checkpoint file
        raise UsageError(f"The checkpoint {path!r} cannot be read ({exc}); delete it to start over.") from None
    return tensors, document


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 of a configuration as canonical JSON (values JSON cannot hold as their ``str``): a run resumes
    only from a checkpoint with the same one. The same digest as a store's fingerprint."""
    from .store.create import fingerprint

    return fingerprint(json.loads(json.dumps(dict(config), default=str)))


def save_checkpoint(
    path: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    extra: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write model weights, optimizer state, ``extra`` named tensors (e.g. the best epoch's
    weights) and a JSON ``state`` into one safetensors file."""
    tensors = {f"extra.{k}": v for k, v in (extra or {}).items()}
    tensors.update({f"model.{k}": v for k, v in model.state_dict().items()})
    rest: dict[str, Any] = {}
    if optimizer is not None:
        opt_tensors, rest = flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
    save_state(path, tensors, {"state": state, "optimizer": rest})


def read_checkpoint_state(path: str) -> dict[str, Any]:
    """The JSON part of a checkpoint (no tensors are read)."""
    return _read_document(path)["state"]


def load_checkpoint(
    path: str, model: nn.Module, optimizer: torch.optim.Optimizer | None, extra: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Restore ``model`` (and ``optimizer``) from a checkpoint; returns its JSON ``state``.

    ``extra``, when given, receives the checkpoint's extra tensors (see :func:`save_checkpoint`).
    """
    tensors, meta = load_state(path)
    if extra is not None:
        extra.update({k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")})
    model_sd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(model_sd, strict=True)
    if optimizer is not None:
        sd = unflatten_optimizer(tensors, meta["optimizer"])
        optimizer.load_state_dict(sd)
    return meta["state"]

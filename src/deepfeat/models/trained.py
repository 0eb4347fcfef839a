"""Load a model directory written by ``deepfeat train-cnn`` / ``deepfeat finetune`` as a backbone.

A model directory holds ``model.safetensors`` and ``config.json`` (see
:mod:`deepfeat.cnn.training`). It is accepted wherever a backbone name is: ``load_backbone(dir)``,
``deepfeat layers DIR``, ``extract --model DIR``, ``predict DIR``, ``plot ... DIR``.

Example:
    >>> bb = load_trained_model("fm_cnn/")      # doctest: +SKIP
    >>> bb.family, bb.classifier, bb.class_names[:2]   # doctest: +SKIP
    ('deepfeat', 'classifier', ['ankle_boot', 'bag'])
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ..data.preprocess import Preprocess
from ..errors import UsageError
from .backbone import Backbone
from .weights import file_sha256, load_state_dict

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "deepfeat-model"


def is_model_dir(path: str | os.PathLike) -> bool:
    """True when ``path`` is a directory holding a deepfeat model's ``config.json``."""
    return os.path.isfile(os.path.join(path, CONFIG_FILE)) and os.path.isfile(os.path.join(path, MODEL_FILE))


def model_config_document(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` document of a model directory as it is, ``{}`` when missing or unreadable (not checked:
    ``train-cnn`` reads its own output directory with it before deciding to resume, refuse or overwrite)."""
    try:
        with open(os.path.join(os.fspath(path), CONFIG_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a model directory, checked."""
    path = os.fspath(path)
    cfg_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(cfg_path):
        raise UsageError(
            f"The directory {path!r} is not a deepfeat model directory (no {CONFIG_FILE}). Train one with "
            "'deepfeat train-cnn' or 'deepfeat finetune'; if training was interrupted, rerun the same command "
            "to resume it."
        )
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError) as exc:
        raise UsageError(f"Cannot read {cfg_path!r}: {exc}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT:
        raise UsageError(f"{cfg_path!r} is not a deepfeat model configuration (format {FORMAT!r}).")
    if not os.path.isfile(os.path.join(path, MODEL_FILE)):
        raise UsageError(f"The model directory {path!r} has no {MODEL_FILE}.")
    return cfg


def load_trained_model(path: str | os.PathLike, load_base: Callable[[str, str | None], Backbone] | None = None) -> Backbone:
    """A :class:`Backbone` for a trained model directory (family ``deepfeat``), on the CPU, in eval mode.

    ``load_base(name, weights)`` builds a fine-tuned directory's base network (the registry passes
    :func:`~deepfeat.models.registry.load_backbone`; ``load_backbone(dir)`` is the usual way in).
    """
    import torch

    path = os.fspath(path)
    cfg = read_model_config(path)
    weights = os.path.join(path, MODEL_FILE)
    classes = [str(c) for c in cfg["classes"]]
    kind = cfg.get("kind")
    if kind == "cnn":
        from .arch import build_cnn

        model = build_cnn(cfg["arch"])
        architecture = f"deepfeat-cnn:{cfg['arch'].get('name', 'custom')}"
        extra = {"architecture": architecture, "kind": kind}
    elif kind == "finetune":
        from .surgery import replace_head

        base = cfg["base"]
        if os.path.abspath(str(base["model"])) == os.path.abspath(path):
            raise UsageError(f"The model directory {path!r} names itself as its base model.")
        if load_base is None:
            raise UsageError(f"{path!r} is a fine-tuned model directory: load it with load_backbone({path!r}).")
        model = load_base(str(base["model"]), "random").model
        replace_head(model, cfg["classifier"], len(classes))
        extra = {"architecture": base.get("architecture"), "kind": kind, "base_model": base["model"]}
    else:
        raise UsageError(f"Unknown model kind {kind!r} in {path!r}; this deepfeat reads 'cnn' and 'finetune'.")
    state = load_state_dict(weights)
    missing = set(model.state_dict()) - set(state)
    unexpected = set(state) - set(model.state_dict())
    if missing or unexpected:
        raise UsageError(
            f"The weights in {weights!r} do not fit the recorded architecture: missing "
            f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}."
        )
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.requires_grad_(False)
    return Backbone(
        name=path,
        family="deepfeat",
        model=model,
        preprocess=Preprocess.from_dict(cfg["preprocess"]),
        weights=weights,
        weights_sha256=file_sha256(weights),
        classifier=cfg.get("classifier") or "classifier",
        class_names=classes,
        extra=extra,
    )

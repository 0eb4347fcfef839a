"""A small, configurable ConvNet with readable layer names.

The default ``small`` architecture is the seed tutorial's network (the Keras MNIST example):
conv(32, 3x3)-relu, conv(64, 3x3)-relu, maxpool 2x2, dropout 0.25, flatten, dense(256)-relu,
dropout 0.5, dense(classes). Every part is a named top-level module, so ``deepfeat layers``
shows ``conv1``, ``conv2``, ``pool1``, ``drop1``, ``flatten``, ``dense``, ``drop_dense`` and
``classifier``; ``conv1``/``conv2`` and ``dense`` output their activations after the ReLU (as
Keras layers with ``activation="relu"`` do), so ``--layers dense`` gives the 256 activations the
seed plots.

Input: the network always receives 3-channel images (the same pipeline as every other
backbone). A grayscale network (``in_channels=1``) averages the three channels first, which is
exact for gray images (R = G = B) and the luminance mean for colour ones.

Example:
    >>> net = build_cnn(arch_config("small", num_classes=10, in_channels=1, input_size=28))
    >>> net(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ..errors import UsageError
from ..params import param_error

__all__ = ["ARCHS", "SmallConvNet", "arch_config", "build_cnn"]

#: Named presets; any key can be overridden through ``arch_config(..., **overrides)``.
#: ``blocks`` is a list of conv blocks, each a list of conv widths followed by a max pool and a dropout.
ARCHS: dict[str, dict[str, Any]] = {
    # the seed's layout
    "small": {
        "blocks": [[32, 64]],
        "kernel_size": 3,
        "padding": 0,
        "batchnorm": False,
        "pool": 2,
        "dropout_conv": 0.25,
        "dense": 256,
        "dropout_dense": 0.5,
    },
    # the same with batch norm (trains faster, a little more accurate)
    "small_bn": {
        "blocks": [[32, 64]],
        "kernel_size": 3,
        "padding": 0,
        "batchnorm": True,
        "pool": 2,
        "dropout_conv": 0.25,
        "dense": 256,
        "dropout_dense": 0.5,
    },
    # two VGG-like blocks, for colour images of 32..128 pixels
    "medium": {
        "blocks": [[32, 32], [64, 64]],
        "kernel_size": 3,
        "padding": 1,
        "batchnorm": True,
        "pool": 2,
        "dropout_conv": 0.25,
        "dense": 256,
        "dropout_dense": 0.5,
    },
}


def arch_config(
    arch: str | dict[str, Any], *, num_classes: int, in_channels: int, input_size: int | tuple[int, int], **overrides: Any
) -> dict[str, Any]:
    """The full, JSON-friendly configuration of a ConvNet: a preset name (or dict) plus the data's shape."""
    if isinstance(arch, dict):
        base = copy.deepcopy(arch)
        name = str(base.pop("name", "custom"))
    elif arch in ARCHS:
        base, name = copy.deepcopy(ARCHS[arch]), arch
    else:
        raise param_error("arch", f"one of {', '.join(repr(a) for a in ARCHS)} or a dict", arch, "arch_config")
    unknown = set(overrides) - set(ARCHS["small"])
    if unknown:
        raise UsageError(f"Unknown architecture options {sorted(unknown)}; valid: {', '.join(ARCHS['small'])}.")
    base.update(overrides)
    size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(int(s) for s in input_size)
    if in_channels not in (1, 3):
        raise param_error("in_channels", "1 (grayscale) or 3 (RGB)", in_channels, "arch_config")
    if num_classes < 2:
        raise UsageError(f"Training needs at least 2 classes; got {num_classes}.")
    cfg = {"name": name, **base, "num_classes": int(num_classes), "in_channels": int(in_channels), "input_size": list(size)}
    build_cnn(cfg)  # validates that the spatial size stays positive
    return cfg


class SmallConvNet(nn.Module):
    """conv blocks -> flatten -> dense -> classifier, with flat, readable module names."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = dict(config)
        self.in_channels = int(config["in_channels"])
        k, pad, bn = int(config["kernel_size"]), int(config["padding"]), bool(config["batchnorm"])
        h, w = (int(s) for s in config["input_size"])
        channels = self.in_channels
        index = 0
        for b, widths in enumerate(config["blocks"], start=1):
            for width in widths:
                index += 1
                parts: OrderedDict[str, nn.Module] = OrderedDict()
                parts["conv"] = nn.Conv2d(channels, int(width), k, padding=pad, bias=not bn)
                if bn:
                    parts["bn"] = nn.BatchNorm2d(int(width))
                parts["relu"] = nn.ReLU()
                self.add_module(f"conv{index}", nn.Sequential(parts))
                channels = int(width)
                h, w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
                if h < 1 or w < 1:
                    raise UsageError(
                        f"The input size {config['input_size']} is too small for the architecture "
                        f"{config.get('name')!r} (conv{index} output would be {h}x{w})."
                    )
            self.add_module(f"pool{b}", nn.MaxPool2d(int(config["pool"])))
            h, w = h // int(config["pool"]), w // int(config["pool"])
            if h < 1 or w < 1:
                raise UsageError(
                    f"The input size {config['input_size']} is too small for the architecture "
                    f"{config.get('name')!r} (pool{b} output would be {h}x{w})."
                )
            self.add_module(f"drop{b}", nn.Dropout(float(config["dropout_conv"])))
        self.flatten = nn.Flatten()
        dense = int(config["dense"])
        self.dense = nn.Sequential(OrderedDict(fc=nn.Linear(channels * h * w, dense), relu=nn.ReLU()))
        self.drop_dense = nn.Dropout(float(config["dropout_dense"]))
        self.classifier = nn.Linear(dense, int(config["num_classes"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_channels == 1 and x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        for module in self.children():
            x = module(x)
        return x


def build_cnn(config: dict[str, Any]) -> SmallConvNet:
    """The network for a configuration from :func:`arch_config` (randomly initialised)."""
    try:
        return SmallConvNet(config)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, UsageError):
            raise
        raise UsageError(f"Invalid ConvNet configuration {config!r}: {exc}") from None

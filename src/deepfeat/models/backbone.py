"""The :class:`Backbone` record: a loaded network plus everything needed to reproduce its features.

Every backbone source (:mod:`deepfeat.models.registry`, :mod:`deepfeat.models.trained`) returns one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..data.preprocess import Preprocess

if TYPE_CHECKING:  # torch is imported where it is used: 'deepfeat models' never loads it
    from torch import nn


@dataclass
class Backbone:
    """A loaded network plus everything needed to reproduce its features.

    Attributes:
        name: the name the user asked for (recorded in stores and bundles).
        family: ``bundled`` | ``timm`` | ``torchvision`` | ``hf`` | ``torchscript`` | ``factory`` | ``deepfeat``.
        model: the ``nn.Module`` in eval mode on CPU.
        preprocess: evaluation preprocessing from the pretrained config (plus overrides).
        weights: where the weights came from (a path, ``random``, or a cache path).
        weights_sha256: sha256 of the weights file (``random:<seed>`` for random init).
        classifier: module name of the final classifier (its input is ``pre_logits``), if any.
        class_names: output class names when the weights are an ImageNet classifier.
        weights_origin: ``random`` | ``file`` | ``bundled`` | ``cache`` | ``download`` (this run only;
            not part of :meth:`describe`, so a resume from the cache matches a first run that downloaded).
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
    weights_origin: str = ""

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


__all__ = ["Backbone"]

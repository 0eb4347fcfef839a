"""What a prediction is: :class:`BundlePrediction` (top-k of one image, or why it could not be classified)
and :func:`expand_with_errors` (inputs to ``(name, locator)`` pairs plus error predictions), shared by
``predict`` (bundles, exported graphs, ``--neighbors``) and ``search`` (query images)."""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .sources import expand_inputs

# Discovery exclusions that are not images a user asked about (hidden files, other extensions).
_SILENT_EXCLUSIONS = {"hidden", "not_image_extension"}


@dataclass
class BundlePrediction:
    """Top-k classes of one image, or why it could not be classified."""

    path: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    score_kind: str = "probability"  #: "probability" (logreg, mlp) or "decision" (svm)
    #: with ``neighbors=INDEX``: the nearest training rows ({path, id, split, label, similarity}), best first
    neighbors: list[dict[str, Any]] | None = None
    #: with ``neighbors=INDEX``: the nearest training row is less similar than ``far_threshold``
    far_from_training: bool | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def probabilities(self) -> list[float]:
        """Alias of ``scores`` (same name as :class:`deepfeat.classify.Prediction`)."""
        return self.scores


def expand_with_errors(inputs: Iterable[str | os.PathLike]) -> tuple[list[tuple[str, Any]], list[BundlePrediction]]:
    """The ``(name, locator)`` pairs of :func:`deepfeat.sources.expand_inputs`, and error predictions.

    Entries that discovery refuses (missing list entries, broken symlinks, FIFOs, a shard's sample
    without an image...) come back as error predictions; hidden files and files with non-image
    extensions are skipped silently.
    """
    excluded: list = []
    named = expand_inputs(inputs, excluded)
    errors = [BundlePrediction(ex.path, error=f"{ex.reason}: {ex.message}")
              for ex in excluded if ex.reason not in _SILENT_EXCLUSIONS]
    return named, errors


__all__ = ["BundlePrediction", "expand_with_errors"]

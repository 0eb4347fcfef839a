"""What a prediction is: :class:`Prediction` (top-k of one image, or why it could not be classified),
the one result type of :func:`deepfeat.predict_images` whatever classifies (a bundle, an exported graph,
a backbone's own classifier), and :func:`expand_with_errors` (inputs to ``(name, locator)`` pairs plus
error predictions), shared by ``predict`` and ``search`` (query images)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .sources import expand_inputs

# Discovery exclusions that are not images a user asked about (hidden files, other extensions).
_SILENT_EXCLUSIONS = {"hidden", "not_image_extension"}


@dataclass
class Prediction:
    """Top-k classes of one image, best first, or why it could not be classified (``error``).

    Example:
        >>> p = Prediction("cat.jpg", labels=["tabby", "tiger cat"], scores=[0.61, 0.22], indices=[281, 282])
        >>> p.label, p.ok
        ('tabby', True)
        >>> Prediction("broken.jpg", error="truncated: image file is truncated").ok
        False
    """

    path: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    score_kind: str = "probability"  #: "probability" (softmax, logreg, mlp) or "decision" (svm)
    #: the classes' positions in the classifier's outputs, parallel to ``labels``
    indices: list[int] = field(default_factory=list)
    #: with ``neighbors=INDEX``: the nearest training rows ({path, id, split, label, similarity}), best first
    neighbors: list[dict[str, Any]] | None = None
    #: with ``neighbors=INDEX``: the nearest training row is less similar than ``far_threshold``
    far_from_training: bool | None = None

    @property
    def label(self) -> str | None:
        """The best class, or None for an error."""
        return self.labels[0] if self.labels else None

    @property
    def ok(self) -> bool:
        """Whether the image was classified."""
        return self.error is None

    @property
    def probabilities(self) -> list[float]:
        """``scores`` where they are probabilities (``score_kind == "probability"``), else empty."""
        return self.scores if self.score_kind == "probability" else []


#: the name of :class:`Prediction` before the bundle and backbone predictions became one type
BundlePrediction = Prediction


def expand_with_errors(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
) -> tuple[list[tuple[str, Any]], list[Prediction]]:
    """The ``(name, locator)`` pairs of :func:`deepfeat.sources.expand_inputs`, and error predictions.

    ``inputs`` is one path or several. Entries that discovery refuses (missing list entries, broken
    symlinks, FIFOs, a shard's sample without an image...) come back as error predictions; hidden files
    and files with non-image extensions are skipped silently.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    excluded: list = []
    named = expand_inputs(inputs, excluded)
    errors = [
        Prediction(ex.path, error=f"{ex.reason}: {ex.message}") for ex in excluded if ex.reason not in _SILENT_EXCLUSIONS
    ]
    return named, errors


__all__ = ["BundlePrediction", "Prediction", "expand_with_errors"]

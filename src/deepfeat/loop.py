"""What every epoch loop shares: the cosine learning-rate schedule and early stopping.

Used by ``train`` (heads on stored features, :mod:`deepfeat.training`), the layer probe
(:mod:`deepfeat.probing`) and ``train-cnn`` / ``finetune`` (:mod:`deepfeat.cnn.training`).

Example:
    >>> cosine_factor(0, 10), cosine_factor(10, 10), round(cosine_factor(5, 10, floor=0.05), 3)
    (1.0, 0.0, 0.525)
    >>> run = RunState()
    >>> [run.observe(e, loss, lambda: ["w"]) for e, loss in enumerate([0.5, 0.4, 0.45, 0.41], 1)]
    [True, True, False, False]
    >>> run.best_epoch, run.stale, run.should_stop(2)
    (2, 2, True)
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["cosine_factor", "RunState", "MIN_DELTA"]

#: an epoch improves on the best when its validation loss is lower by more than this
MIN_DELTA = 1e-4


def cosine_factor(step: int, total: int, floor: float = 0.0) -> float:
    """The learning-rate multiplier at ``step`` of ``total``: a cosine from 1 down to ``floor`` (at ``total``).

    ``train`` steps per epoch (``step = epoch - 1``) down to 5 %; ``train-cnn`` / ``finetune`` per
    optimiser step down to 0. A function of the step only, so a resumed run follows the same curve.
    """
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


@dataclass
class RunState:
    """Where a run stands after its last complete epoch (what a checkpoint holds), with early stopping.

    Early stopping monitors the validation loss (as Keras' ``EarlyStopping`` does by default): an
    epoch whose loss is lower than the best by more than :data:`MIN_DELTA` becomes the best (its
    parameters are snapshot); after ``patience`` epochs without one the run stops, and
    :meth:`keep_best` restores the best epoch's parameters.
    """

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_loss: float = math.inf
    stale: int = 0
    best_params: list[Any] | None = None
    stopped: bool = False

    def observe(self, epoch: int, loss: float | None, snapshot: Callable[[], list[Any]]) -> bool:
        """Record epoch ``epoch``'s validation loss (None: no validation rows); True when it is the new best."""
        if loss is None:  # nothing to monitor: every epoch is the best so far, and nothing stops the run
            self.best_epoch = epoch
            return True
        improved = loss < self.best_loss - MIN_DELTA
        if improved:
            self.best_loss, self.stale, self.best_epoch, self.best_params = loss, 0, epoch, snapshot()
        else:
            self.stale += 1
        return improved

    def should_stop(self, patience: int | None) -> bool:
        """True when ``patience`` epochs in a row did not improve (never with ``patience=None``)."""
        return patience is not None and self.stale >= patience

    def keep_best(self, patience: int | None, restore: Callable[[list[Any]], None]) -> int | None:
        """After the last epoch: restore the best parameters under early stopping, else keep the last epoch.

        Returns the epoch whose parameters the model now holds.
        """
        if patience is not None and self.best_params is not None:
            restore(self.best_params)
            return self.best_epoch
        if self.history:
            return self.history[-1]["epoch"]
        return self.best_epoch

"""The one epoch loop: schedule, early stopping, history, checkpoints.

:func:`run_epochs` drives ``train`` (heads on stored features, :mod:`deepfeat.training`) and
``train-cnn`` / ``finetune`` (:mod:`deepfeat.cnn.training`): each epoch it calls the trainer's
``train_epoch`` and ``validate``, writes one history row (the schema of :mod:`deepfeat.history`),
applies early stopping (:class:`RunState`), saves the checkpoint and reports progress. What
differs between the trainers -- what one epoch does, what a checkpoint holds -- is theirs. The
layer probe (:mod:`deepfeat.probing`) trains many heads in one pass per epoch and uses the
schedule and :class:`RunState` directly.

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

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .progress import ProgressFn

__all__ = ["cosine_factor", "RunState", "MIN_DELTA", "run_epochs"]

log = logging.getLogger(__name__)

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

    def to_document(self) -> dict[str, Any]:
        """The JSON part of a checkpoint (the best parameters go in as tensors: :meth:`best_tensors`)."""
        return {
            "epoch": self.epoch,
            "history": self.history,
            "best_epoch": self.best_epoch,
            "best_loss": None if math.isinf(self.best_loss) else self.best_loss,
            "stale": self.stale,
            "stopped": self.stopped,
            "n_best": len(self.best_params or []),
        }

    def best_tensors(self) -> dict[str, Any]:
        """The best epoch's parameters, named for a checkpoint (``best.0``, ``best.1``, ...)."""
        return {f"best.{i}": p for i, p in enumerate(self.best_params or [])}

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], tensors: Mapping[str, Any]) -> RunState:
        """The state :meth:`to_document` and :meth:`best_tensors` saved (older checkpoints: no early stopping)."""
        best_loss = doc.get("best_loss")
        return cls(
            epoch=int(doc["epoch"]),
            history=list(doc["history"]),
            best_epoch=doc.get("best_epoch"),
            best_loss=math.inf if best_loss is None else float(best_loss),
            stale=int(doc.get("stale", 0)),
            stopped=bool(doc.get("stopped", False)),
            best_params=[tensors[f"best.{i}"] for i in range(int(doc.get("n_best", 0)))] or None,
        )

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


def run_epochs(
    run: RunState,
    epochs: int,
    *,
    train_epoch: Callable[[int], dict[str, Any]],
    validate: Callable[[dict[str, Any]], dict[str, Any]],
    snapshot: Callable[[], list[Any]],
    patience: int | None = None,
    save: Callable[[RunState], str] | None = None,
    progress: ProgressFn | None = None,
) -> RunState:
    """Run epochs ``run.epoch + 1`` .. ``epochs`` (or until early stopping) and return ``run``.

    Each epoch: ``train_epoch(epoch)`` (a dict such as ``{"train_loss": ..., "rows": ...}``; its
    wall time becomes ``seconds``), ``validate(row)`` (``{"val_loss": ..., "val_accuracy": ...}``,
    ``val_loss`` None when there is nothing to validate on), one history row with ``best``, early
    stopping after ``patience`` epochs without a better validation loss (``snapshot()`` copies the
    parameters of each new best; only taken under ``patience``), then ``save(run)`` (writes the
    checkpoint, returns its path). Progress events: ``epoch``, ``early_stop``, ``checkpoint``.
    A resumed ``run`` continues where it stopped; one that stopped early runs no epoch.

    Example:
        >>> losses = iter([0.9, 0.5, 0.6, 0.7, 0.8])
        >>> run = run_epochs(RunState(), 5, train_epoch=lambda e: {"train_loss": 1.0 / e},
        ...                  validate=lambda row: {"val_loss": next(losses)}, snapshot=lambda: [], patience=2)
        >>> run.epoch, run.best_epoch, run.stopped, [r["best"] for r in run.history]
        (4, 2, True, [True, True, False, False])
    """
    take = snapshot if patience is not None else (lambda: None)  # no early stopping: no copy to keep
    for epoch in range(run.epoch + 1, epochs + 1):
        if run.stopped:
            break
        t0 = time.perf_counter()
        row: dict[str, Any] = {"epoch": epoch, **train_epoch(epoch)}
        row["seconds"] = round(time.perf_counter() - t0, 3)
        row.update(validate(row))
        row["best"] = run.observe(epoch, row.get("val_loss"), take)
        run.history.append(row)
        run.epoch = epoch
        log.info(
            "epoch %d/%d: train loss %.4f, val loss %s, val accuracy %s (%.1f s)",
            epoch,
            epochs,
            row["train_loss"],
            row.get("val_loss"),
            row.get("val_accuracy"),
            row["seconds"],
        )
        if progress:
            progress({"phase": "epoch", "epochs": epochs, **row})
        if run.should_stop(patience):
            log.info("early stopping after epoch %d (best epoch %d)", epoch, run.best_epoch)
            run.stopped = True
            row["stopped_early"] = True
            if progress:
                progress(
                    {
                        "phase": "early_stop",
                        "epoch": epoch,
                        "epochs": epochs,
                        "patience": patience,
                        "best_epoch": run.best_epoch,
                    }
                )
        if save is not None:
            path = save(run)
            if progress:
                progress({"phase": "checkpoint", "epoch": epoch, "epochs": epochs, "path": path})
    return run

"""One per-epoch history schema for every training loop (``train``, ``train-cnn``, ``finetune``, ``probe``).

A history is a list of records, one per completed epoch, with these keys (``None`` when unknown):

``epoch`` (1-based), ``train_loss``, ``val_loss``, ``val_accuracy``, ``seconds`` (training time of the
epoch), ``best`` (a new best validation loss), ``stopped_early`` (the last epoch of a run early stopping
ended) -- and, depending on the loop, ``train_val_ratio`` (train-cnn / finetune) or ``rows`` (train on
stored features). :func:`deepfeat.loop.run_epochs` writes them for both loops.

Model directories written before this schema used ``valid_loss``, ``valid_accuracy`` and
``train_valid_ratio``; :func:`normalize` maps them (and :func:`read_history` applies it), so old
directories still plot and resume.

Example:
    >>> normalize([{"epoch": 1, "train_loss": 0.5, "valid_loss": 0.4, "valid_accuracy": 0.9}])[0]["val_loss"]
    0.4
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .bundle_header import read_header
from .errors import UsageError

__all__ = ["KEYS", "LEGACY_KEYS", "HISTORY_FILE", "normalize", "read_history"]

#: the keys every record has
KEYS = ("epoch", "train_loss", "val_loss", "val_accuracy", "seconds")
#: old key -> schema key (model directories written before the schema)
LEGACY_KEYS = {"valid_loss": "val_loss", "valid_accuracy": "val_accuracy", "train_valid_ratio": "train_val_ratio"}
HISTORY_FILE = "history.json"


def normalize_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One record in the schema: old ``valid_*`` keys renamed, missing schema keys set to None."""
    out = {LEGACY_KEYS.get(k, k): v for k, v in row.items()}
    for k in KEYS:
        out.setdefault(k, None)
    return out


def normalize(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """A history in the schema, whatever version of deepfeat wrote it."""
    return [normalize_record(r) for r in rows]


def read_history(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The training history of a model directory (train-cnn, finetune) or a head bundle (``.dfm``, train).

    Raises :class:`UsageError` when ``path`` holds none.
    """
    path = os.fspath(path)
    rows: Any = None
    if os.path.isdir(path):
        for fname, key in ((HISTORY_FILE, None), ("config.json", "history")):
            f = os.path.join(path, fname)
            if os.path.isfile(f):
                try:
                    with open(f, encoding="utf-8") as fh:
                        data = json.load(fh)
                except (OSError, ValueError):
                    continue
                rows = data.get(key) if key and isinstance(data, dict) else data
                if isinstance(rows, list) and rows:
                    break
    elif os.path.isfile(path):
        doc = read_header(path)
        rows = doc.get("history") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, Mapping) for r in rows):
        raise UsageError(
            f"{path!r} holds no training history (history.json, or the history of a bundle); train a "
            "model with 'deepfeat train-cnn', 'deepfeat finetune' or 'deepfeat train' (streaming "
            "solver) first."
        )
    return normalize(rows)

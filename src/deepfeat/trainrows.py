"""From a store to training rows: the one path ``train`` and ``probe`` share.

:func:`scan_rows` reads the ledger-free row metadata once (classes, the training and validation
selection: the ``val`` split, else a hashed hold-out of ``train`` ids, :func:`holdout_mask`);
:func:`plan_memory` turns a memory budget into block sizes; :func:`train_batches` streams shuffled
blocks of training rows and :func:`val_batches` the validation rows; :func:`make_head` builds a head
of a kind with the training parameters.

Example:
    >>> plan = scan_rows(store, val_fraction=0.1)                            # doctest: +SKIP
    >>> for X, y in train_batches(store, ["pre_logits"], plan, 256, shuffle=True, seed=0,
    ...                           buffer=4096):                              # doctest: +SKIP
    ...     head.partial_fit(X, y, classes=plan.classes)
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import StoreError, UsageError
from .heads import HEADS
from .store.reader import DEFAULT_READ_BYTES, FeatureStore
from .units import format_size

log = logging.getLogger(__name__)

_HOLDOUT_KEY = b"deepfeat-val"


def holdout_mask(ids: Sequence[str], fraction: float) -> np.ndarray:
    """Deterministic held-out selection by a hash of each row's id (stable across runs and views)."""
    if fraction <= 0:
        return np.zeros(len(ids), dtype=bool)
    threshold = int(fraction * 2**64)
    return np.fromiter(
        (
            int.from_bytes(hashlib.blake2b(str(i).encode("utf-8"), digest_size=8, key=_HOLDOUT_KEY).digest(), "little")
            < threshold
            for i in ids
        ),
        dtype=bool,
        count=len(ids),
    )


@dataclass(frozen=True)
class MemoryPlan:
    """How streaming training splits its memory budget (bytes of feature rows in flight)."""

    read_bytes: int  #: rows read from a part at a time
    shuffle_rows: int  #: rows in the shuffle buffer
    io_batch: int  #: rows per batch of the statistics, validation and exact-loading passes
    step_bytes: int  #: working set of one optimiser step (float32 batch and its copies)


def plan_memory(budget: int, dims: int, stored_itemsize: int, batch_size: int) -> MemoryPlan:
    """Split ``budget`` between the reader's blocks, the shuffle buffer and the batches.

    The shuffle buffer holds about two copies of itself plus one read block while it deals out
    batches; an I/O batch is about 24 bytes per value at its peak (stored -> float32 ->
    float64 temporaries of the statistics pass). A budget smaller than one optimiser step
    (``batch_size`` rows in float32, ~4 copies) cannot be honoured: that is logged.

    Example:
        >>> plan_memory(64 << 20, 1280, 2, 256).shuffle_rows
        4369
    """
    stored_row = max(1, dims * stored_itemsize)
    step = batch_size * dims * 4 * 4
    read_bytes = max(stored_row, budget // 16)
    shuffle_rows = int(max(batch_size, min(65536, (budget // 6) // stored_row)))
    io_batch = int(max(1, min(4096, (budget // 4) // max(1, dims * 24))))
    if step > budget // 2:
        log.warning(
            "one optimiser step of %d rows x %d dims needs about %s, more than half the memory budget "
            "of %s; lower batch_size or raise memory_budget",
            batch_size,
            dims,
            format_size(step),
            format_size(budget),
        )
    return MemoryPlan(int(read_bytes), shuffle_rows, io_batch, step)


@dataclass
class RowPlan:
    """Which rows train and which validate, from the scan pass."""

    train_split: str | None
    val_split: str | None
    holdout: float
    classes: list[str]
    counts: dict[str, int]
    n_train: int
    n_val: int
    val_source: str
    exempt: frozenset[str] = frozenset()  #: classes kept out of the hold-out (it would take all their ids)
    read_bytes: int = DEFAULT_READ_BYTES


def scan_rows(store: FeatureStore, val_fraction: float) -> RowPlan:
    """Read row metadata only (never features) to decide the training and validation rows."""
    if store.num_rows() == 0:
        raise StoreError(
            f"The store {store.path!r} holds no rows (nothing was embedded); check 'deepfeat info {store.path} --failures'."
        )
    splits = store.splits
    if "train" in splits:
        train_split: str | None = "train"
    elif not splits:
        train_split = None
    else:
        raise UsageError(
            f"The store {store.path!r} has no 'train' split (it has: {', '.join(splits)}); train needs training rows."
        )
    val_split = "val" if "val" in splits else None
    holdout = 0.0 if val_split else float(val_fraction)
    counts: Counter[str] = Counter()
    before_holdout: Counter[str] = Counter()
    held_val: Counter[str] = Counter()
    n_train = n_val = missing = 0
    for part in store.iter_parts():
        if train_split is not None and not part.splits.get(train_split) and not (val_split and part.splits.get(val_split)):
            continue
        t = store.read_rows(part, ["id", "label", "split", "view"])
        split_col = np.asarray([s or "" for s in t.column("split").to_pylist()], dtype=object)
        labels = np.asarray(t.column("label").to_pylist(), dtype=object)
        views = t.column("view").to_numpy()
        ids = t.column("id").to_pylist()
        is_train = np.ones(len(ids), bool) if train_split is None else split_col == train_split
        held = holdout_mask(ids, holdout) & is_train
        is_val = (split_col == val_split) if val_split else held
        unlabelled = np.asarray([v is None for v in labels], dtype=bool)
        missing += int((unlabelled & (is_train | is_val)).sum())
        tr = is_train & ~held & ~unlabelled
        counts.update(labels[tr].tolist())
        before_holdout.update(labels[is_train & ~unlabelled].tolist())
        held_val.update(labels[held & (views == 0) & ~unlabelled].tolist())
        n_train += int(tr.sum())
        n_val += int((is_val & (views == 0) & ~unlabelled).sum())
    # a class whose every training id fell in the hash hold-out would silently vanish from the head:
    # its rows train instead (and it has no validation rows)
    exempt = sorted(c for c in before_holdout if not counts.get(c))
    if exempt:
        log.warning(
            "%d class(es) have all their training images in the %.0f%% validation hold-out (%s); their "
            "images are used for training instead, without validation rows",
            len(exempt),
            holdout * 100,
            ", ".join(exempt[:10]) + (" ..." if len(exempt) > 10 else ""),
        )
        for c in exempt:
            counts[c] = before_holdout[c]
            n_train += before_holdout[c]
            n_val -= held_val[c]
    where = f"split {train_split!r}" if train_split else "the store"
    if missing:
        raise UsageError(
            f"{missing} rows of {where} in {store.path!r} have no label; train needs labelled rows "
            "(extract from a class folder, split/class folders, or a list file with a label column)."
        )
    if n_train == 0:
        raise UsageError(f"The store {store.path!r} has no training rows in {where}.")
    if len(counts) < 2:
        only = next(iter(counts))
        raise UsageError(f"train needs at least 2 classes; the training rows of {store.path!r} have 1 class ({only!r}).")
    source = (
        f"split {val_split!r}"
        if val_split
        else f"{holdout:.0%} of the training ids held out by hash"
        if holdout > 0
        else "none"
    )
    return RowPlan(
        train_split, val_split, holdout, sorted(counts), dict(counts), n_train, n_val, source, exempt=frozenset(exempt)
    )


def train_batches(
    store: FeatureStore, names: list[str], plan: RowPlan, batch_size: int, *, shuffle: bool, seed: int, buffer: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(X float32 concatenated, labels) of the training rows (all views), held-out ids removed."""
    for b in store.batches(
        names,
        split=plan.train_split,
        batch_size=batch_size,
        views="all",
        shuffle=shuffle,
        seed=seed,
        shuffle_buffer=buffer,
        read_bytes=plan.read_bytes,
    ):
        keep = ~held_out(b, plan) if plan.holdout > 0 else np.ones(len(b), bool)
        if not keep.any():
            continue
        X = b.concat(names)
        yield (X if keep.all() else X[keep]), b.labels[keep]


def held_out(batch: Any, plan: RowPlan) -> np.ndarray:
    """Rows of the batch in the validation hold-out (never rows of an exempt class)."""
    held = holdout_mask(batch.ids, plan.holdout)
    if plan.exempt:
        held &= ~np.isin(batch.labels, list(plan.exempt))
    return held


def val_batches(
    store: FeatureStore, names: list[str], plan: RowPlan, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    if plan.val_split:
        for b in store.batches(names, split=plan.val_split, batch_size=batch_size, views=0, read_bytes=plan.read_bytes):
            yield b.concat(names), b.labels
    elif plan.holdout > 0:
        for b in store.batches(names, split=plan.train_split, batch_size=batch_size, views=0, read_bytes=plan.read_bytes):
            keep = held_out(b, plan)
            if keep.any():
                yield b.concat(names)[keep], b.labels[keep]


def make_head(
    kind: str,
    *,
    hidden: tuple[int, ...],
    lr: float,
    alpha: float,
    batch_size: int,
    class_weight: Any,
    seed: int,
    device: str,
) -> Any:
    common = dict(
        alpha=float(alpha),
        learning_rate=float(lr),
        batch_size=int(batch_size),
        class_weight=class_weight,
        random_state=int(seed),
        device=device,
    )
    extra = {"hidden": tuple(hidden)}
    return HEADS[kind](**common, **{k: v for k, v in extra.items() if k in HEADS[kind].train_params})


__all__ = [
    "MemoryPlan",
    "RowPlan",
    "held_out",
    "holdout_mask",
    "make_head",
    "plan_memory",
    "scan_rows",
    "train_batches",
    "val_batches",
]

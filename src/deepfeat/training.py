"""Train a classifier head on a feature store, streaming it from disk, into a model bundle.

The runner makes a fixed number of passes over the store, none of which holds more than a
bounded number of rows in memory:

1. **scan** -- row metadata only (labels, splits, views, ids): classes, counts, validation rows;
2. **statistics** -- one streaming pass for the per-feature mean / std (float64);
3. **epochs** -- ``store.batches(shuffle=True)`` (part order permuted + a shuffle buffer), each
   batch standardised and handed to the head's ``partial_fit``; after each epoch the head is
   scored on the validation rows and training stops early when the validation loss has not
   improved for ``patience`` epochs (the best epoch's weights are kept). The Adam step size
   follows a cosine decay over the planned epochs (down to 5 %).

Validation rows are the store's ``val`` split when it has one, else a deterministic fraction of
the training *ids* (by hash, so every augmented view of a held-out image is held out too).
Rows with ``view > 0`` (augmented views) are used for training only; validation uses view 0.

``solver="exact"`` loads the training rows into memory and uses scikit-learn's
``LogisticRegression`` / ``LinearSVC`` on the same standardised features and the same objective
(``C = 1 / (alpha * n_train)``); ``solver="auto"`` picks it for the linear heads when the float32
matrix plus a float64 working copy fit ``memory_budget``.

Example:
    >>> import deepfeat
    >>> result = deepfeat.train("feats/", layers="pre_logits", head="logreg", out="model.dfm")  # doctest: +SKIP
    >>> result.validation["accuracy"]                                                          # doctest: +SKIP
    0.91
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import progress as progress_mod
from .analysis.fne import load_fne_stats
from .checkpoint import config_fingerprint, load_state, save_state
from .devices import check_device, resolve_device
from .errors import StoreError, UsageError
from .heads import HEADS, StreamingScaler
from .interrupts import interruptible
from .loop import RunState, cosine_factor, run_epochs
from .params import check_choice, check_int, check_number, is_int, param_error
from .progress import ProgressFn, format_duration
from .store import trust
from .store.fsutil import check_writable, remove_orphan_temps
from .store.reader import FeatureStore, LayerSpec, open_store
from .trainrows import (
    RowPlan,
    make_head,
    plan_memory,
    scan_rows,
    train_batches,
    val_batches,
)
from .units import format_size, parse_size

log = logging.getLogger(__name__)

SOLVERS = ("auto", "stream", "exact")
CLASS_WEIGHTS = (None, "balanced")
DEFAULT_MEMORY_BUDGET = 1 << 30
#: bytes per (row x dim) value the exact solvers hold at their peak: the float32 matrix (4) plus what
#: scikit-learn adds, measured (peak RSS around fit) with scikit-learn 1.9 on 1,000 x 4,000 x 10 classes:
#: LinearSVC (liblinear) adds ~24 (a float64 copy + liblinear's 16-byte index/value nodes);
#: LogisticRegression (lbfgs) adds ~4, budgeted as 8 for versions that copy to float64.
EXACT_BYTES_PER_VALUE = {"logreg": 4 + 8, "svm": 4 + 24}
#: seconds per (row x dim x class) of an exact fit, a pessimistic rate: the issue's 3,603 x 22,288
#: Fashion-MNIST features (10 classes) took 764 s with lbfgs (0.95 us); separable features need
#: hundreds of iterations.
EXACT_SECONDS_PER_VALUE_CLASS = 1e-6
EXACT_OVERHEAD_SECONDS = 2.0  #: scikit-learn's fixed cost (input checks, label encoding)
#: ``solver="auto"`` uses the exact solver only when its time estimate is below this
EXACT_AUTO_MAX_SECONDS = 60.0


@dataclass
class TrainResult:
    """What :func:`train` produced: the fitted scaler and head, metrics, and the bundle path."""

    head: Any
    scaler: StreamingScaler
    head_kind: str
    solver: str
    classes: list[str]
    layers: list[LayerSpec]
    n_train: int
    n_val: int
    validation: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    bundle_path: str | None = None

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Class probabilities (logreg, mlp) or decision values (svm) of raw features."""
        Xs = self.scaler.transform(np.asarray(X, dtype=np.float32))
        if getattr(self.head, "_probabilistic", True):
            return self.head.predict_proba(Xs)
        d = self.head.decision_function(Xs)
        return np.column_stack([-d, d]) if d.ndim == 1 else d

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class names for raw (unscaled) features in the order of ``layers``."""
        return self.head.predict(self.scaler.transform(np.asarray(X, dtype=np.float32)))


# ----------------------------------------------------------------------------- arguments
DEFAULT_HIDDEN = (256,)  #: the MLP head's hidden layer sizes unless told


def parse_hidden(hidden: int | str | Sequence[int]) -> tuple[int, ...]:
    """``256``, ``"256,16"`` or ``(256, 16)`` -> ``(256, 16)``."""
    try:
        if isinstance(hidden, str):
            sizes = tuple(int(v) for v in hidden.replace(" ", "").split(",") if v)
        elif is_int(hidden):
            sizes = (int(hidden),)
        else:
            sizes = tuple(int(v) for v in hidden)
    except (TypeError, ValueError):
        sizes = (0,)
    if not all(s >= 1 for s in sizes):
        raise UsageError(
            f"The 'hidden' parameter of train must be hidden layer sizes such as 256 or 256,16; got {hidden!r} instead."
        )
    return sizes


def validate_train_args(
    head: str,
    solver: str,
    epochs: int,
    batch_size: int,
    lr: float | None,
    alpha: float,
    val_fraction: float,
    patience: int | None,
    class_weight: Any,
    seed: int,
    device: str,
    where: str = "train",
) -> None:
    """One up-front check of every argument that needs neither the store nor the model (of ``where``:
    ``train``, or ``probe``, which trains the same heads)."""
    check_choice(head, "head", HEADS, where=where)
    check_choice(solver, "solver", SOLVERS, where=where)
    if solver == "exact" and not HEADS[head].has_exact_solver():
        exact = " or ".join(repr(h) for h, cls in HEADS.items() if cls.has_exact_solver())
        raise UsageError(
            f"The 'solver' parameter of {where} can be 'exact' only for head {exact} (scikit-learn in "
            f"memory); got solver='exact' with head={head!r}."
        )
    check_int(epochs, "epochs", minimum=1, where=where)
    check_int(batch_size, "batch_size", minimum=1, where=where)
    check_number(lr, "lr", minimum=0, min_open=True, optional=True, where=where)
    check_number(alpha, "alpha", minimum=0, where=where)
    check_number(val_fraction, "val_fraction", minimum=0, maximum=1, max_open=True, where=where)
    check_int(patience, "patience", minimum=1, optional=True, where=where)
    if not (class_weight in CLASS_WEIGHTS or isinstance(class_weight, Mapping)):
        raise param_error("class_weight", "None, 'balanced' or a dict {class: weight}", class_weight, where)
    check_int(seed, "seed", where=where)
    check_device(device, where=where)


def _validate(
    head: Any, scaler: StreamingScaler, batches: Iterator[tuple[np.ndarray, np.ndarray]], classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy and mean loss of the head on the validation rows (streamed)."""
    known = set(classes)
    n = correct = 0
    loss_sum, loss_n = 0.0, 0
    for X, y in batches:
        Xs = scaler.transform(X)
        pred = head.predict(Xs)
        correct += int((pred == y).sum())
        n += len(y)
        mask = np.fromiter((v in known for v in y), dtype=bool, count=len(y))
        if mask.any():
            loss_sum += head.loss_on(Xs[mask], y[mask]) * int(mask.sum())
            loss_n += int(mask.sum())
    if n == 0:
        return {}
    return {"accuracy": correct / n, "loss": loss_sum / loss_n if loss_n else float("nan"), "n": n}


# ----------------------------------------------------------------------------- the runner
def _class_weights(class_weight: Any, counts: Mapping[str, int], classes: Sequence[str]) -> dict[str, float] | None:
    if class_weight is None:
        return None
    if class_weight == "balanced":
        n = sum(counts.values())
        return {c: n / (len(classes) * counts[c]) for c in classes}
    unknown = [c for c in class_weight if c not in counts]
    if unknown:
        raise UsageError(
            f"The 'class_weight' parameter of train names classes that are not in the training rows: "
            f"{unknown!r}; the classes are {list(classes)!r}."
        )
    return {c: float(class_weight.get(c, 1.0)) for c in classes}


def exact_cost(head: str, rows: int, dims: int, classes: int) -> tuple[int, float]:
    """(peak bytes, pessimistic seconds) of the exact solver on ``rows`` x ``dims`` with ``classes``.

    Example:
        >>> b, t = exact_cost("logreg", 3603, 22288, 10)
        >>> round(b / 2**20), round(t)
        (919, 805)
    """
    per_value = EXACT_BYTES_PER_VALUE.get(head, EXACT_BYTES_PER_VALUE["logreg"])
    work = rows * dims * max(1, classes if classes > 2 else 1)
    return rows * dims * per_value, EXACT_OVERHEAD_SECONDS + work * EXACT_SECONDS_PER_VALUE_CLASS


def _choose_solver(solver: str, head: str, exact_bytes: int, exact_seconds: float, budget: int) -> tuple[str, str]:
    """``solver="auto"``: the exact solver when it fits the memory budget and its time estimate is short."""
    need = f"the exact solver needs about {format_size(exact_bytes)} and {format_duration(exact_seconds)}"
    if solver != "auto":
        return solver, ""
    if not HEADS[head].has_exact_solver():
        return "stream", f"auto: the {head} head always streams"
    if exact_bytes > budget:
        return "stream", f"auto: {need}, over the memory budget of {format_size(budget)}"
    if exact_seconds > EXACT_AUTO_MAX_SECONDS:
        return "stream", (f"auto: {need}, longer than {format_duration(EXACT_AUTO_MAX_SECONDS)}; --solver exact forces it")
    return "exact", f"auto: {need}, within the memory budget of {format_size(budget)}"


def train(
    store: str | os.PathLike | FeatureStore,
    layers: str | Sequence[str] | None = None,
    head: str = "logreg",
    *,
    solver: str = "auto",
    hidden: int | str | Sequence[int] | None = None,
    epochs: int = 20,
    batch_size: int = 256,
    lr: float | None = None,
    alpha: float = 1e-4,
    val_fraction: float = 0.1,
    patience: int | None = 5,
    class_weight: Any = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    checkpoint: bool = True,
    resume: bool = True,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train a head on the store's features and (with ``out``) save a model bundle.

    Args:
        store: a feature store directory (or an open :class:`~deepfeat.store.reader.FeatureStore`).
        layers: stored layers to use, concatenated in this order (default: all of them).
        head: ``"logreg"`` (multinomial logistic), ``"svm"`` (linear, hinge) or ``"mlp"``.
        solver: ``"stream"`` (mini-batches from disk), ``"exact"`` (in memory, scikit-learn) or ``"auto"``.
        hidden: MLP hidden sizes, e.g. ``(256, 16)`` or ``"256,16"`` (default ``(256,)``); only for
            ``head="mlp"`` (a :class:`UsageError` with another head).
        epochs: maximum passes over the training rows (streaming).
        batch_size: rows per optimiser step.
        lr: Adam learning rate (default 1e-3), decayed by a cosine over the epochs.
        alpha: L2 penalty (exact solver: ``C = 1 / (alpha * n_train)``).
        val_fraction: share of training ids held out when the store has no ``val`` split.
        patience: stop after this many epochs without a better validation loss and keep the best
            epoch's weights; None trains all ``epochs`` and keeps the last weights.
        class_weight: None, ``"balanced"`` (from the class counts of the scan) or ``{class: weight}``.
        memory_budget: bytes (or ``"2GiB"``) training may use for feature rows; bounds the shuffle
            buffer and decides ``solver="auto"``.
        seed: seeds the shuffling and the initial weights.
        device: torch device for the streaming heads (``cpu``, ``cuda``, ``auto``).
        out: bundle path to write (``.dfm``); None writes nothing.
        overwrite: replace an existing bundle ``out`` (otherwise a :class:`UsageError` before any work).
        checkpoint: with ``out`` and the streaming solver, keep ``<out>.ckpt`` (weights, optimizer and
            random states, scaler, history) after every epoch, deleted when the bundle is written.
        resume: continue from ``<out>.ckpt`` when it exists (same configuration required);
            False starts over.
        progress: callback receiving dicts with a ``phase`` key (``scan``, ``stats``, ``epoch``, ``exact``, ``done``).

    Returns:
        A :class:`TrainResult`.
    """
    start = time.perf_counter()
    if hidden is not None and head in HEADS and "hidden" not in HEADS[head].train_params:
        raise UsageError(
            f"The 'hidden' parameter of train (--hidden) sets the hidden layers of the MLP head; the "
            f"{head!r} head has none. Use head='mlp' (--head mlp) or leave 'hidden' out."
        )
    sizes = parse_hidden(DEFAULT_HIDDEN if hidden is None else hidden)
    validate_train_args(head, solver, epochs, batch_size, lr, alpha, val_fraction, patience, class_weight, seed, device)
    budget = parse_size(memory_budget, "memory_budget")
    if out is not None and os.path.isdir(out):
        raise UsageError(
            f"The 'out' parameter of train must be a bundle file path (e.g. model.dfm); {os.fspath(out)!r} is a directory."
        )
    if out is not None and os.path.lexists(out) and not overwrite:
        raise UsageError(
            f"The bundle {os.fspath(out)!r} already exists; pass overwrite=True (--overwrite) to "
            "replace it, or choose another 'out'."
        )
    if out is not None:  # before the fit: an unwritable folder must not cost the whole training
        check_writable(out, "train's bundle")
    store = store if isinstance(store, FeatureStore) else open_store(store)
    specs = store.select_layers(layers, "train")
    names = [s.name for s in specs]
    dims = sum(s.dims for s in specs)
    device = resolve_device(device)
    plan = scan_rows(store, val_fraction)
    if out is not None:
        _check_class_names(plan.classes)
    weights = _class_weights(class_weight, plan.counts, plan.classes)
    lr = HEADS[head].default_learning_rate if lr is None else float(lr)
    exact_bytes, exact_seconds = exact_cost(head, plan.n_train, dims, len(plan.classes))
    solver, solver_reason = _choose_solver(solver, head, exact_bytes, exact_seconds, budget)
    mem = plan_memory(budget, dims, np.dtype(store.dtype).itemsize, batch_size)
    buffer, io_batch = mem.shuffle_rows, mem.io_batch
    plan.read_bytes = mem.read_bytes
    log.info(
        "train: %d training rows, %d validation rows (%s), %d classes, %d dims, solver %s",
        plan.n_train,
        plan.n_val,
        plan.val_source,
        len(plan.classes),
        dims,
        solver,
    )
    if progress:
        progress(
            {
                "phase": "scan",
                "n_train": plan.n_train,
                "n_val": plan.n_val,
                "val_source": plan.val_source,
                "classes": list(plan.classes),
                "dims": dims,
                "solver": solver,
                "layers": specs,
                "exact_bytes": exact_bytes,
                "exact_seconds": exact_seconds,
                "solver_reason": solver_reason,
                "memory_budget": budget,
            }
        )
    config = {
        "store": os.path.abspath(store.path),
        "store_fingerprint": store.metadata.get("fingerprint"),
        "layers": names,
        "head": head,
        "solver": solver,
        "hidden": list(sizes) if "hidden" in HEADS[head].train_params else None,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "alpha": alpha,
        "val_fraction": val_fraction,
        "patience": patience,
        "class_weight": class_weight
        if not isinstance(class_weight, Mapping)
        else {str(k): float(v) for k, v in class_weight.items()},
        "memory_budget": budget,
        "seed": seed,
        "device": device,
        "n_train": plan.n_train,
        "n_val": plan.n_val,
        "val_source": plan.val_source,
        "class_counts": plan.counts,
    }

    model = make_head(
        head,
        hidden=sizes,
        lr=lr,
        alpha=alpha,
        batch_size=batch_size,
        class_weight=weights,
        seed=seed,
        device=device if solver == "stream" else "cpu",
    )
    history: list[dict[str, Any]] = []
    best_epoch: int | None = None
    if out is not None:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if solver == "exact":
        if exact_bytes > budget:
            log.warning(
                "the exact solver needs about %s for %d x %d features, over the memory budget of %s",
                format_size(exact_bytes),
                plan.n_train,
                dims,
                format_size(budget),
            )
        scaler, model = _fit_exact(
            store, names, plan, dims, head, model, alpha, weights, seed, io_batch, progress, exact_seconds
        )
    else:
        ckpt = checkpoint_path(out) if out is not None and checkpoint else None
        scaler, model, history, best_epoch = _fit_stream(
            store,
            names,
            plan,
            model,
            epochs=epochs,
            batch_size=batch_size,
            io_batch=io_batch,
            buffer=buffer,
            seed=seed,
            patience=patience,
            ckpt=ckpt,
            resume=resume,
            fingerprint=_fingerprint(config),
            progress=progress,
        )
    validation = _validate(model, scaler, val_batches(store, names, plan, io_batch), plan.classes)
    validation.update({"source": plan.val_source, "best_epoch": best_epoch})
    result = TrainResult(
        head=model,
        scaler=scaler,
        head_kind=head,
        solver=solver,
        classes=list(plan.classes),
        layers=specs,
        n_train=plan.n_train,
        n_val=plan.n_val,
        validation=validation,
        history=history,
        best_epoch=best_epoch,
        config=config,
    )
    result.seconds = time.perf_counter() - start
    config["seconds"] = result.seconds
    if out is not None:
        from .bundle import save_bundle

        meta = store.metadata
        fne = None
        if meta.get("fne"):  # a full-network-embedding store: the bundle re-applies the transform
            fne = load_fne_stats(store)
        result.bundle_path = save_bundle(
            out,
            backbone=meta["model"],
            preprocess=meta["preprocess"],
            layers=specs,
            dtype=store.dtype,
            precision=str(meta.get("precision", "fp32")),
            runtime=_runtime_of(meta),
            decode_policy=meta.get("config", {}).get("decode_policy"),
            scaler=scaler,
            head=model,
            head_kind=head,
            classes=plan.classes,
            training=config,
            validation=validation,
            history=history,
            fne=fne,
        )
        stale_ckpt = checkpoint_path(out)
        if os.path.exists(stale_ckpt):
            os.unlink(stale_ckpt)
    if progress:
        progress({"phase": "done", "validation": validation, "seconds": result.seconds, "bundle": result.bundle_path})
    return result


CHECKPOINT_SUFFIX = ".ckpt"


def checkpoint_path(out: str | os.PathLike) -> str:
    """Where :func:`train` keeps the checkpoint of a streaming run writing the bundle ``out``."""
    return os.fspath(out) + CHECKPOINT_SUFFIX


def _fingerprint(config: Mapping[str, Any]) -> str:
    """What must not change for a run to resume from a checkpoint."""
    keys = (
        "store",
        "store_fingerprint",
        "layers",
        "head",
        "hidden",
        "epochs",
        "batch_size",
        "lr",
        "alpha",
        "val_fraction",
        "patience",
        "class_weight",
        "memory_budget",
        "seed",
        "device",
        "n_train",
        "n_val",
    )

    return config_fingerprint({k: config.get(k) for k in keys})


#: the Adam step size follows a cosine over the planned epochs down to this fraction of lr
LR_FLOOR = 0.05


def _save_run(path: str, fingerprint: str, model: Any, scaler: StreamingScaler, run: RunState) -> str:
    import torch

    tensors, head_doc = model.training_state()
    tensors = {
        **tensors,
        **run.best_tensors(),
        "scaler.mean": torch.from_numpy(np.asarray(scaler.mean_, dtype=np.float64)),
        "scaler.scale": torch.from_numpy(np.asarray(scaler.scale_, dtype=np.float64)),
    }
    doc = {
        "kind": "deepfeat-train-checkpoint",
        "fingerprint": fingerprint,
        **run.to_document(),
        "scaler_rows": int(scaler.n_samples_seen_),
        "head": head_doc,
    }
    save_state(path, tensors, doc)
    return path


def _load_run(path: str, fingerprint: str, model: Any) -> tuple[StreamingScaler, RunState]:

    tensors, doc = load_state(path)
    if doc.get("kind") != "deepfeat-train-checkpoint":
        raise UsageError(f"The file {path!r} is not a checkpoint of deepfeat train; delete it to start over.")
    if doc.get("fingerprint") != fingerprint:
        raise UsageError(
            f"{path!r} holds a checkpoint of a training run with another configuration (store, layers, "
            "head or training options differ); rerun with the same options to resume, or with "
            "--no-resume (resume=False) to start over."
        )
    model.load_training_state(tensors, doc["head"])
    scaler = StreamingScaler.from_stats(
        tensors["scaler.mean"].numpy(), tensors["scaler.scale"].numpy(), int(doc["scaler_rows"])
    )
    return scaler, RunState.from_document(doc, tensors)


def _fit_stream(
    store: FeatureStore,
    names: list[str],
    plan: RowPlan,
    model: Any,
    *,
    epochs: int,
    batch_size: int,
    io_batch: int,
    buffer: int,
    seed: int,
    patience: int | None,
    ckpt: str | None,
    resume: bool,
    fingerprint: str,
    progress: ProgressFn | None,
) -> tuple[StreamingScaler, Any, list[dict[str, Any]], int | None]:
    """Statistics pass, then the epoch loop (:func:`deepfeat.loop.run_epochs`): shuffled mini-batches,
    validation, early stopping and checkpoints."""
    run = RunState()
    scaler = StreamingScaler()
    if ckpt is not None:
        for name in remove_orphan_temps(ckpt):
            log.info("removed %s, a checkpoint half written by a run that was killed", name)
        if os.path.exists(ckpt) and not resume:
            os.unlink(ckpt)
        elif os.path.exists(ckpt):
            scaler, run = _load_run(ckpt, fingerprint, model)
            log.info("resuming from %s after epoch %d of %d", ckpt, run.epoch, epochs)
            if progress:
                progress({"phase": "resume", "epoch": run.epoch, "epochs": epochs, "path": ckpt})
    if run.epoch == 0:
        t0 = time.perf_counter()
        with progress_mod.task("feature statistics", total=plan.n_train, unit="rows", transient=True) as task:
            for X, _ in train_batches(store, names, plan, io_batch, shuffle=False, seed=seed, buffer=buffer):
                scaler.partial_fit(X)
                task.update(len(X))
        if progress:
            progress({"phase": "stats", "rows": scaler.n_samples_seen_, "seconds": time.perf_counter() - t0})

    def train_epoch(epoch: int) -> dict[str, Any]:
        loss_sum, rows = 0.0, 0
        factor = cosine_factor(epoch - 1, epochs, floor=LR_FLOOR)
        with progress_mod.task(f"epoch {epoch}/{epochs}", total=plan.n_train, unit="rows", transient=True) as task:
            for X, y in train_batches(
                store, names, plan, batch_size, shuffle=True, seed=seed * 1_000_003 + epoch, buffer=buffer
            ):
                if hasattr(model, "classes_"):
                    model.set_lr_scale(factor)
                model.partial_fit(scaler.transform(X), y, classes=plan.classes)
                loss_sum += model.loss_ * len(y)
                rows += len(y)
                task.update(len(y))
        return {"train_loss": loss_sum / max(rows, 1), "rows": rows}

    def validate(row: dict[str, Any]) -> dict[str, Any]:
        val = _validate(model, scaler, val_batches(store, names, plan, io_batch), plan.classes)
        return {"val_loss": val.get("loss"), "val_accuracy": val.get("accuracy")}

    save = None if ckpt is None else (lambda state: _save_run(ckpt, fingerprint, model, scaler, state))
    run_epochs(
        run,
        epochs,
        train_epoch=train_epoch,
        validate=validate,
        snapshot=model.snapshot,
        patience=patience,
        save=save,
        progress=progress,
    )
    # early stopping keeps the best epoch; patience=None keeps the last
    return scaler, model, run.history, run.keep_best(patience, model.restore)


def _fit_exact(
    store: FeatureStore,
    names: list[str],
    plan: RowPlan,
    dims: int,
    kind: str,
    model: Any,
    alpha: float,
    weights: dict[str, float] | None,
    seed: int,
    io_batch: int,
    progress: ProgressFn | None,
    estimate: float | None = None,
) -> tuple[StreamingScaler, Any]:
    """Load the training rows, standardise them in place and fit scikit-learn's solver."""
    from sklearn.exceptions import ConvergenceWarning

    t0 = time.perf_counter()
    X = np.empty((plan.n_train, dims), dtype=np.float32)
    y = np.empty(plan.n_train, dtype=object)
    pos = 0
    scaler = StreamingScaler()
    with progress_mod.task("load training rows", total=plan.n_train, unit="rows") as task:
        for Xb, yb in train_batches(store, names, plan, io_batch, shuffle=False, seed=seed, buffer=io_batch):
            X[pos : pos + len(yb)] = Xb
            y[pos : pos + len(yb)] = yb
            pos += len(yb)
            # statistics batch by batch: fitting the whole matrix at once made a float64 copy of it (8 B per value)
            scaler.partial_fit(Xb)
            task.update(len(yb))
    if pos != plan.n_train:
        raise StoreError(f"The store {store.path!r} changed while training ({pos} rows read, {plan.n_train} expected).")
    X -= scaler.mean_.astype(np.float32)
    X /= scaler.scale_.astype(np.float32)
    C = 1.0 / (alpha * plan.n_train) if alpha > 0 else None
    params = model.get_params()
    est = type(model).exact_estimator(C, weights, seed, params)
    with (
        warnings.catch_warnings(record=True) as caught,
        progress_mod.timer(f"exact solver ({type(est).__name__}, {plan.n_train:,} x {dims:,})", estimate),
    ):
        warnings.simplefilter("always", ConvergenceWarning)
        interruptible(est.fit, X, y.astype(str))  # a Ctrl-C ends the command now, not when liblinear returns
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            log.warning("exact solver: %s", w.message)
    head = type(model).from_linear(est.coef_, est.intercept_, est.classes_, params=params)
    if progress:
        progress({"phase": "exact", "rows": plan.n_train, "seconds": time.perf_counter() - t0, "solver": type(est).__name__})
    return scaler, head


def _runtime_of(meta: dict[str, Any]) -> dict[str, Any]:
    """The runtime a store's features came from (stores written before runtimes existed: torch)."""
    rt = meta.get("runtime")
    if isinstance(rt, dict) and isinstance(rt.get("runtime"), str):
        return dict(rt)
    return {"runtime": "torch", "precision": str(meta.get("precision", "fp32"))}


def _check_class_names(classes: Sequence[str]) -> None:
    """Refuse, before any training, class names a bundle cannot hold (the loader refuses them too)."""
    for i, c in enumerate(classes):
        try:
            trust.check_label(c, f"class name #{i}")
        except StoreError as exc:
            raise UsageError(
                f"Cannot write a bundle for this store: {exc} Rename that label in the source "
                "(folder name or list file) and extract again."
            ) from None

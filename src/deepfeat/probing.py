"""Which layer? Train a quick linear head on every stored layer (and layer groups) in one sweep.

For every layer of the store -- and, unless told otherwise, every stage (layers named
``blocks.N.*`` sharing the prefix ``blocks.N``), all layers standardised together and the
full-network embedding of all layers (standardised, then ternarised to {-1, 0, 1}) -- a
streaming head is trained on the ``train`` split, scored after each epoch on the validation rows
(the ``val`` split, else a hashed hold-out of the training ids, as :func:`deepfeat.train` does),
early-stopped on the validation loss, and finally scored on the ``test`` split when the store has one.

The store is read the way :func:`deepfeat.train` reads it, but **one pass feeds every head**:
one statistics pass (one :class:`~deepfeat.heads.StreamingScaler` over all the stored dims; a
layer's standardisation is the slice of it), then per epoch one shuffled pass over the training
rows and one over the validation rows, and one pass over the test rows at the end. The number
of passes does not grow with the number of layers. Each head is the same head, with the same
optimiser, schedule and early-stopping rule, as ``deepfeat train --solver stream``; a layer's
probe accuracy is what ``train`` + ``evaluate`` give on that layer.

Written to ``out``: ``probe.csv``, ``probe.json``, ``probe.png`` (accuracy against depth, the
best layer marked) and ``report.html``. A row's ``seconds`` is that candidate's own training and
scoring time; reading and standardising the store is shared by all of them.

Example:
    >>> import deepfeat
    >>> r = deepfeat.probe("feats/", out="probe/")          # doctest: +SKIP
    >>> r.best["name"], r.best["val_accuracy"]              # doctest: +SKIP
    ('blocks.4', 0.874)
    >>> print(r.table())                                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .agreement import reduced_precision_note
from .analysis.fne import parse_thresholds, ternarize
from .errors import UsageError
from .heads import HEADS, StreamingScaler
from .loop import RunState, cosine_factor
from .params import param_error
from .progress import ProgressFn
from .reports import html as H
from .reports.html import write
from .store.fsutil import check_writable, staged_directory
from .store.reader import FeatureStore, LayerSpec, open_store
from .training import DEFAULT_MEMORY_BUDGET, LR_FLOOR, validate_train_args
from .trainrows import RowPlan, make_head, plan_memory, scan_rows, train_batches, val_batches
from .units import format_size, parse_size

log = logging.getLogger(__name__)

GROUPS = ("stages", "all", "fne")
DEFAULT_GROUPS = GROUPS
_FNE_STORE_POOL = "fne"


@dataclass
class Candidate:
    """One feature set probed: a layer, a stage, all layers, or the full-network embedding."""

    name: str
    kind: str  #: "layer", "stage", "all" or "fne"
    layers: tuple[str, ...]
    dims: int
    depth: float  #: position in the network (layers: index in the store; groups: mean of their layers)
    cols: list[slice]  #: columns of the concatenation of all probed layers
    head: Any = None
    run: RunState = field(default_factory=RunState)
    seconds: float = 0.0
    loss_sum: float = 0.0
    rows: int = 0
    val: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)

    def take(self, Z: np.ndarray, T: np.ndarray | None) -> np.ndarray:
        """This candidate's columns of the standardised batch ``Z`` (or of its ternary version ``T``)."""
        src = T if self.kind == "fne" else Z
        if len(self.cols) == 1:
            return src[:, self.cols[0]]
        return np.concatenate([src[:, c] for c in self.cols], axis=1)


@dataclass
class ProbeResult:
    """The sweep: one row per candidate (sorted by depth, groups last), the best, and the advice."""

    rows: list[dict[str, Any]]
    best: dict[str, Any]
    advice: str
    store: str
    classes: list[str]
    n_train: int
    n_val: int
    n_test: int
    val_source: str
    test_split: str | None
    config: dict[str, Any]
    seconds: float
    files: dict[str, str] = field(default_factory=dict)

    def table(self) -> str:
        """The rows as a text table (the CLI prints this)."""
        width = max(10, *(len(r["name"]) for r in self.rows))
        lines = [f"{'layer':<{width}} {'kind':<6} {'dims':>7} {'val acc':>8} {'test acc':>9} {'epochs':>6} {'seconds':>8}"]
        for r in self.rows:
            test = "-" if r["test_accuracy"] is None else f"{r['test_accuracy']:.4f}"
            val = "-" if r["val_accuracy"] is None else f"{r['val_accuracy']:.4f}"
            mark = "  <- best" if r["name"] == self.best["name"] else ""
            lines.append(
                f"{r['name']:<{width}} {r['kind']:<6} {r['dims']:>7,} {val:>8} {test:>9} "
                f"{r['epochs']:>6} {r['seconds']:>8.1f}{mark}"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------- arguments
def parse_groups(groups: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"stages,all,fne"``, ``"none"``/``""``/None or a sequence -> the groups to probe."""
    if groups is None:
        return ()
    names = [g.strip() for g in groups.split(",")] if isinstance(groups, str) else [str(g).strip() for g in groups]
    names = [g for g in names if g and g != "none"]
    bad = [g for g in names if g not in GROUPS]
    if bad:
        raise param_error("groups", f"a comma-separated subset of {', '.join(GROUPS)} (or 'none')", groups, "probe")
    return tuple(dict.fromkeys(names))


def stage_of(name: str) -> str | None:
    """The stage a layer belongs to by its name; None for a layer outside the numbered stages.

    Example:
        >>> stage_of("blocks.4.1.conv_pwl"), stage_of("blocks.4"), stage_of("layer4.1.conv2"), stage_of("conv_head")
        ('blocks.4', 'blocks.4', 'layer4', None)
    """
    parts = name.split(".")
    if len(parts) >= 2 and re.search(r"[A-Za-z_]\d+$", parts[0]):  # torchvision ResNet: layer4.1.conv2
        return parts[0]
    for i in range(1, len(parts)):
        if parts[i].isdigit():  # timm / torchvision: blocks.4.1.conv_pwl, features.3.conv
            return ".".join(parts[: i + 1])
    return None


def _candidates(specs: Sequence[LayerSpec], groups: Sequence[str], fne_store: bool) -> list[Candidate]:
    starts = np.cumsum([0] + [s.dims for s in specs])
    col = {s.name: slice(int(starts[i]), int(starts[i + 1])) for i, s in enumerate(specs)}
    out = [Candidate(s.name, "layer", (s.name,), s.dims, float(i), [col[s.name]]) for i, s in enumerate(specs)]
    if "stages" in groups:
        stages: dict[str, list[int]] = {}
        for i, s in enumerate(specs):
            st = stage_of(s.name)
            if st is not None:
                stages.setdefault(st, []).append(i)
        for st, idx in stages.items():
            if len(idx) >= 2:
                members = [specs[i] for i in idx]
                out.append(
                    Candidate(
                        f"{st} (stage)",
                        "stage",
                        tuple(m.name for m in members),
                        sum(m.dims for m in members),
                        float(np.mean(idx)),
                        _merge([col[m.name] for m in members]),
                    )
                )
    everything = tuple(s.name for s in specs)
    total = int(starts[-1])
    if len(specs) >= 2 and "all" in groups:
        out.append(Candidate("all layers", "all", everything, total, float(len(specs)), [slice(0, total)]))
    if "fne" in groups and not fne_store:
        out.append(Candidate("full-network embedding", "fne", everything, total, float(len(specs)) + 0.5, [slice(0, total)]))
    return out


def _merge(slices: list[slice]) -> list[slice]:
    merged: list[slice] = []
    for s in slices:
        if merged and merged[-1].stop == s.start:
            merged[-1] = slice(merged[-1].start, s.stop)
        else:
            merged.append(s)
    return merged


# ----------------------------------------------------------------------------- the sweep
def probe(
    store: str | os.PathLike | FeatureStore,
    out: str | os.PathLike | None = None,
    *,
    layers: str | Sequence[str] | None = None,
    groups: str | Sequence[str] | None = DEFAULT_GROUPS,
    head: str = "logreg",
    epochs: int = 20,
    batch_size: int = 256,
    lr: float | None = None,
    alpha: float = 1e-4,
    val_fraction: float = 0.1,
    patience: int | None = 5,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    test_split: str | None = "test",
    thresholds: str | Sequence[float] = (-0.25, 0.15),
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ProbeResult:
    """Train and score a quick streaming head per layer (and layer group) of ``store`` in one sweep.

    Args:
        store: a feature store (path or open :class:`~deepfeat.store.reader.FeatureStore`).
        out: folder for ``probe.csv``, ``probe.json``, ``probe.png`` and ``report.html`` (None: nothing written).
        layers: stored layers to probe (default: all of them, in store order = network depth).
        groups: extra candidates, a subset of ``stages`` (layers sharing a ``name.N`` prefix),
            ``all`` (all probed layers concatenated, standardised) and ``fne`` (the full-network
            embedding: standardised then ternarised with ``thresholds``); ``"none"`` for none.
        head: as :func:`deepfeat.train` with ``solver="stream"`` (the same default), for every candidate;
            so are ``epochs``, ``batch_size``, ``lr``, ``alpha``, ``val_fraction``, ``patience`` and ``seed``.
        memory_budget: bytes (or ``"2GiB"``) of feature rows in flight, split as ``train`` splits it.
        test_split: split scored at the end (skipped when the store has none); None: no test score.
        progress: callback receiving dicts with a ``phase`` key (``plan``, ``stats``, ``epoch``,
            ``test``, ``done``).

    Returns:
        A :class:`ProbeResult`; ``result.best`` is the candidate with the best validation accuracy.

    Example:
        >>> r = probe("feats/", out="probe/", groups="all")   # doctest: +SKIP
        >>> r.advice                                           # doctest: +SKIP
        'use blocks.4 (validation accuracy 0.874, test 0.861) ...'
    """
    t_start = time.perf_counter()
    validate_train_args(
        head, "stream", epochs, batch_size, lr, alpha, val_fraction, patience, None, seed, "cpu", where="probe"
    )
    group_names = parse_groups(groups)
    budget = parse_size(memory_budget, "memory_budget")

    lo_hi = parse_thresholds(thresholds, "probe")
    if out is not None and os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"The 'out' parameter of probe must be a directory; {os.fspath(out)!r} is a file.")
    if out is not None:
        check_writable(out, "probe's output folder", directory=True)
    st = store if isinstance(store, FeatureStore) else open_store(store)
    specs = st.select_layers(layers, "train")
    names = [s.name for s in specs]
    plan = scan_rows(st, val_fraction)
    if plan.n_val == 0:
        raise UsageError(
            f"probe needs validation rows to compare layers: the store {st.path!r} has no 'val' split "
            "and val_fraction is 0; pass val_fraction > 0 (--val-fraction 0.1)."
        )
    test = (
        test_split
        if test_split and test_split in st.splits and test_split not in (plan.train_split, plan.val_split)
        else None
    )
    fne_store = bool(st.metadata.get("fne")) or any(s.pool == _FNE_STORE_POOL for s in specs)
    cands = _candidates(specs, group_names, fne_store)
    note = reduced_precision_note(st.metadata, st.path)
    if note and any(c.kind == "fne" for c in cands):
        log.warning("%s (the full-network embedding candidate ternarises single features)", note)
    dims = sum(s.dims for s in specs)
    mem = plan_memory(budget, dims, np.dtype(st.dtype).itemsize, batch_size)
    plan.read_bytes = mem.read_bytes
    lr = HEADS[head].default_learning_rate if lr is None else float(lr)
    for c in cands:
        c.head = make_head(
            head, hidden=(256,), lr=lr, alpha=alpha, batch_size=batch_size, class_weight=None, seed=seed, device="cpu"
        )
    config = {
        "store": os.path.abspath(st.path),
        "layers": names,
        "groups": list(group_names),
        "head": head,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "alpha": alpha,
        "val_fraction": val_fraction,
        "patience": patience,
        "memory_budget": budget,
        "thresholds": list(lo_hi),
        "seed": seed,
        "test_split": test,
        "n_train": plan.n_train,
        "n_val": plan.n_val,
        "val_source": plan.val_source,
    }
    log.info(
        "probe: %d candidates (%d layers, %s dims) on %d training rows, %d validation rows (%s)",
        len(cands),
        len(specs),
        f"{dims:,}",
        plan.n_train,
        plan.n_val,
        plan.val_source,
    )
    if progress:
        progress(
            {
                "phase": "plan",
                "candidates": len(cands),
                "layers": len(specs),
                "dims": dims,
                "n_train": plan.n_train,
                "n_val": plan.n_val,
                "val_source": plan.val_source,
                "test_split": test,
                "epochs": epochs,
                "memory_budget": budget,
                "read_bytes": mem.read_bytes,
                "shuffle_rows": mem.shuffle_rows,
            }
        )

    with _one_thread():
        result = _sweep(
            st,
            names,
            plan,
            mem,
            cands,
            scaler_rows=mem.io_batch,
            epochs=epochs,
            batch_size=batch_size,
            patience=patience,
            lo_hi=lo_hi,
            seed=seed,
            test=test,
            progress=progress,
        )
    rows, n_test = result
    best = max(rows, key=lambda r: (r["val_accuracy"] or 0.0, -r["dims"], -r["depth"]))
    for r in rows:
        r["best"] = r["name"] == best["name"]
    res = ProbeResult(
        rows=rows,
        best=best,
        advice=_advice(rows, best),
        store=st.path,
        classes=list(plan.classes),
        n_train=plan.n_train,
        n_val=plan.n_val,
        n_test=n_test,
        val_source=plan.val_source,
        test_split=test,
        config=config,
        seconds=0.0,
    )
    res.seconds = time.perf_counter() - t_start
    config["seconds"] = res.seconds
    if out is not None:
        res.files = write_probe(res, os.fspath(out))
    log.info("probe: best %s (validation accuracy %.4f) in %.1f s", best["name"], best["val_accuracy"] or 0.0, res.seconds)
    if progress:
        progress({"phase": "done", "best": best, "seconds": res.seconds, "files": res.files})
    return res


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run the sweep's torch work on one thread.

    A sweep makes many small optimiser steps (one per head per batch); switching torch's thread
    pool per step, as a lone head does for small work, cost more than it gained (a 10-layer sweep
    took 1.96 s with the default 2 threads and 1.17 s with one). Torch's optimiser machinery is
    imported here too (several seconds, once), so it does not count in the first head's time.
    """
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _sweep(
    st: FeatureStore,
    names: list[str],
    plan: RowPlan,
    mem: Any,
    cands: list[Candidate],
    *,
    scaler_rows: int,
    epochs: int,
    batch_size: int,
    patience: int | None,
    lo_hi: tuple[float, float],
    seed: int,
    test: str | None,
    progress: ProgressFn | None,
) -> tuple[list[dict[str, Any]], int]:
    """Statistics pass, epochs (one pass feeds every head), final validation and test scores."""
    # 1. statistics: one scaler over every probed dim (a layer's scaler is its slice of it)
    t0 = time.perf_counter()
    scaler = StreamingScaler()
    for X, _ in train_batches(st, names, plan, scaler_rows, shuffle=False, seed=seed, buffer=scaler_rows):
        scaler.partial_fit(X)
    if progress:
        progress({"phase": "stats", "rows": scaler.n_samples_seen_, "seconds": time.perf_counter() - t0})
    want_fne = any(c.kind == "fne" for c in cands)

    def standardised(X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        Z = scaler.transform(X)
        return Z, (_ternary(Z, lo_hi) if want_fne else None)

    # 2. epochs: one shuffled pass over the training rows feeds every head still training
    for epoch in range(1, epochs + 1):
        active = [c for c in cands if not c.run.stopped]
        if not active:
            break
        t0 = time.perf_counter()
        factor = cosine_factor(epoch - 1, epochs, floor=LR_FLOOR)  # train's cosine decay
        for c in active:
            c.loss_sum, c.rows = 0.0, 0
        for X, y in train_batches(
            st, names, plan, batch_size, shuffle=True, seed=seed * 1_000_003 + epoch, buffer=mem.shuffle_rows
        ):
            Z, T = standardised(X)
            for c in active:
                t1 = time.perf_counter()
                if hasattr(c.head, "classes_"):
                    c.head.set_lr_scale(factor)
                c.head.partial_fit(c.take(Z, T), y, classes=plan.classes)
                c.loss_sum += c.head.loss_ * len(y)
                c.rows += len(y)
                c.seconds += time.perf_counter() - t1
        scores = _score(active, val_batches(st, names, plan, mem.io_batch), standardised)
        for c, val in zip(active, scores):
            _early_stopping(c, epoch, val, patience)
        if progress:
            progress(
                {
                    "phase": "epoch",
                    "epoch": epoch,
                    "epochs": epochs,
                    "active": len(active),
                    "stopped": sum(c.run.stopped for c in cands),
                    "seconds": time.perf_counter() - t0,
                    "best": max((c.run.history[-1]["val_accuracy"] or 0.0 for c in active), default=0.0),
                }
            )
    for c in cands:  # early stopping keeps the best epoch's weights (as train does)
        c.run.best_epoch = c.run.keep_best(patience, c.head.restore)
    # 3. final scores of the kept weights: validation, then the test split
    for c, val in zip(cands, _score(cands, val_batches(st, names, plan, mem.io_batch), standardised)):
        c.val = val
    n_test = 0
    if test is not None:
        t0 = time.perf_counter()
        test_batches = (
            (b.concat(names), b.labels)
            for b in st.batches(names, split=test, batch_size=mem.io_batch, views=0, read_bytes=mem.read_bytes)
        )
        for c, res in zip(cands, _score(cands, test_batches, standardised)):
            c.test = res
        n_test = cands[0].test.get("n", 0) if cands else 0
        if progress:
            progress({"phase": "test", "rows": n_test, "seconds": time.perf_counter() - t0})

    rows = [_row(c) for c in sorted(cands, key=lambda c: (c.kind not in ("layer",), c.depth, c.kind))]
    return rows, n_test


def _ternary(Z: np.ndarray, lo_hi: tuple[float, float]) -> np.ndarray:
    """The full-network embedding of standardised features, as float32 {-1, 0, 1}."""
    return ternarize(Z, lo_hi).astype(np.float32)


def _score(
    cands: Sequence[Candidate],
    batches: Iterator[tuple[np.ndarray, np.ndarray]],
    standardised: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
) -> list[dict[str, Any]]:
    """Accuracy and mean loss of every candidate's head on the batches (one pass for all)."""
    n = 0
    correct = [0] * len(cands)
    loss_sum = [0.0] * len(cands)
    loss_n = 0
    known: set[str] | None = None
    for X, y in batches:
        Z, T = standardised(X)
        if known is None:
            known = set(cands[0].head.classes_.tolist()) if cands else set()
        mask = np.fromiter((v in known for v in y), dtype=bool, count=len(y))
        n += len(y)
        loss_n += int(mask.sum())
        for i, c in enumerate(cands):
            t1 = time.perf_counter()
            Xc = c.take(Z, T)
            correct[i] += int((c.head.predict(Xc) == y).sum())
            if mask.any():
                loss_sum[i] += c.head.loss_on(Xc[mask], y[mask]) * int(mask.sum())
            c.seconds += time.perf_counter() - t1
    if n == 0:
        return [{} for _ in cands]
    return [
        {"accuracy": correct[i] / n, "loss": loss_sum[i] / loss_n if loss_n else float("nan"), "n": n}
        for i in range(len(cands))
    ]


def _early_stopping(c: Candidate, epoch: int, val: dict[str, Any], patience: int | None) -> None:
    """train's rule: keep the epoch with the best validation loss; stop after ``patience`` without one."""
    run = c.run
    improved = run.observe(epoch, val["loss"], c.head.snapshot)
    run.history.append(
        {
            "epoch": epoch,
            "train_loss": c.loss_sum / max(c.rows, 1),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "best": improved,
        }
    )
    run.epoch = epoch
    if run.should_stop(patience):
        run.stopped = True


def _row(c: Candidate) -> dict[str, Any]:
    return {
        "name": c.name,
        "kind": c.kind,
        "layers": list(c.layers),
        "dims": c.dims,
        "depth": c.depth,
        "val_accuracy": c.val.get("accuracy"),
        "val_loss": c.val.get("loss"),
        "test_accuracy": c.test.get("accuracy"),
        "best_epoch": c.run.best_epoch,
        "epochs": c.run.epoch,
        "seconds": round(c.seconds, 3),
    }


def _advice(rows: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """Which layer(s) to use, in one paragraph."""

    def acc(r: dict[str, Any]) -> str:
        t = "" if r["test_accuracy"] is None else f", test {r['test_accuracy']:.4f}"
        return f"validation accuracy {r['val_accuracy']:.4f}{t}"

    singles = [r for r in rows if r["kind"] == "layer"]
    text = [f"Use {best['name']} ({best['dims']:,} dims; {acc(best)})."]
    near = [r for r in rows if r is not best and (r["val_accuracy"] or 0) >= (best["val_accuracy"] or 0) - 0.01]
    cheaper = [r for r in near if r["dims"] < best["dims"]]
    best_single = max(singles, key=lambda r: (r["val_accuracy"] or 0.0, -r["dims"])) if singles else None
    cheap = min(cheaper, key=lambda r: r["dims"]) if cheaper else None
    if cheap is not None:
        name = f"The best single layer, {cheap['name']}," if cheap is best_single else cheap["name"]
        text.append(f"{name} is within a point with {cheap['dims']:,} dims ({acc(cheap)}).")
    if best_single is not None:
        if best_single is not best and best_single is not cheap:
            text.append(f"The best single layer is {best_single['name']} ({acc(best_single)}).")
        last = singles[-1]
        if last is not best_single:
            gap = ((best_single["val_accuracy"] or 0) - (last["val_accuracy"] or 0)) * 100
            text.append(f"The deepest layer, {last['name']}, is {gap:.1f} points below it on validation.")
    return " ".join(text)


# ----------------------------------------------------------------------------- outputs
def write_probe(result: ProbeResult, out: str) -> dict[str, str]:
    """``probe.csv``, ``probe.json``, ``probe.png`` and ``report.html`` into ``out`` (all of them or none)."""
    with staged_directory(out, f"writing the probe report into {out}") as stage:
        staged = _write_probe_files(result, stage)
    return {name: os.path.join(out, name) for name in staged}


def _write_probe_files(result: ProbeResult, out: str) -> dict[str, str]:
    files = {k: os.path.join(out, k) for k in ("probe.csv", "probe.json", "probe.png", "report.html")}
    keys = [
        "name",
        "kind",
        "dims",
        "val_accuracy",
        "test_accuracy",
        "val_loss",
        "best_epoch",
        "epochs",
        "seconds",
        "best",
        "layers",
    ]
    with open(files["probe.csv"], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in result.rows:
            w.writerow(
                [
                    ""
                    if r[k] is None
                    else (" ".join(r[k]) if k == "layers" else f"{r[k]:.6g}" if isinstance(r[k], float) else r[k])
                    for k in keys
                ]
            )
    doc = {
        "store": result.store,
        "classes": result.classes,
        "n_train": result.n_train,
        "n_val": result.n_val,
        "n_test": result.n_test,
        "val_source": result.val_source,
        "test_split": result.test_split,
        "best": result.best["name"],
        "advice": result.advice,
        "config": result.config,
        "rows": result.rows,
        "seconds": result.seconds,
    }
    with open(files["probe.json"], "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=lambda o: None if isinstance(o, float) and o != o else str(o))
    try:
        fig = _figure(result)
        fig.savefig(files["probe.png"], dpi=100)
        import matplotlib.pyplot as plt

        plt.close(fig)
    except ImportError:
        log.warning("probe.png not written: matplotlib is missing (pip install 'deepfeat[plot]')")
        del files["probe.png"]

    write(files["report.html"], probe_html(result, files.get("probe.png")))
    return files


def _figure(result: ProbeResult) -> Any:
    """Accuracy against depth: one point per layer, groups as dashed lines, the best layer starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    singles = [r for r in result.rows if r["kind"] == "layer"]
    stages = [r for r in result.rows if r["kind"] == "stage"]
    whole = [r for r in result.rows if r["kind"] in ("all", "fne")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(singles) + 3.0), 4.2))
    x = np.arange(len(singles))
    for key, label, style in (("val_accuracy", "validation", "o-"), ("test_accuracy", "test", "s--")):
        ys = [np.nan if r[key] is None else r[key] for r in singles]
        if not all(np.isnan(ys)):
            ax.plot(x, ys, style, ms=4, lw=1.2, label=f"layer, {label}")
    if stages:
        ax.plot(
            [r["depth"] for r in stages],
            [r["val_accuracy"] for r in stages],
            "D",
            ms=6,
            color="tab:green",
            alpha=0.7,
            label="stage (validation)",
        )
    for r, colour in zip(whole, ("tab:purple", "tab:red")):
        ax.axhline(
            r["val_accuracy"], ls=":", color=colour, lw=1.2, label=f"{r['name']} (validation {r['val_accuracy']:.3f})"
        )
    if singles:
        bs = max(range(len(singles)), key=lambda i: (singles[i]["val_accuracy"] or 0.0, -singles[i]["dims"]))
        ax.plot(
            [bs],
            [singles[bs]["val_accuracy"]],
            "*",
            ms=16,
            color="gold",
            mec="k",
            zorder=5,
            label=f"best layer: {singles[bs]['name']}",
        )
    ax.set_xticks(x, [r["name"] for r in singles], rotation=90 if len(singles) > 4 else 0, fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_xlabel("layer (network depth)")
    ax.set_title(
        f"linear probe per layer: {os.path.basename(os.path.normpath(result.store))} ({result.n_train:,} training rows)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def probe_html(result: ProbeResult, png: str | None) -> str:
    """The sweep as one self-contained page, in the look of the other reports."""
    cfg = result.config
    table_rows = [
        {
            "layer": r["name"],
            "kind": r["kind"],
            "dims": r["dims"],
            "val accuracy": r["val_accuracy"],
            "test accuracy": r["test_accuracy"],
            "best epoch": r["best_epoch"],
            "seconds": r["seconds"],
        }
        for r in result.rows
    ]
    best = result.best
    cards = [("best", best["name"]), ("validation accuracy", H.fmt(best["val_accuracy"]))]
    if best["test_accuracy"] is not None:
        cards.append(("test accuracy", H.fmt(best["test_accuracy"])))
    cards += [("candidates", str(len(result.rows))), ("seconds", f"{result.seconds:.1f}")]
    body = [
        H.cards(cards),
        f'<div class="reco">{H.esc(result.advice)}</div>',
        H.section(
            "Accuracy by depth",
            H.img_file(png, "accuracy against depth")
            if png
            else H.paragraph("(matplotlib is not installed: no figure)", note=True),
        ),
        H.section(
            "All candidates",
            H.table(table_rows, left=("layer", "kind"), highlight=lambda r: r["layer"] == best["name"]),
            H.paragraph(
                "Sorted by depth; stages, all layers and the full-network embedding follow the "
                "single layers. The best candidate (highlighted) has the best validation accuracy; "
                "the test split was not used to choose it. Seconds: the candidate's own training and "
                "scoring; reading and standardising the store is shared by all.",
                note=True,
            ),
        ),
        H.section(
            "How this was measured",
            H.paragraph(
                f"A streaming {cfg['head']} head per candidate (Adam, lr {cfg['lr']:g} with cosine decay, alpha "
                f"{cfg['alpha']:g}, batch {cfg['batch_size']}, up to {cfg['epochs']} epochs, early stopping on the "
                f"validation loss with patience {cfg['patience']}), trained on {result.n_train:,} rows, validated on "
                f"{result.n_val:,} rows ({result.val_source}), tested on {result.n_test:,} rows of "
                f"{result.test_split or 'no test split'}. One pass over the store per epoch fed every head; memory "
                f"budget {format_size(cfg['memory_budget'])}. Classes: {', '.join(result.classes)}."
            ),
        ),
    ]
    return H.page("deepfeat probe: which layer?", "".join(body), subtitle=f"store {result.store}")

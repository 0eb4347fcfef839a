"""Evaluate a model bundle on a split of a feature store: report, per-class metrics, confusion matrix.

The store is streamed (view 0 of every row; with ``tta=True`` the scores of all stored views of
an image are averaged). Nothing but labels, top-k indices and scores per row is kept in memory.

Written to ``out`` (a directory):

* ``report.json`` -- everything below as numbers;
* ``report.txt``  -- the same for people (a scikit-learn-style classification report);
* ``confusion_matrix.csv`` -- rows = true class, columns = predicted class, with names;
* ``confusion_matrix.png`` -- the matrix as an image with the class names (needs matplotlib);
* ``predictions.csv`` -- one row per evaluated image: id, path, true label, predicted label, score;
* ``report.html`` -- one self-contained page: the numbers, the confusion matrix, the most confident
  mistakes and least confident correct answers as thumbnails of their source images (looked up by
  the store's source paths; a missing source shows a placeholder), the calibration curve.

Example:
    >>> report = evaluate("model.dfm", "feats/", split="test", out="report/")   # doctest: +SKIP
    >>> report["accuracy"], report["top_k"]["top_3"]                           # doctest: +SKIP
    (0.91, 0.99)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import numbers
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import progress
from .bundle import Bundle, load_bundle
from .errors import StoreError, UsageError
from .params import check_int, check_number
from .reports.evaluation_page import Examples, calibration, evaluation_html
from .reports.html import write
from .search.duplicates import DEFAULT_THRESHOLD
from .search.leakage import train_near_duplicates
from .search.pixels import DEFAULT_PIXEL_THRESHOLD
from .store.fsutil import check_writable, staged_directory
from .store.reader import FeatureStore, open_store, source_paths
from .viz.plots import plot_confusion_matrix as plot

log = logging.getLogger(__name__)

ALL_SPLITS = ("all",)


def _parse_top_k(top_k: int | str | Sequence[int]) -> tuple[int, ...]:
    try:
        if isinstance(top_k, str):
            ks = tuple(int(v) for v in top_k.split(",") if v.strip())
        elif isinstance(top_k, numbers.Integral) and not isinstance(top_k, bool):
            ks = (int(top_k),)
        else:
            ks = tuple(int(v) for v in top_k)
    except (TypeError, ValueError):
        ks = ()
    if not ks or any(k < 1 for k in ks):
        raise UsageError(f"The 'top_k' parameter of evaluate must be ints >= 1 such as 1,3; got {top_k!r} instead.")
    return tuple(sorted(set(ks)))


def _check_split(store: FeatureStore, split: str | None) -> str | None:
    if split is None or split in ALL_SPLITS:
        return None
    if split not in store.splits:
        have = ", ".join(repr(s) for s in store.splits) or "none"
        raise UsageError(
            f"The 'split' parameter of evaluate must be a split of the store {store.path!r} (it has: "
            f"{have}; or 'all'); got {split!r} instead."
        )
    return split


def _check_labels(store: FeatureStore, split: str | None) -> int:
    """Rows of the split (view 0); raises when any has no label."""
    rows = missing = 0
    for part in store.iter_parts():
        if split is not None and not part.splits.get(split):
            continue
        t = store.read_rows(part, ["label", "split", "view"])
        labels = t.column("label").to_pylist()
        splits = [s or "" for s in t.column("split").to_pylist()]
        views = t.column("view").to_pylist()
        for lbl, s, v in zip(labels, splits, views):
            if (split is None or s == split) and v == 0:
                rows += 1
                missing += lbl is None
    where = f"split {split!r}" if split else "the store"
    if missing:
        raise UsageError(
            f"{missing} of the {rows} rows of {where} in {store.path!r} have no label; evaluate needs "
            "labelled rows (extract from class folders or a list file with a label column), "
            "or use 'deepfeat predict' for unlabelled images."
        )
    return rows


def _augmented_rows(store: FeatureStore, split: str | None) -> int:
    """Rows of the split (``None``: all) that are augmented views (view >= 1)."""
    n = 0
    for part in store.iter_parts():
        if split is not None and not part.splits.get(split):
            continue
        t = store.read_rows(part, ["split", "view"])
        n += sum(
            1
            for s, v in zip(t.column("split").to_pylist(), t.column("view").to_pylist())
            if (split is None or s == split) and v
        )
    return n


def evaluate(
    bundle: str | os.PathLike | Bundle,
    store: str | os.PathLike | FeatureStore,
    split: str | None = "test",
    *,
    out: str | os.PathLike | None = None,
    top_k: int | str | Sequence[int] = (1, 3),
    tta: bool = False,
    batch_size: int = 1024,
    leakage_threshold: float | None = DEFAULT_THRESHOLD,
    leakage_pixel_threshold: float | None = DEFAULT_PIXEL_THRESHOLD,
) -> dict[str, Any]:
    """Score a bundle on the stored features of ``split`` (``None`` or ``"all"``: every row).

    Returns the report as a dict (see the module docstring); with ``out`` the files are written too.
    When ``split`` is not ``train`` and the store has a train split, rows with a near-duplicate in
    train (cosine >= ``leakage_threshold`` on ``pre_logits``, or the bundle's first layer) are counted
    and the accuracy without them is reported beside the headline (``report["leakage"]``; None: no check).
    With ``leakage_pixel_threshold``, the images are read again and a row whose grey thumbnails correlate
    with a train image's at >= it leaks too: re-encodes and downscales that the features miss (None: features only).
    """
    ks = _parse_top_k(top_k)
    check_int(batch_size, "batch_size", minimum=1, where="evaluate")
    check_number(
        leakage_threshold, "leakage_threshold", minimum=0, maximum=1, min_open=True, where="evaluate", optional=True
    )
    check_number(
        leakage_pixel_threshold,
        "leakage_pixel_threshold",
        minimum=0,
        maximum=1,
        min_open=True,
        where="evaluate",
        optional=True,
    )
    if out is not None:
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"The 'out' parameter of evaluate must be a directory; {os.fspath(out)!r} is a file.")
        check_writable(out, "evaluate's output folder", directory=True)
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    st = store if isinstance(store, FeatureStore) else open_store(store)
    if st.num_rows() == 0:
        raise StoreError(f"The store {st.path!r} holds no rows (nothing was embedded).")
    sel = _check_split(st, split)
    b.check_store(st)
    n_rows = _check_labels(st, sel)
    if n_rows == 0:
        raise UsageError(f"The split {split!r} of the store {st.path!r} has no rows to evaluate.")

    classes = list(b.classes)
    kmax = min(max(ks), len(classes))
    ids: list[str] = []
    paths: list[str] = []
    sources: list[str | None] = []  # exact source paths (path_bytes), for the thumbnails of report.html
    truth: list[str] = []
    top: list[np.ndarray] = []
    top_scores: list[np.ndarray] = []
    names = b.layer_names
    cols = ("id", "label", "split", "view", "path", "path_bytes")
    if tta and not _augmented_rows(st, sel):
        where = f"the split {sel!r} of the store" if sel else "the store"
        raise UsageError(
            f"tta (--tta) averages the scores over each image's augmented views, but {where} "
            f"{st.path!r} holds none; extract with --views K --views-splits {sel or 'train,test'}, "
            "or drop --tta."
        )
    if tta:
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        first: dict[str, tuple[str, str, str | None]] = {}
        for batch in progress.track(
            st.batches(names, split=sel, batch_size=batch_size, views="all", columns=cols), "evaluate", unit="rows", size=len
        ):
            S = b.scores(b.features_of(batch.features))
            for i, (rid, lbl, path, src) in enumerate(
                zip(batch.ids, batch.labels, batch.meta.column("path").to_pylist(), source_paths(batch.meta))
            ):
                if rid in sums:
                    sums[rid] += S[i]
                    counts[rid] += 1
                else:
                    sums[rid], counts[rid], first[rid] = S[i].astype(np.float64), 1, (lbl, path, src)
        order = sorted(sums)
        if order:
            S = np.stack([sums[r] / counts[r] for r in order])
            idx = np.argsort(-S, axis=1, kind="stable")[:, :kmax]
            ids, truth, paths = order, [first[r][0] for r in order], [first[r][1] for r in order]
            sources = [first[r][2] for r in order]
            top, top_scores = [idx], [np.take_along_axis(S, idx, axis=1)]
        views_used = max(counts.values()) if counts else 0
    else:
        for batch in progress.track(
            st.batches(names, split=sel, batch_size=batch_size, views=0, columns=cols),
            "evaluate",
            total=n_rows,
            unit="rows",
            size=len,
        ):
            S = b.scores(b.features_of(batch.features))
            idx = np.argsort(-S, axis=1, kind="stable")[:, :kmax]
            top.append(idx)
            top_scores.append(np.take_along_axis(S, idx, axis=1))
            ids.extend(batch.ids)
            truth.extend(batch.labels.tolist())
            paths.extend(batch.meta.column("path").to_pylist())
            sources.extend(source_paths(batch.meta))
        views_used = 1
    topk = np.concatenate(top) if top else np.zeros((0, kmax), dtype=int)
    tops = np.concatenate(top_scores) if top_scores else np.zeros((0, kmax))
    report = _metrics(classes, truth, topk, ks)
    report.update(
        {
            "bundle": b.path,
            "store": st.path,
            "split": split if sel else "all",
            "head": b.head_kind,
            "layers": names,
            "tta": bool(tta),
            "views_averaged": int(views_used),
            "scores": "probability" if b.probabilistic else "decision",
        }
    )
    leaks = _leakage(st, sel, b, (leakage_threshold, leakage_pixel_threshold), ids, sources, truth, topk, classes)
    if leaks is not None:
        report["leakage"] = leaks
    if b.probabilistic and len(tops):
        truth_idx = np.asarray([classes.index(t) if t in classes else -1 for t in truth])
        report["calibration"] = calibration(tops[:, 0], topk[:, 0] == truth_idx)
    if out is not None:
        examples = Examples(
            paths=sources, truth=truth, topk=topk, scores=tops, classes=classes, probabilistic=bool(b.probabilistic)
        )
        report["files"] = _write(
            report,
            os.fspath(out),
            ids,
            paths,
            truth,
            [classes[i] for i in topk[:, 0]],
            tops[:, 0] if len(tops) else tops,
            examples,
        )
    log.info("evaluate: accuracy %.4f on %d rows of %s", report["accuracy"], report["n"], report["split"])
    return report


def _metrics(classes: list[str], truth: list[str], topk: np.ndarray, ks: tuple[int, ...]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    extra = sorted({t for t in truth if t not in set(classes)})
    labels = classes + extra
    pos = {c: i for i, c in enumerate(labels)}
    y_true = np.asarray([pos[t] for t in truth], dtype=int)
    y_pred = topk[:, 0].astype(int) if len(topk) else np.zeros(0, dtype=int)
    n = len(y_true)
    all_idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=all_idx, zero_division=0)
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    per_class = {
        labels[i]: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i in all_idx
    }
    avgs = {}
    for avg in ("macro", "weighted"):
        pa, ra, fa, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg, zero_division=0)
        avgs[f"{avg}_avg"] = {"precision": float(pa), "recall": float(ra), "f1": float(fa), "support": n}
    cm = confusion_matrix(y_true, y_pred, labels=all_idx)
    top = {f"top_{k}": float(np.mean([(y_true[i] in topk[i, :k]) for i in range(n)])) if n else float("nan") for k in ks}
    return {
        "n": n,
        "accuracy": float(np.mean(y_true == y_pred)) if n else float("nan"),
        "top_k": top,
        "per_class": per_class,
        **avgs,
        "confusion_matrix": {"labels": labels, "matrix": cm.tolist(), "rows": "true", "columns": "predicted"},
        "unknown_labels": extra,
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text, laid out like scikit-learn's ``classification_report``."""
    names = list(report["per_class"]) + ["macro avg", "weighted avg"]
    width = max(12, *(len(n) for n in names))
    lines = [
        f"bundle: {report['bundle']}",
        f"store:  {report['store']}  split: {report['split']}  rows: {report['n']}"
        + (f"  (test-time averaging over up to {report['views_averaged']} views)" if report["tta"] else ""),
        f"head:   {report['head']} on {', '.join(report['layers'])}",
        "",
        f"accuracy: {report['accuracy']:.4f}   "
        + "   ".join(f"{k.replace('_', '-')}: {v:.4f}" for k, v in report["top_k"].items()),
        *_leakage_lines(report),
        "",
        f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}",
    ]
    for name, m in report["per_class"].items():
        lines.append(f"{name:>{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {m['support']:>9d}")
    lines.append("")
    for key, name in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        m = report[key]
        lines.append(f"{name:>{width}} {m['precision']:>9.4f} {m['recall']:>9.4f} {m['f1']:>9.4f} {m['support']:>9d}")
    if report.get("unknown_labels"):
        lines += ["", "labels the bundle does not know (always wrong): " + ", ".join(report["unknown_labels"])]
    return "\n".join(lines) + "\n"


def _leakage(
    st: FeatureStore,
    sel: str | None,
    b: Bundle,
    thresholds: tuple[float | None, float | None],
    ids: list[str],
    sources: list[str | None],
    truth: list[str],
    topk: np.ndarray,
    classes: list[str],
) -> dict[str, Any] | None:
    """Rows of the evaluated split with a near-duplicate in train, and the accuracy without them."""
    threshold, pixel_threshold = thresholds
    if threshold is None or sel in (None, "train") or "train" not in st.splits or not len(topk):
        return None
    layer = "pre_logits" if "pre_logits" in st.layer_names else b.layer_names[0]
    found = train_near_duplicates(st, sel, layer=layer, threshold=float(threshold), pixel_threshold=pixel_threshold)
    correct = np.asarray([t in classes and classes.index(t) == p for t, p in zip(truth, topk[:, 0].tolist())])
    leaked = np.asarray([i in found for i in ids], dtype=bool)
    clean = ~leaked
    examples = sorted(
        (
            {
                "id": i,
                "path": p,
                "train_id": found[i].train_id,
                "train_path": found[i].train_path,
                "similarity": found[i].similarity,
                "by": found[i].by,
            }
            for i, p in zip(ids, sources)
            if i in found
        ),
        key=lambda e: -e["similarity"],
    )
    return {
        "threshold": float(threshold),
        "pixel_threshold": pixel_threshold,
        "by_pixels": sum(1 for i in ids if i in found and found[i].by == "pixels"),
        "layer": layer,
        "reference_split": "train",
        "rows": int(leaked.sum()),
        "accuracy_leaked": float(correct[leaked].mean()) if leaked.any() else None,
        "n_without": int(clean.sum()),
        "accuracy_without": float(correct[clean].mean()) if clean.any() else None,
        "examples": examples[:48],
    }


def _leakage_lines(report: dict[str, Any]) -> list[str]:
    leak = report.get("leakage")
    if not leak:
        return []
    by = f"cosine >= {leak['threshold']:g} on {leak['layer']}"
    if leak.get("pixel_threshold") is not None:
        by += f", or pixels >= {leak['pixel_threshold']:g}"
    if not leak["rows"]:
        return [f"near-duplicates in train: none ({by})"]
    without = leak["accuracy_without"]
    pixels = f", {leak['by_pixels']:,} of them by pixels only" if leak.get("by_pixels") else ""
    return [
        f"near-duplicates in train: {leak['rows']:,} of {report['n']:,} rows ({by}{pixels}); accuracy without them: "
        + (f"{without:.4f} on {leak['n_without']:,} rows" if without is not None else "- (no rows left)")
        + f" (headline {report['accuracy']:.4f})"
    ]


def _write(
    report: dict[str, Any],
    out: str,
    ids: list[str],
    paths: list[str],
    truth: list[str],
    pred: list[str],
    score: np.ndarray,
    examples: Any = None,
) -> dict[str, str]:
    names = ("report.json", "report.txt", "confusion_matrix.csv", "confusion_matrix.png", "predictions.csv", "report.html")
    with staged_directory(out, f"writing the evaluation report into {out}") as stage:  # all files or none
        staged = _write_files(report, stage, names, ids, paths, truth, pred, score, examples)
    return {name: os.path.join(out, name) for name in staged}


def _write_files(
    report: dict[str, Any],
    out: str,
    names: Sequence[str],
    ids: list[str],
    paths: list[str],
    truth: list[str],
    pred: list[str],
    score: np.ndarray,
    examples: Any,
) -> dict[str, str]:
    files = {name: os.path.join(out, name) for name in names}
    with open(files["report.json"], "w", encoding="utf-8") as f:
        json.dump({k: v for k, v in report.items() if k != "files"}, f, indent=1, default=_nan_to_none)
    with open(files["report.txt"], "w", encoding="utf-8") as f:
        f.write(format_report(report))
    labels = report["confusion_matrix"]["labels"]
    with open(files["confusion_matrix.csv"], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *labels])
        for name, row in zip(labels, report["confusion_matrix"]["matrix"]):
            w.writerow([name, *row])
    with open(files["predictions.csv"], "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "label", "predicted", "score"])
        for row in zip(ids, paths, truth, pred, score.tolist()):
            w.writerow(row)
    try:
        plot_confusion_matrix(
            np.asarray(report["confusion_matrix"]["matrix"]),
            labels,
            files["confusion_matrix.png"],
            title=f"{report['head']} on {', '.join(report['layers'])} -- {report['split']} "
            f"(accuracy {report['accuracy']:.3f})",
        )
    except ImportError:
        log.warning("confusion_matrix.png not written: matplotlib is missing (pip install 'deepfeat[plot]')")
        del files["confusion_matrix.png"]
    if examples is not None:
        write(files["report.html"], evaluation_html(report, examples))
    else:
        del files["report.html"]
    return files


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plot_confusion_matrix(cm: np.ndarray, labels: Sequence[str], path: str, title: str = "") -> str:
    """Save a confusion matrix as a PNG with readable class names (see :mod:`deepfeat.viz.plots`)."""
    return plot(cm, labels, path, title).path

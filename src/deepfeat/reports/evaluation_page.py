"""The HTML page of ``deepfeat evaluate``: what the model got right and wrong, with the images.

Sections: the headline numbers (accuracy, top-k, macro F1, calibration error), per-class
precision / recall / F1, the confusion matrix (a shaded table up to :data:`MAX_MATRIX_CLASSES`
classes, else the most confused pairs), the most confident mistakes and the least confident
correct answers as thumbnails of their source images with their top-k, and the calibration curve.

Example:
    >>> page = evaluation_html(report, examples)   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import html as H

#: Classes up to which the confusion matrix is drawn as a table (beyond: the most confused pairs).
MAX_MATRIX_CLASSES = 30
#: Thumbnails per gallery (most confident mistakes; least confident correct answers).
GALLERY_SIZE = 24


@dataclass
class Examples:
    """Per evaluated image: source path, true label, top-k class indices and their scores."""

    paths: list[str | None]
    truth: list[str]
    topk: np.ndarray  #: rows x k indices into ``classes``
    scores: np.ndarray  #: rows x k scores (probabilities or decision values)
    classes: list[str]
    probabilistic: bool


def calibration(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Reliability of the top-1 probability: per equal-width bin, mean confidence, accuracy, count; and ECE.

    Example:
        >>> c = calibration(np.array([0.95, 0.9, 0.55, 0.6]), np.array([True, False, False, True]), bins=2)
        >>> [b["count"] for b in c["bins"]], round(c["ece"], 4)
        ([0, 4], 0.25)
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    out, ece, n = [], 0.0, max(len(confidence), 1)
    for b in range(bins):
        m = idx == b
        k = int(m.sum())
        conf = float(confidence[m].mean()) if k else None
        acc = float(correct[m].mean()) if k else None
        if k:
            ece += k / n * abs(acc - conf)  # type: ignore[operator]
        out.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": k, "confidence": conf, "accuracy": acc})
    return {"bins": out, "ece": float(ece)}


def _calibration_figure(cal: dict[str, Any]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = [b for b in cal["bins"] if b["count"]]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot(
        [b["confidence"] for b in bins],
        [b["accuracy"] for b in bins],
        "o-",
        color="tab:blue",
        label=f"this model (ECE {cal['ece']:.3f})",
    )
    ax.set_xlabel("top-1 probability (bin mean)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax2.bar(
        [(b["low"] + b["high"]) / 2 for b in cal["bins"]],
        [b["count"] for b in cal["bins"]],
        width=0.9 / len(cal["bins"]),
        color="tab:blue",
        alpha=0.7,
    )
    ax2.set_xlabel("top-1 probability")
    ax2.set_ylabel("images")
    ax2.set_xlim(0, 1)
    fig.tight_layout()
    return H.img_figure(fig, "calibration curve")


def _confusion(report: dict[str, Any]) -> str:
    labels = report["confusion_matrix"]["labels"]
    M = np.asarray(report["confusion_matrix"]["matrix"], dtype=np.int64)
    if len(labels) > MAX_MATRIX_CLASSES:
        off = M.copy()
        np.fill_diagonal(off, 0)
        flat = np.argsort(-off, axis=None, kind="stable")[:30]
        rows = [
            {
                "true": labels[i],
                "predicted as": labels[j],
                "images": int(off[i, j]),
                "share of the true class": float(off[i, j] / max(M[i].sum(), 1)),
            }
            for i, j in zip(*np.unravel_index(flat, off.shape))
            if off[i, j] > 0
        ]
        return H.paragraph(
            f"{len(labels)} classes: the 30 most confused (true, predicted) pairs; the full matrix is "
            "in confusion_matrix.csv.",
            note=True,
        ) + H.table(rows, left=("true", "predicted as"))
    share = M / np.maximum(M.sum(axis=1, keepdims=True), 1)
    off_max = max(float((share - np.diag(np.diag(share))).max()), 1e-9)  # confusions shaded against the worst one
    head = "<th class=l>true \\ predicted</th>" + "".join(f"<th>{H.esc(c)}</th>" for c in labels)
    body = []
    for i, c in enumerate(labels):
        cells = []
        for j in range(len(labels)):
            a = float(share[i, j])
            shade = a if i == j else 0.8 * a / off_max
            colour = "47,125,50" if i == j else "198,40,40"
            fg = "#fff" if shade > 0.55 else "inherit"
            cells.append(
                f'<td style="background:rgba({colour},{shade:.3f});color:{fg}" '
                f'title="{H.esc(c)} as {H.esc(labels[j])}: {M[i, j]} ({a:.1%})">{M[i, j]}</td>'
            )
        body.append(f"<tr><th class=l>{H.esc(c)}</th>{''.join(cells)}</tr>")
    return f'<table class="cm"><tr>{head}</tr>{"".join(body)}</table>' + H.paragraph(
        "Rows: true class; columns: predicted class. Green: share of the row predicted right; red: "
        "confusions, the most frequent one darkest.",
        note=True,
    )


def _card(ex: Examples, i: int) -> str:
    truth = ex.truth[i]
    pred = ex.classes[int(ex.topk[i, 0])]
    ok = pred == truth
    items = []
    for j in range(ex.topk.shape[1]):
        name = ex.classes[int(ex.topk[i, j])]
        cls = ' class="ok"' if name == truth else ""
        items.append(f"<li{cls}>{H.esc(name)} ({ex.scores[i, j]:.3f})</li>")
    title = f'<span class="{"ok" if ok else "no"}">{"right" if ok else "wrong"}</span>: true {H.esc(truth)}'
    return H.thumb_card(ex.paths[i], title, [f"<ol>{''.join(items)}</ol>"])


def _gallery(ex: Examples, order: Sequence[int], empty: str) -> str:
    if not len(order):
        return H.paragraph(empty, note=True)
    return '<div class="grid">' + "".join(_card(ex, int(i)) for i in order) + "</div>"


def _leakage_section(report: dict[str, Any], leak: dict[str, Any]) -> str:
    """Evaluated rows with a near-duplicate in train: counts, accuracies, and the pairs as thumbnails."""
    shown = leak["examples"][:GALLERY_SIZE]
    pairs = []
    for e in shown:
        pairs.append(
            H.thumb_card(
                e["path"],
                f'<span class="no">{H.esc(report["split"])}</span>',
                [f"<div>{'pixels' if e.get('by') == 'pixels' else 'similarity'} {e['similarity']:.4f}</div>"],
            )
        )
        pairs.append(H.thumb_card(e["train_path"], '<span class="ok">train</span>', [f"<div>{H.esc(e['train_id'])}</div>"]))
    table = H.table(
        [
            {"rows": "all", "n": report["n"], "accuracy": report["accuracy"]},
            {"rows": "with a near-duplicate in train", "n": leak["rows"], "accuracy": leak["accuracy_leaked"]},
            {"rows": "without them", "n": leak["n_without"], "accuracy": leak["accuracy_without"]},
        ]
    )
    return H.section(
        f"Near-duplicates in train ({leak['rows']:,} of {report['n']:,} rows)",
        H.paragraph(
            f"Evaluated rows whose cosine similarity to a training row is at least {leak['threshold']:g} on "
            f"{leak['layer']}"
            + (
                f", or whose grey thumbnails correlate with a training image's at {leak['pixel_threshold']:g} or more "
                "(re-encodes and downscales)"
                if leak.get("pixel_threshold") is not None
                else ""
            )
            + ": their accuracy measures memory, not generalisation. Each pair: the evaluated "
            "image, then its nearest training image.",
            note=True,
        ),
        table,
        '<div class="grid">' + "".join(pairs) + "</div>",
    )


def evaluation_html(report: dict[str, Any], ex: Examples) -> str:
    """The whole evaluation page (see the module docstring)."""
    n = report["n"]
    pred = ex.topk[:, 0] if len(ex.topk) else np.zeros(0, dtype=int)
    top1 = ex.scores[:, 0] if len(ex.scores) else np.zeros(0)
    class_pos = {c: i for i, c in enumerate(ex.classes)}
    truth_idx = np.asarray([class_pos.get(t, -1) for t in ex.truth], dtype=np.int64)
    correct = pred == truth_idx
    wrong = np.flatnonzero(~correct)
    right = np.flatnonzero(correct)
    confident_wrong = wrong[np.argsort(-top1[wrong], kind="stable")][:GALLERY_SIZE]
    unsure_right = right[np.argsort(top1[right], kind="stable")][:GALLERY_SIZE]
    score_word = "probability" if ex.probabilistic else "decision value"

    cards = [("accuracy", f"{report['accuracy']:.4f}")]
    leak = report.get("leakage")
    if leak and leak["rows"] and leak["accuracy_without"] is not None:
        cards.append((f"accuracy without the {leak['rows']:,} near-duplicates of train", f"{leak['accuracy_without']:.4f}"))
    cards += [(k.replace("_", "-") + " accuracy", f"{v:.4f}") for k, v in report["top_k"].items() if k != "top_1"]
    cards += [("macro F1", f"{report['macro_avg']['f1']:.4f}"), ("images", f"{n:,}")]
    cal = report.get("calibration")
    if cal:
        cards.append(("calibration error (ECE)", f"{cal['ece']:.3f}"))
    per_class = [
        {"class": c, "precision": m["precision"], "recall": m["recall"], "f1": m["f1"], "support": m["support"]}
        for c, m in report["per_class"].items()
    ]
    per_class += [
        {
            "class": name,
            "precision": report[key]["precision"],
            "recall": report[key]["recall"],
            "f1": report[key]["f1"],
            "support": report[key]["support"],
        }
        for key, name in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg"))
    ]
    parts = [
        H.cards(cards),
        H.section("Per class", H.table(per_class, highlight=lambda r: r["class"] in ("macro avg", "weighted avg"))),
        H.section("Confusion matrix", _confusion(report)),
        H.section(
            f"Most confident mistakes ({len(confident_wrong)} of {len(wrong):,})",
            H.paragraph(
                f"Wrong answers with the highest top-1 {score_word}: often a mislabelled image or two "
                "classes the features cannot separate. The true class is green in the top-k list.",
                note=True,
            ),
            _gallery(ex, confident_wrong, "No mistakes."),
        ),
        H.section(
            f"Least confident correct answers ({len(unsure_right)} of {len(right):,})",
            H.paragraph(f"Right answers with the lowest top-1 {score_word}: the borderline cases.", note=True),
            _gallery(ex, unsure_right, "No correct answers."),
        ),
    ]
    if leak and leak["rows"]:
        parts.insert(1, _leakage_section(report, leak))
    if cal:
        try:
            fig = _calibration_figure(cal)
        except ImportError:
            fig = H.paragraph("(matplotlib is not installed: no figure)", note=True)
        parts.append(
            H.section(
                "Calibration",
                fig,
                H.paragraph(
                    "Top-1 probability against how often it is right, in 10 equal-width bins; points under the diagonal "
                    "are over-confident. ECE: the bins' mean |accuracy - confidence| weighted by their images.",
                    note=True,
                ),
            )
        )
    else:
        parts.append(
            H.section(
                "Calibration",
                H.paragraph("This head gives decision values, not probabilities: no calibration curve.", note=True),
            )
        )
    sub = (
        f"bundle {report['bundle']} | store {report['store']} | split {report['split']} | head {report['head']} "
        f"on {', '.join(report['layers'])}"
        + (f" | test-time averaging over up to {report['views_averaged']} views" if report.get("tta") else "")
    )
    return H.page("deepfeat evaluation", "".join(parts), subtitle=sub)

"""The analysis report: tables (CSV + Parquet), figures (PNG) and one offline HTML page (+ Markdown).

Written into ``out``:

* ``layers.csv|.parquet`` -- per layer: shares of features discriminative by presence / absence /
  both / none (noise), mean number of classes per feature;
* ``layer_class_presence.csv``, ``layer_class_absence.csv`` -- layers x classes shares;
* ``classes.csv`` -- per class: rows, share of features discriminative for it (either direction,
  presence, absence) and its 3 best layers;
* ``top_features.csv`` -- per class, its ``top_k`` features (layer, feature, AUROC, q, kind);
* ``features.parquet`` -- one row per (feature, class): AUROC, its error bound, p, q, flags;
* ``thresholds.csv`` -- the noise-thresholding grid (retained discriminability, share of zeros);
* ``heatmap_presence.png``, ``heatmap_absence.png``, ``layers.png``, ``auroc_hist.png``;
* ``report.html`` (images inline, base64) and ``report.md``; ``summary.json``.

Example:
    >>> import deepfeat
    >>> summary = deepfeat.analyze("fm_all/", out="analysis/", split="train")   # doctest: +SKIP
    >>> summary["report"]                                                        # doctest: +SKIP
    'analysis/report.html'
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..agreement import reduced_precision_note
from ..errors import UsageError
from ..params import check_int
from ..reports import html as H
from ..store.fsutil import check_writable, staged_directory
from ..store.reader import FeatureStore
from .stats import FeatureStatistics, check_arguments, feature_statistics

log = logging.getLogger(__name__)


def _write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _write_parquet(path: str, columns: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({k: (list(v) if isinstance(v, np.ndarray) and v.dtype == object else v) for k, v in columns.items()}),
        path,
        compression="zstd",
    )


def _fmt3(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _matrix_rows(st: FeatureStatistics, M: np.ndarray) -> list[dict[str, Any]]:
    return [{"layer": s.name, **{c: float(M[i, j]) for j, c in enumerate(st.classes)}} for i, s in enumerate(st.layers)]


def _figures(st: FeatureStatistics, out: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, str] = {}
    n_l, n_c = len(st.layers), len(st.classes)
    for which, cmap in (("presence", "Reds"), ("absence", "Blues")):
        M = st.layer_class_share(which)
        fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n_c, 1.2 + 0.28 * n_l))
        im = ax.imshow(M, aspect="auto", cmap=cmap, vmin=0, vmax=max(1e-9, float(M.max())))
        ax.set_xticks(range(n_c), st.classes, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n_l), [s.name for s in st.layers], fontsize=7)
        ax.set_title(f"share of features discriminative by {which}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        paths[f"heatmap_{which}"] = p = os.path.join(out, f"heatmap_{which}.png")
        fig.savefig(p, dpi=90)
        plt.close(fig)
    rows = st.layer_summary()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * n_l + 2), 3.5))
    x = np.arange(n_l)
    bottom = np.zeros(n_l)
    for key, colour in (
        ("presence_only", "tab:red"),
        ("both", "tab:purple"),
        ("absence_only", "tab:blue"),
        ("noise", "lightgrey"),
    ):
        v = np.array([r[key] for r in rows])
        ax.bar(x, v, bottom=bottom, color=colour, label=key)
        bottom += v
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=90, fontsize=7)
    ax.set_ylabel("share of features")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    paths["layers"] = p = os.path.join(out, "layers.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    picks = sorted({0, n_l // 2, n_l - 1})
    for i in picks:
        ax.hist(
            st.auroc[st.layer_slice(i)].ravel(),
            bins=50,
            range=(0, 1),
            histtype="step",
            density=True,
            label=st.layers[i].name,
        )
    ax.axvline(0.5, color="k", lw=0.5)
    ax.set_xlabel("AUROC (feature as a one-vs-rest detector)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths["auroc_hist"] = p = os.path.join(out, "auroc_hist.png")
    fig.savefig(p, dpi=90)
    plt.close(fig)
    return paths


def _table_md(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = _fmt3
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def analyze(
    store: str | os.PathLike | FeatureStore,
    out: str | os.PathLike,
    split: str | None = "train",
    layers: str | Sequence[str] | None = None,
    bins: int = 64,
    alpha: float = 0.05,
    top_k: int = 10,
    sample_rows: int = 2048,
    batch_size: int = 2048,
) -> dict[str, Any]:
    """Per-feature discriminative analysis of ``store`` written as a report into ``out``.

    ``sample_rows`` is the size of the reservoir sample the bin edges come from; ``batch_size``
    the most rows per batch (a batch is also capped at 32 MiB as float64, so wide stores use
    fewer rows). See :mod:`deepfeat.analysis.stats` for the statistics and their approximation.
    Returns a summary dict (paths, per-layer rows, the noise rule).
    """
    t0 = time.perf_counter()
    out = os.fspath(out)
    check_int(top_k, "top_k", minimum=1, where="analyze")
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"The 'out' parameter of analyze must be a directory; {out!r} is a file.")
    # check every argument (store, split, layers, bins, ...) before creating ``out``
    st_obj, _ = check_arguments(store, split, layers, bins, alpha, batch_size, sample_rows)
    note = reduced_precision_note(st_obj.metadata, st_obj.path)
    if note:
        log.warning(note)
    check_writable(out, "analyze's output folder", directory=True)
    st = feature_statistics(
        st_obj, split=split, layers=layers, bins=bins, alpha=alpha, batch_size=batch_size, sample_rows=sample_rows
    )
    # every file is written into a staging folder and published at the end: a failure (disk full) leaves
    # no partial report (EnvironmentFault, exit status 4)
    with staged_directory(out, f"Writing the report into {out}") as stage:
        summary = _write_report(st, stage, out, split, bins, alpha, top_k, t0)
    summary["seconds"] = time.perf_counter() - t0
    log.info("analyze: report in %s (%.1f s)", summary["report"], summary["seconds"])
    return summary


def _write_report(
    st: FeatureStatistics, out: str, final_out: str, split: str | None, bins: int, alpha: float, top_k: int, t0: float
) -> dict[str, Any]:
    """Write the report's files into ``out`` (links and paths in it name ``final_out``)."""
    layer_rows = st.layer_summary()
    _write_csv(os.path.join(out, "layers.csv"), layer_rows)
    _write_parquet(os.path.join(out, "layers.parquet"), {k: [r[k] for r in layer_rows] for k in layer_rows[0]})
    for which in ("presence", "absence"):
        _write_csv(os.path.join(out, f"layer_class_{which}.csv"), _matrix_rows(st, st.layer_class_share(which)))
    top = [r for c in range(len(st.classes)) for r in st.top_features(c, top_k)]
    _write_csv(os.path.join(out, "top_features.csv"), top)
    _write_parquet(os.path.join(out, "features.parquet"), st.table())
    _write_csv(os.path.join(out, "thresholds.csv"), st.threshold_grid)
    # per class: the layers with the largest share of discriminative features
    share_any = st.layer_class_share("any")
    class_rows = []
    for j, c in enumerate(st.classes):
        order = np.argsort(-share_any[:, j], kind="stable")[:3]
        class_rows.append(
            {
                "class": c,
                "rows": int(st.n_per_class[j]),
                "discriminative_share": float(st.significant[:, j].mean()),
                "presence_share": float(st.presence[:, j].mean()),
                "absence_share": float(st.absence[:, j].mean()),
                "best_layers": ", ".join(f"{st.layers[i].name} ({share_any[i, j]:.2f})" for i in order),
            }
        )
    _write_csv(os.path.join(out, "classes.csv"), class_rows)
    figs = _figures(st, out)
    rule = st.noise_rule()
    noise = float(1 - st.significant.any(axis=1).mean())
    summary = {
        "store": st.store,
        "split": split,
        "rows": int(st.n_per_class.sum()),
        "classes": st.classes,
        "features": int(st.auroc.shape[0]),
        "bins": bins,
        "alpha": alpha,
        "noise_overall": noise,
        "auroc_error_bound_mean": float(st.auroc_error_bound.mean()),
        "auroc_error_bound_max": float(st.auroc_error_bound.max()),
        "noise_rule": rule,
        "layers": layer_rows,
        "per_class": class_rows,
    }
    rule_text = ""
    if rule:
        p, b = rule["paper"], rule["best"]
        rule_text = (
            f"Ternarisation thresholds on standardised values: the paper's (lo={p['lo']}, hi={p['hi']}) keeps "
            f"{p['retained']:.3f} of the discriminability (|AUROC-0.5| summed over significant feature x class "
            f"pairs) with {p['zero_share']:.2f} of the values set to 0; the best pair on the grid, "
            f"(lo={b['lo']}, hi={b['hi']}), keeps {b['retained']:.3f} with {b['zero_share']:.2f} zeros."
        )
    intro = (
        f"Store `{st.store}`, split `{split}`, {summary['rows']} rows, {len(st.classes)} classes, "
        f"{summary['features']} features in {len(st.layers)} layers. A (feature, class) is discriminative when "
        f"its Mann-Whitney q-value (Benjamini-Hochberg over all features x classes) is below {alpha}: by presence "
        f"when AUROC > 0.5, by absence when < 0.5. Overall noise (features significant for no class): "
        f"{noise:.3f}. Histogram statistics with {bins} bins per feature; AUROC error bound mean "
        f"{summary['auroc_error_bound_mean']:.2e}, max {summary['auroc_error_bound_max']:.2e} (0 where no bin "
        f"holds two different values: there the statistics are exact)."
    )
    md = [
        "# deepfeat analysis report",
        "",
        intro,
        "",
        "## Layers",
        "",
        _table_md(layer_rows),
        "",
        "![](layers.png)",
        "",
        "## Layer x class",
        "",
        "![](heatmap_presence.png)",
        "",
        "![](heatmap_absence.png)",
        "",
        "## Classes",
        "",
        _table_md(class_rows),
        "",
        "## Top features per class",
        "",
        _table_md(top),
        "",
        "## AUROC distributions",
        "",
        "![](auroc_hist.png)",
        "",
        "## Noise thresholds",
        "",
        rule_text,
        "",
        _table_md(st.threshold_grid),
        "",
    ]
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))

    def img(key: str) -> str:
        return H.img_file(figs[key], key)

    def tab(rows: list[dict[str, Any]]) -> str:
        return H.table(rows, digits=3)

    body = "".join(
        [
            H.paragraph(intro.replace("`", "")),  # the Markdown's code quotes read as literal backticks in HTML
            H.section("Layers", tab(layer_rows), img("layers")),
            H.section("Layer \u00d7 class", img("heatmap_presence"), img("heatmap_absence")),
            H.section("Classes", tab(class_rows)),
            H.section("Top features per class", tab(top)),
            H.section("AUROC distributions", img("auroc_hist")),
            H.section("Noise thresholds", H.paragraph(rule_text), tab(st.threshold_grid)),
        ]
    )
    H.write(
        os.path.join(out, "report.html"),
        H.page("deepfeat analysis report", body, subtitle=f"store {st.store} | split {split}"),
    )
    summary["report"] = os.path.join(final_out, "report.html")
    summary["seconds"] = time.perf_counter() - t0
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1, default=str)
    return summary

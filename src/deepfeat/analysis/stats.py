"""Per-feature discriminative statistics of a store, streaming (Garcia-Gasulla et al., arXiv 1703.01127).

For every (layer, feature, class) the feature is scored as a one-vs-rest detector of the class:

* **AUROC** = P(value of a class row > value of another row) + 0.5 P(tie). AUROC > 0.5 means the
  class is signalled by the feature's *presence* (high values), AUROC < 0.5 by its *absence*.
* **Mann-Whitney U** = AUROC * n_class * n_rest, two-sided p-value by the normal approximation
  with the tie correction and a 0.5 continuity correction (as ``scipy.stats.mannwhitneyu(...,
  method="asymptotic")``), then **Benjamini-Hochberg** q-values over all features x classes of
  all analysed layers. A (feature, class) is significant when ``q < alpha``.
* **Noise**: per layer, the share of features significant for no class.

How it streams (two passes over view 0 of the split, one bounded batch in memory at a time: at
most ``batch_size`` rows and at most 32 MiB as float64, see :func:`deepfeat.analysis.fne.batch_rows`):

1. per-feature count, mean, std (Chan merge, float64), min, max, and a uniform reservoir sample
   of ``sample_rows`` rows (kept in the store's dtype, which holds the values exactly); the fixed
   bin edges of each feature are the quantiles of its sample (equal-count bins, robust to the
   long right tails of ReLU features), or the midpoints between its distinct values when the
   sample has at most ``bins`` of them;
2. per (class, feature) histograms over those edges (int64 counts, classes x features x bins),
   and per (feature, bin) whether the bin holds more than one distinct value (each bin's first
   value is kept as a reference and every later value is compared with it, exactly).

The final statistics are computed in blocks of features, so no classes x features x bins
temporary larger than 32 MiB exists besides the counts themselves.

**The approximation.** The histogram statistics are the *exact* statistics of the values rounded to
their bin: values sharing a bin count as ties. Pairs of equal values are true ties, so only bins
that hold two *different* values can cause an error. Hence (a) a feature none of whose bins holds
two different values (e.g. every feature of the ternary FNE store, binary and constant features)
is analysed exactly, and its bound is exactly 0; (b) otherwise the AUROC error is bounded per
(feature, class) by ``0.5 * sum_b P_b N_b / (n_pos n_neg)`` over the bins *b* that hold two or more
distinct values (half the share of positive/negative pairs that fall in a common such bin),
reported as ``auroc_error_bound``. The test suite measures the actual error against the exact rank
computation on a real store.

**Noise thresholding rule.** For thresholds (lo, hi) on the standardised value ``z`` (the FNE
ternarisation), the *retained discriminability* is ``sum |AUROC_ternary - 0.5| / sum |AUROC - 0.5|``
over the significant (feature, class) pairs, where AUROC_ternary is the AUROC of the ternarised
feature (from the histograms, each bin assigned by the z of its centre). The data-driven rule
picks the pair on a grid with the highest retained discriminability; it is reported beside the
paper's (-0.25, 0.15).

Example:
    >>> st = feature_statistics("fm_all/", split="train")            # doctest: +SKIP
    >>> st.layer_summary()[0]["noise"]                                 # doctest: +SKIP
    0.42
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import progress
from ..errors import UsageError
from ..params import check_int, check_number, param_error
from ..store.reader import FeatureStore, LayerSpec, open_store
from . import fne as _fne
from .fne import (
    DEFAULT_THRESHOLDS,
    RunningStats,
    resolve_store_layers,
    split_batches,
)

log = logging.getLogger(__name__)

LO_GRID = (-1.0, -0.75, -0.5, -0.25, -0.1, 0.0)
HI_GRID = (0.0, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0)

#: numpy >= 1.25 has a fast ``np.add.at``: histogram batches are added in place (no second
#: classes x features x bins array per batch); older numpy uses ``np.bincount``.
_FAST_ADD_AT = tuple(int(v) for v in np.__version__.split(".")[:2]) >= (1, 25)


# ----------------------------------------------------------------------------- pure functions
def auroc_from_counts(P: np.ndarray, N: np.ndarray) -> np.ndarray:
    """AUROC from positive / negative counts over ordered levels (last axis); ties count 1/2."""
    P = np.asarray(P, dtype=np.float64)
    N = np.asarray(N, dtype=np.float64)
    below = np.cumsum(N, axis=-1) - N
    num = (P * (below + 0.5 * N)).sum(axis=-1)
    den = P.sum(axis=-1) * N.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0.5)


def mann_whitney_p(auroc: np.ndarray, n1: np.ndarray, n0: np.ndarray, tie_term: np.ndarray) -> np.ndarray:
    """Two-sided normal-approximation p of U = auroc*n1*n0; ``tie_term`` = sum over tied groups of t^3 - t."""
    from scipy.special import erfc

    n1 = np.asarray(n1, dtype=np.float64)
    n0 = np.asarray(n0, dtype=np.float64)
    n = n1 + n0
    u = auroc * n1 * n0
    mu = n1 * n0 / 2.0
    var = n1 * n0 / 12.0 * ((n + 1) - tie_term / np.maximum(n * (n - 1), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (np.abs(u - mu) - 0.5) / np.sqrt(np.where(var > 0, var, 1))
        p = np.clip(erfc(z / math.sqrt(2.0)), 0.0, 1.0)  # 2 * norm.sf(z)
    return np.where(var > 0, p, 1.0)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values of all entries of ``p`` (any shape), same shape."""
    flat = np.asarray(p, dtype=np.float64).ravel()
    m = flat.size
    if m == 0:
        return flat.reshape(np.shape(p))
    order = np.argsort(flat, kind="stable")
    ranked = flat[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out.reshape(np.shape(p))


def bin_edges(
    sample: np.ndarray, bins: int, minimum: np.ndarray | None = None, maximum: np.ndarray | None = None
) -> np.ndarray:
    """Inner bin edges per feature (features x (bins - 1), ascending, +inf padded) from a sample of rows.

    Edges are the distinct quantiles of the sample; a feature with at most ``bins`` distinct
    values in the sample gets edges at the midpoints between them (each value its own bin: exact
    statistics). Unused edge slots are filled with equal-width points between the feature's
    ``minimum`` and ``maximum`` over all rows (so that values the sample missed still spread out).
    Adding edges never merges two values, it can only separate them.
    """
    sample = np.asarray(sample)
    S, D = sample.shape
    m = bins - 1
    E = np.full((D, m), np.inf)
    # features in blocks: the float64 / sorted copies of the sample stay <= fne.BATCH_BYTES each
    step = max(1, _fne.BATCH_BYTES // (8 * max(1, S)))
    for a in range(0, D, step):
        blk = np.asarray(sample[:, a : a + step], dtype=np.float64)
        Q = np.quantile(blk, np.linspace(0, 1, bins + 1)[1:-1], axis=0).T  # d x m
        srt = np.sort(blk, axis=0)
        distinct = 1 + (np.diff(srt, axis=0) > 0).sum(axis=0)
        for i in range(blk.shape[1]):
            j = a + i
            if distinct[i] <= bins:
                u = np.unique(srt[:, i])
                e = (u[:-1] + u[1:]) / 2.0
            else:
                e = np.unique(Q[i])
            if len(e) < m and minimum is not None and maximum is not None and maximum[j] > minimum[j]:
                grid = np.linspace(minimum[j], maximum[j], m + 2)[1:-1]
                grid = grid[~np.isin(grid, e)]
                extra = (
                    grid[np.linspace(0, len(grid) - 1, min(len(grid), m - len(e))).round().astype(int)]
                    if len(grid)
                    else grid
                )
                e = np.unique(np.concatenate([e, extra]))
            E[j, : len(e)] = np.sort(e)[:m]
    return E


def bin_index(X: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value: the number of the feature's inner edges <= the value (vectorised binary search)."""
    X = np.asarray(X, dtype=np.float64)
    D, m = edges.shape
    k = max(1, math.ceil(math.log2(m + 1)))
    padded = np.full((D, 2**k - 1), np.inf)
    padded[:, :m] = edges
    flat = padded.ravel()
    off = (np.arange(D) * padded.shape[1])[None, :]
    idx = np.zeros(X.shape, dtype=np.int64)
    step = 2 ** (k - 1)
    while step >= 1:
        cand = idx + (step - 1)
        idx += step * (X >= flat[off + cand])
        step //= 2
    return idx


class Reservoir:
    """A uniform random sample of at most ``size`` rows of a stream (algorithm R, seeded).

    ``dtype`` is the dtype the rows are kept in: the store's dtype holds its values exactly
    (float16 takes a quarter of the memory of float64).
    """

    def __init__(self, size: int, dims: int, seed: int = 0, dtype: Any = np.float64) -> None:
        self.size = size
        self.rows = np.empty((size, dims), dtype=dtype)
        self.seen = 0
        self.rng = np.random.default_rng(seed)

    def update(self, X: np.ndarray) -> None:
        n = len(X)
        fill = min(n, max(0, self.size - self.seen))
        if fill:
            self.rows[self.seen : self.seen + fill] = X[:fill]
        if fill < n:
            t = self.seen + np.arange(fill, n)
            r = (self.rng.random(n - fill) * (t + 1)).astype(np.int64)
            hit = r < self.size
            self.rows[r[hit]] = X[fill:][hit]
        self.seen += n

    @property
    def sample(self) -> np.ndarray:
        return self.rows[: min(self.seen, self.size)]


# ----------------------------------------------------------------------------- result
@dataclass
class FeatureStatistics:
    """Per (feature, class) statistics; features are the chosen layers concatenated in order."""

    store: str
    split: str | None
    layers: list[LayerSpec]
    classes: list[str]
    n_per_class: np.ndarray
    bins: int
    alpha: float
    auroc: np.ndarray  #: features x classes
    auroc_error_bound: np.ndarray  #: features x classes
    pvalue: np.ndarray  #: features x classes
    qvalue: np.ndarray  #: features x classes (BH over all of them)
    mean: np.ndarray
    std: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    edges: np.ndarray | None = None  #: features x (bins - 1) inner bin edges
    threshold_grid: list[dict[str, float]] = field(default_factory=list)

    @property
    def layer_of(self) -> np.ndarray:
        return np.repeat(np.arange(len(self.layers)), [s.dims for s in self.layers])

    @property
    def feature_in_layer(self) -> np.ndarray:
        return np.concatenate([np.arange(s.dims) for s in self.layers])

    @property
    def significant(self) -> np.ndarray:
        return self.qvalue < self.alpha

    @property
    def presence(self) -> np.ndarray:
        return self.significant & (self.auroc > 0.5)

    @property
    def absence(self) -> np.ndarray:
        return self.significant & (self.auroc < 0.5)

    def layer_slice(self, i: int) -> slice:
        start = sum(s.dims for s in self.layers[:i])
        return slice(start, start + self.layers[i].dims)

    def layer_summary(self) -> list[dict[str, Any]]:
        """Per layer: shares of features discriminative by presence / absence / both / none (noise)."""
        rows = []
        pres, absn = self.presence, self.absence
        for i, spec in enumerate(self.layers):
            sl = self.layer_slice(i)
            p_any, a_any = pres[sl].any(axis=1), absn[sl].any(axis=1)
            rows.append(
                {
                    "layer": spec.name,
                    "features": spec.dims,
                    "presence": float(p_any.mean()),
                    "absence": float(a_any.mean()),
                    "both": float((p_any & a_any).mean()),
                    "presence_only": float((p_any & ~a_any).mean()),
                    "absence_only": float((a_any & ~p_any).mean()),
                    "noise": float((~p_any & ~a_any).mean()),
                    "classes_per_feature_presence": float(pres[sl].sum(axis=1).mean()),
                    "classes_per_feature_absence": float(absn[sl].sum(axis=1).mean()),
                    "mean_abs_effect": float(np.abs(self.auroc[sl] - 0.5).mean()),
                }
            )
        return rows

    def layer_class_share(self, which: str = "presence") -> np.ndarray:
        """layers x classes: share of the layer's features significant for the class by ``which``."""
        mask = {"presence": self.presence, "absence": self.absence, "any": self.significant}[which]
        return np.stack([mask[self.layer_slice(i)].mean(axis=0) for i in range(len(self.layers))])

    def top_features(self, class_index: int, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` features with the largest |AUROC - 0.5| for a class."""
        eff = np.abs(self.auroc[:, class_index] - 0.5)
        order = np.argsort(-eff, kind="stable")[:k]
        lo, fi = self.layer_of, self.feature_in_layer
        return [
            {
                "class": self.classes[class_index],
                "layer": self.layers[lo[j]].name,
                "feature": int(fi[j]),
                "auroc": float(self.auroc[j, class_index]),
                "qvalue": float(self.qvalue[j, class_index]),
                "kind": "presence" if self.auroc[j, class_index] > 0.5 else "absence",
            }
            for j in order
        ]

    def noise_rule(self) -> dict[str, Any]:
        """The paper's thresholds and the grid's best pair, with their retained discriminability."""
        if not self.threshold_grid:
            return {}
        best = max(self.threshold_grid, key=lambda r: r["retained"])
        paper = next((r for r in self.threshold_grid if (r["lo"], r["hi"]) == DEFAULT_THRESHOLDS), None)
        return {"paper": paper, "best": best}

    def table(self) -> dict[str, np.ndarray]:
        """Long table (one row per feature x class) as columns."""
        D, C = self.auroc.shape
        lo, fi = self.layer_of, self.feature_in_layer
        return {
            "layer": np.repeat(np.asarray([s.name for s in self.layers], dtype=object)[lo], C),
            "feature": np.repeat(fi, C),
            "class": np.tile(np.asarray(self.classes, dtype=object), D),
            "auroc": self.auroc.ravel(),
            "auroc_error_bound": self.auroc_error_bound.ravel(),
            "pvalue": self.pvalue.ravel(),
            "qvalue": self.qvalue.ravel(),
            "presence": self.presence.ravel(),
            "absence": self.absence.ravel(),
        }


# ----------------------------------------------------------------------------- the streaming computation
def check_arguments(
    store: str | os.PathLike | FeatureStore,
    split: str | None,
    layers: str | Sequence[str] | None,
    bins: int,
    alpha: float,
    batch_size: int,
    sample_rows: int,
) -> tuple[FeatureStore, list[LayerSpec]]:
    """Validate the arguments of :func:`feature_statistics` (raises UsageError); returns (store, layers)."""
    check_int(bins, "bins", minimum=2, where="analyze")
    check_number(alpha, "alpha", minimum=0, maximum=1, min_open=True, max_open=True, where="analyze")
    check_int(batch_size, "batch_size", minimum=1, where="analyze")
    check_int(sample_rows, "sample_rows", minimum=1, where="analyze")
    st = store if isinstance(store, FeatureStore) else open_store(store)
    specs = resolve_store_layers(st, layers, "analyze")
    if split is not None and split not in st.splits:
        raise param_error("split", f"a split of the store ({', '.join(st.splits) or 'none'}) or None", split, "analyze")
    return st, specs


def feature_statistics(
    store: str | os.PathLike | FeatureStore,
    split: str | None = "train",
    layers: str | Sequence[str] | None = None,
    bins: int = 64,
    alpha: float = 0.05,
    batch_size: int = 2048,
    sample_rows: int = 2048,
    seed: int = 0,
) -> FeatureStatistics:
    """Streaming per (feature, class) AUROC, Mann-Whitney p and BH q of view 0 of ``split``.

    ``batch_size`` is the most rows per batch; a batch is also capped at 32 MiB as float64
    (:func:`deepfeat.analysis.fne.batch_rows`). ``sample_rows`` is the size of the reservoir
    sample the bin edges come from. The histograms, AUROC, p, q and error bound do not depend
    on ``batch_size``; the mean and std (and through them the threshold grid) only up to
    floating-point rounding.
    """
    st, specs = check_arguments(store, split, layers, bins, alpha, batch_size, sample_rows)
    D = sum(s.dims for s in specs)
    # pass 1: moments, min, max, classes, reservoir sample (in the store's dtype: exact, smaller)
    rs = RunningStats(D)
    res = Reservoir(sample_rows, D, seed, dtype=_exact_dtype(st.dtype))
    classes: set[str] = set()
    seen = 0
    for X, y in progress.track(
        split_batches(st, specs, split, batch_size), "analyze: pass 1 of 2", unit="rows", size=lambda b: len(b[1])
    ):
        seen += len(y)
        keep = np.asarray([v is not None for v in y], dtype=bool)
        Xk = X if keep.all() else X[keep]
        rs.update(Xk)
        res.update(Xk)
        classes.update(v for v in y if v is not None)
        del X, Xk
    cls = sorted(classes)
    if len(cls) < 2 or rs.n == 0:
        raise UsageError(f"analyze needs labelled rows of at least 2 classes in split {split!r}; found {len(cls)}.")
    # pass 2: per-class histograms, and which (feature, bin) holds two different values
    C = len(cls)
    index = {c: i for i, c in enumerate(cls)}
    counts = np.zeros(C * D * bins, dtype=np.int64)
    edges = bin_edges(res.sample, bins, rs.min_, rs.max_)
    del res
    ref = np.full(D * bins, np.nan)  # the first value seen in each (feature, bin)
    multi = np.zeros(D * bins, dtype=bool)  # the (feature, bin) holds two different values
    feat_off = (np.arange(D) * bins)[None, :]
    for X, y in progress.track(
        split_batches(st, specs, split, batch_size),
        "analyze: pass 2 of 2",
        total=seen,
        unit="rows",
        size=lambda b: len(b[1]),
    ):
        keep = np.asarray([v is not None for v in y], dtype=bool)
        if not keep.any():
            continue
        Xk = X if keep.all() else X[keep]
        del X
        ci = np.asarray([index[v] for v in y[keep]], dtype=np.int64)
        fb = bin_index(Xk, edges)
        fb += feat_off  # (feature, bin) index
        r = ref[fb]
        new = np.isnan(r)
        if new.any():
            ref[fb[new]] = Xk[new]
            r = ref[fb]
        multi[fb[Xk != r]] = True
        del r, new
        fb += (ci * D * bins)[:, None]  # (class, feature, bin) index
        if _FAST_ADD_AT:
            np.add.at(counts, fb.ravel(), 1)
        else:
            counts += np.bincount(fb.ravel(), minlength=C * D * bins)
        del fb, Xk
    del ref
    H = counts.reshape(C, D, bins)
    n_c = H[:, 0, :].sum(axis=1)  # C
    n = int(n_c.sum())
    n1 = n_c[None, :].astype(np.float64)
    n0 = n - n1
    multi = multi.reshape(D, bins)
    auc = np.empty((D, C))
    bound = np.empty((D, C))
    tie = np.empty((D, 1))
    for sl in _feature_blocks(D, C * bins):
        P = np.transpose(H[:, sl, :], (1, 0, 2))  # d x C x B
        total = P.sum(axis=1)  # d x B
        N = total[:, None, :] - P
        auc[sl] = auroc_from_counts(P, N)
        shared = P.astype(np.float64) * N
        shared *= multi[sl, None, :]  # ties of equal values are exact
        bound[sl] = 0.5 * shared.sum(axis=-1) / np.maximum(n1 * n0, 1)
        tie[sl] = (total.astype(np.float64) ** 3 - total).sum(axis=1)[:, None]
        del P, N, shared
    p = mann_whitney_p(auc, n1, n0, tie)
    q = benjamini_hochberg(p)
    result = FeatureStatistics(
        store=st.path,
        split=split,
        layers=specs,
        classes=cls,
        n_per_class=n_c,
        bins=bins,
        alpha=alpha,
        auroc=auc,
        auroc_error_bound=bound,
        pvalue=p,
        qvalue=q,
        mean=rs.mean_,
        std=rs.std,
        minimum=rs.min_,
        maximum=rs.max_,
        edges=edges,
    )
    result.threshold_grid = _threshold_grid(H, result)
    log.info("analyze: %d rows, %d features, %d classes, %d significant pairs", n, D, C, int(result.significant.sum()))
    return result


def _exact_dtype(dtype: str) -> Any:
    """The store's dtype when float64 values read from it round-trip through it exactly, else float64."""
    return np.dtype(dtype) if dtype in ("float16", "float32", "int8") else np.dtype(np.float64)


def _feature_blocks(D: int, per_feature: int) -> list[slice]:
    """Slices of features such that a float64 array of ``per_feature`` values per feature is <= fne.BATCH_BYTES."""
    step = max(1, _fne.BATCH_BYTES // (8 * max(1, per_feature)))
    return [slice(a, min(a + step, D)) for a in range(0, D, step)]


def _ternary_groups(c: np.ndarray, idx_lo: np.ndarray, idx_hi: np.ndarray) -> np.ndarray:
    """Cumulative counts (..., B + 1) -> counts of the three ternary levels (..., 3)."""
    a = np.take_along_axis(c, idx_lo, -1)[..., 0]
    b = np.take_along_axis(c, idx_hi, -1)[..., 0]
    return np.stack([a, b - a, c[..., -1] - b], axis=-1)


def _threshold_grid(H: np.ndarray, r: FeatureStatistics) -> list[dict[str, float]]:
    """Retained discriminability of ternarisation thresholds (see the module docstring).

    ``H`` is the classes x features x bins histogram; it is processed in blocks of features.
    """
    C, D, B = H.shape
    sig = r.significant
    full = np.abs(r.auroc - 0.5)
    denom = float(full[sig].sum())
    inner = np.clip(r.edges, r.minimum[:, None], r.maximum[:, None])  # inf padding -> max
    lower = np.concatenate([r.minimum[:, None], inner], axis=1)
    upper = np.concatenate([inner, r.maximum[:, None]], axis=1)
    centres = (lower + upper) / 2.0  # D x B
    std = np.where(r.std > 0, r.std, 1.0)
    z = np.where(r.std[:, None] > 0, (centres - r.mean[:, None]) / std[:, None], 0.0)
    pairs = [(lo, hi) for lo in LO_GRID for hi in HI_GRID if lo <= hi]
    kept: list[list[np.ndarray]] = [[] for _ in pairs]  # |AUROC_t - 0.5| of the significant pairs
    zeros = np.zeros(len(pairs))
    totals = np.zeros(len(pairs))
    for sl in _feature_blocks(D, C * (B + 1)):
        P = np.transpose(H[:, sl, :], (1, 0, 2))  # d x C x B
        d = P.shape[0]
        N = P.sum(axis=1)[:, None, :] - P
        cP = np.concatenate([np.zeros((d, C, 1)), np.cumsum(P, axis=-1)], axis=-1)
        cN = np.concatenate([np.zeros((d, C, 1)), np.cumsum(N, axis=-1)], axis=-1)
        del P, N
        zb = z[sl]
        for i, (lo, hi) in enumerate(pairs):
            k_lo = (zb < lo).sum(axis=1)  # bins ternarised to -1 (z increases with the bin)
            k_hi = (zb <= hi).sum(axis=1)  # bins up to here are -1 or 0
            idx_lo = np.broadcast_to(k_lo[:, None, None], (d, C, 1))
            idx_hi = np.broadcast_to(k_hi[:, None, None], (d, C, 1))
            gP = _ternary_groups(cP, idx_lo, idx_hi)
            t = np.abs(auroc_from_counts(gP, _ternary_groups(cN, idx_lo, idx_hi)) - 0.5)
            kept[i].append(t[sig[sl]])
            zeros[i] += gP[..., 1].sum()  # integer-valued float64 sums: exact, order-free
            totals[i] += gP.sum()
    out = []
    for i, (lo, hi) in enumerate(pairs):
        retained = float(np.concatenate(kept[i]).sum() / denom) if denom > 0 else 0.0
        out.append({"lo": lo, "hi": hi, "retained": retained, "zero_share": float(zeros[i] / max(totals[i], 1))})
    return out

"""Near-duplicates in a store, and the ones that leak across splits.

Every pair of rows (view 0) whose cosine similarity reaches ``threshold`` is found by an exact
blockwise scan: the normalised vectors are streamed once out of the store into a scratch file
(in the store's dtype), then scanned in pairs of blocks sized by the memory budget, so memory
never holds more than two blocks and their similarities. Stores too large for the O(N²) scan
(``method="auto"`` above :data:`EXACT_MAX_ROWS` rows) are searched by partitions instead, as
SemDeDup does: spherical k-means cuts the rows into partitions that average a quarter of a block,
each row joins its :data:`PARTITION_PROBES` nearest partitions, and every partition is scanned
exactly. Pairs become groups (connected components, union-find). A val/test row with a
near-duplicate in train is a *leak*: its accuracy measures memory, not generalisation.

Written to ``out``:

* ``pairs.csv`` -- ``path_a, path_b, id_a, id_b, split_a, split_b, similarity``: cross-split pairs
  first, then by similarity;
* ``groups.csv`` -- ``group, size, splits, id, path, split, label``: one line per member of each group;
* ``report.html`` -- the groups as thumbnails side by side, cross-split leaks first.

Example:
    >>> s = duplicates("feats/", "dups/")                 # doctest: +SKIP
    >>> s.pairs, s.groups, s.leaks                         # doctest: +SKIP
    (412, 377, {'test': 31})
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import progress
from ..params import check_choice, check_int, check_number
from ..reports.duplicates_page import write_duplicates_page
from ..store.reader import FeatureStore, open_store
from ..units import format_size, parse_size
from .blocks import DEFAULT_MEMORY_BUDGET, Refine, all_pairs, pair_block_rows
from .index import RowFile, build_index
from .pixels import DEFAULT_PIXEL_THRESHOLD, Pyramids, pair_similarity, pixel_pairs, pyramids, row_images

log = logging.getLogger(__name__)

#: cosine similarity from which two rows are near-duplicates (measured in docs/SEARCH.md: recall of
#: planted byte copies, JPEG re-encodes and downscales of Fashion-MNIST against the pairs it also reports)
DEFAULT_THRESHOLD = 0.95
#: the split that the others may leak into
TRAIN_SPLIT = "train"
#: most groups drawn as thumbnails in report.html (the CSV files hold them all)
REPORT_GROUPS = 200
#: how pairs are searched: ``exact`` (every pair, blockwise), ``partitioned`` (k-means partitions, exact within
#: each), ``auto`` (exact up to :data:`EXACT_MAX_ROWS` rows)
METHODS = ("auto", "exact", "partitioned")
#: columns of pairs.csv: ``similarity`` is the features' cosine, ``pixel_similarity`` the thumbnails'
#: correlation (empty when an image was not read), ``found_by`` ``features``, ``pixels`` or ``both``
PAIRS_COLUMNS = ("path_a", "path_b", "id_a", "id_b", "split_a", "split_b", "similarity", "pixel_similarity", "found_by")
#: rows up to which ``method="auto"`` scans every pair (about 2·10¹⁰ pairs: minutes on 2 cores at 1,280 dims)
EXACT_MAX_ROWS = 200_000
#: partitions each row joins (its nearest centroids): a pair is compared when the two rows share one
PARTITION_PROBES = 2
#: Lloyd iterations of the spherical k-means that makes the partitions
KMEANS_ITERATIONS = 10


@dataclass
class DuplicatesSummary:
    """What :func:`duplicates` found and wrote."""

    rows: int
    pairs: int
    groups: int
    threshold: float
    layer: str
    cross_split_pairs: int = 0
    leaks: dict[str, int] = field(default_factory=dict)  #: split -> rows with a near-duplicate in train
    leaked_ids: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    block_rows: int = 0
    method: str = "exact"
    partitions: int = 0
    pixel_threshold: float | None = None  #: None: the pixel check did not run
    pixel_pairs: int = 0  #: pairs found by their pixels that the features missed
    unread: dict[str, str] = field(default_factory=dict)  #: path -> why the pixel check could not read it

    def line(self) -> str:
        leaks = ", ".join(f"{n:,} {s}" for s, n in self.leaks.items()) or "none"
        by = f"cosine >= {self.threshold:g}"
        if self.pixel_threshold is not None:
            by += f", or pixels >= {self.pixel_threshold:g}: {self.pixel_pairs:,} pairs by pixels only"
            if self.unread:
                by += f"; {len(self.unread):,} images unread, compared by features only"
        return (
            f"{self.pairs:,} near-duplicate pairs ({by}) in {self.groups:,} groups "
            f"among {self.rows:,} rows; {self.cross_split_pairs:,} pairs cross splits; inputs with a "
            f"near-duplicate in {TRAIN_SPLIT}: {leaks} ({self.seconds:.1f} s"
            + (f", {self.partitions:,} k-means partitions" if self.method == "partitioned" else "")
            + ")"
        )


class UnionFind:
    """Disjoint sets over 0..n-1 (path halving, union by size)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = int(parent[a])
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


class _Rows:
    """Some rows of a :class:`RowFile` (ascending), sliced like an array: what :func:`all_pairs` scans."""

    def __init__(self, file: RowFile, rows: np.ndarray) -> None:
        self.file, self.rows = file, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: slice) -> np.ndarray:
        return self.file.take(self.rows[key])


def _in_partition(refine: Refine, members: np.ndarray) -> Refine:
    """``refine`` of rows of the whole file, applied to pairs of one partition's ``members``."""
    return lambda i, j, s: refine(members[i], members[j], s)


def spherical_kmeans(X: np.ndarray, k: int, iterations: int = KMEANS_ITERATIONS, seed: int = 0) -> np.ndarray:
    """``k`` unit-norm centroids of the normalised rows of ``X`` (Lloyd's algorithm on the sphere)."""
    rng = np.random.default_rng(seed)
    C = X[rng.choice(len(X), size=k, replace=False)].copy()
    for _ in range(iterations):
        home = np.argmax(X @ C.T, axis=1)
        sums = np.zeros_like(C)
        np.add.at(sums, home, X)
        counts = np.bincount(home, minlength=k)
        empty = counts == 0
        sums[empty] = X[rng.choice(len(X), size=int(empty.sum()), replace=False)]  # reseed empty partitions
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        C = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
    return C


def plan_partitions(n: int, dims: int, budget: int) -> tuple[int, int, int]:
    """(partitions, k-means sample rows, rows per block) of a partitioned search of ``n`` rows.

    A partition averages a quarter of a block (each row joins :data:`PARTITION_PROBES` of them and
    k-means partitions are uneven); the k-means sample, float32, and its similarities to the
    centroids fit a quarter of the budget.
    """
    block = pair_block_rows(dims, budget)
    sample = int(min(n, max(16, budget // 4 // (4 * dims + 4 * max(1, 4 * n // block)))))
    partitions = int(max(1, min(sample, -(-4 * n // block))))
    return partitions, sample, block


def partitioned_pairs(
    vectors: RowFile, threshold: float, budget: int, task: Any = None, seed: int = 0, refine: Refine | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Pairs ``i < j`` at inner product >= ``threshold``, searched within k-means partitions of the
    rows (normalised, in a :class:`RowFile`): (i, j, similarity, partitions).

    Each row joins its :data:`PARTITION_PROBES` nearest partitions; a partition is scanned exactly
    (blockwise if it outgrew a block), so a pair is found whenever its rows share a partition. Memory:
    the k-means sample, one block of rows with its similarities to the centroids, one partition at a
    time, and the membership lists (up to 32 bytes per row and probe while they are sorted).
    """
    n, dims = vectors.shape
    k, sample_rows, block = plan_partitions(n, dims, budget)
    rng = np.random.default_rng(seed)
    sample = vectors.take(np.sort(rng.choice(n, size=sample_rows, replace=False)))
    centroids = spherical_kmeans(sample, k, seed=seed)
    del sample
    probes = min(PARTITION_PROBES, k)
    member = np.empty((n, probes), dtype=np.int32)
    step = max(16, int(budget // 4 // (4 * (dims + k))))
    for s in range(0, n, step):
        S = np.asarray(vectors[s : s + step], dtype=np.float32) @ centroids.T
        member[s : s + len(S)] = np.argpartition(-S, probes - 1, axis=1)[:, :probes] if probes < k else np.arange(k)[None, :]
    rows = np.repeat(np.arange(n, dtype=np.int64), probes)
    part = member.ravel()
    del member
    order = np.argsort(part, kind="stable")  # rows ascending within each partition
    rows, part = rows[order], part[order]
    bounds = np.searchsorted(part, np.arange(k + 1))
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    log.info(
        "duplicates: %d partitions (k-means on %d rows), largest %d rows, blocks of %d",
        k,
        sample_rows,
        int(np.diff(bounds).max()),
        block,
    )
    for p in range(k):
        members = rows[bounds[p] : bounds[p + 1]]
        if len(members) > 1:
            local = None if refine is None else _in_partition(refine, members)
            ii, jj, ss = all_pairs(_Rows(vectors, members), threshold, block, refine=local)
            found_i.append(members[ii])
            found_j.append(members[jj])
            found_s.append(ss)
        if task is not None:
            task.update(len(members) / probes)
    if not found_i:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), k
    ii, jj, ss = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_s)
    _, first = np.unique(ii * n + jj, return_index=True)  # a pair found in two shared partitions, once
    return ii[first], jj[first], ss[first], k


def duplicates(
    store: str | os.PathLike | FeatureStore,
    out: str | os.PathLike,
    layer: str = "pre_logits",
    threshold: float = DEFAULT_THRESHOLD,
    splits: Sequence[str] | str | None = None,
    memory_budget: int | str = DEFAULT_MEMORY_BUDGET,
    report: bool = True,
    method: str = "auto",
    pixels: bool = True,
    pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD,
    workers: int | None = None,
) -> DuplicatesSummary:
    """Find near-duplicate rows of a store (cosine similarity >= ``threshold`` on ``layer``).

    Args:
        store: a store directory or an open :class:`~deepfeat.store.reader.FeatureStore`.
        out: directory for ``pairs.csv``, ``groups.csv`` and ``report.html`` (created; files replaced).
        layer: the stored layer compared (view 0 of every row).
        threshold: cosine similarity in (0, 1] from which two rows are near-duplicates.
        splits: only rows of these splits (a list or ``"train,test"``; default: every row).
        memory_budget: bytes (or ``"1GiB"``) of vectors and similarities held at a time.
        report: write ``report.html`` (thumbnails of each group's source images).
        method: ``exact`` (every pair), ``partitioned`` (k-means partitions, exact within each: pairs
            whose rows fall in no common partition are missed) or ``auto`` (exact up to
            :data:`EXACT_MAX_ROWS` rows); see :data:`METHODS`.
        pixels: also read every row's image and report the pairs whose thumbnails correlate at
            >= ``pixel_threshold`` at the finest resolution both hold: JPEG re-encodes and
            downscales that the features miss (:mod:`deepfeat.search.pixels`). Rows whose image
            cannot be read are compared by features only and listed in ``unread.csv``.
        pixel_threshold: correlation in (0, 1] from which two images are copies by their pixels.
        workers: processes that read the images for the pixel check (default: one per core).

    Example:
        >>> s = duplicates("feats/", "dups/", threshold=0.95)   # doctest: +SKIP
        >>> print(s.line())                                      # doctest: +SKIP
    """
    threshold = check_number(threshold, "threshold", minimum=0, maximum=1, min_open=True, where="duplicates")
    pixel_threshold = check_number(
        pixel_threshold, "pixel_threshold", minimum=0, maximum=1, min_open=True, where="duplicates"
    )
    check_int(workers, "workers", minimum=1, where="duplicates", optional=True)
    budget = parse_size(memory_budget, "memory_budget")
    check_choice(method, "method", METHODS, where="duplicates")
    if isinstance(splits, str):
        splits = [s.strip() for s in splits.split(",") if s.strip()]
    st = store if isinstance(store, FeatureStore) else open_store(store)
    spec = st.layer(layer)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    scratch = os.path.join(out, f".vectors-{os.getpid()}")
    pixel_scratch = os.path.join(out, f".pixels-{os.getpid()}")
    try:
        idx = build_index(st, scratch, layer=layer, kind="exact", splits=splits, memory_budget=budget, overwrite=True)
        n = idx.rows
        resolved = method if method != "auto" else ("exact" if n <= EXACT_MAX_ROWS else "partitioned")
        block = min(n, pair_block_rows(spec.dims, budget))
        partitions = 0
        log.info(
            "duplicates: %d rows of %s, %s, blocks of %d rows (%s budget)", n, layer, resolved, block, format_size(budget)
        )
        if resolved == "exact":
            with progress.task("duplicates", total=n * (n + 1) / 2, unit="pair") as task:
                ii, jj, ss = all_pairs(idx.blocks, threshold, block, task)
        else:
            with progress.task("duplicates (partitioned)", total=n, unit="row") as task:
                ii, jj, ss, partitions = partitioned_pairs(idx.blocks, threshold, budget, task)
        meta = idx.columns()
        pyr = None
        if pixels:
            _, paths, digests = row_images(st, ids=meta["id"])
            pyr, by_pixels = _pixel_pass(paths, digests, pixel_scratch, pixel_threshold, resolved, budget, workers)
            ii, jj, ss, pixel_sim, found_by = _merge(idx.blocks, pyr, (ii, jj, ss), by_pixels)
        else:
            pixel_sim, found_by = np.full(len(ii), np.nan, np.float32), np.full(len(ii), "features", dtype=object)
        del idx
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(pixel_scratch, ignore_errors=True)
    summary = _summarise(meta, ii, jj, ss, threshold, layer, n)
    summary.block_rows, summary.method, summary.partitions = block, resolved, partitions
    if pyr is not None:
        summary.pixel_threshold = pixel_threshold
        summary.pixel_pairs = int(sum(f == "pixels" for f in found_by))
        summary.unread = {meta["path"][r] or meta["id"][r]: why for r, why in pyr.unread.items()}
    summary.files = _write(out, meta, ii, jj, ss, (pixel_sim, found_by), summary, report, store_path=st.path)
    summary.seconds = time.perf_counter() - t0
    log.info("duplicates: %s", summary.line())
    return summary


def _pixel_pass(
    paths: list[str | None],
    digests: list[str | None],
    folder: str,
    threshold: float,
    method: str,
    budget: int,
    workers: int | None,
) -> tuple[Pyramids, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Thumbnail pyramids of every row's image and the pairs that are copies by their pixels."""

    def search(vectors: RowFile, low: float, refine: Refine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows, dims = vectors.shape
        if method == "exact":
            block = min(rows, pair_block_rows(dims, budget))
            with progress.task("duplicates (pixels)", total=rows * (rows + 1) / 2, unit="pair") as task:
                return all_pairs(vectors, low, max(1, block), task, refine=refine)
        with progress.task("duplicates (pixels, partitioned)", total=rows, unit="row") as task:
            return partitioned_pairs(vectors, low, budget, task, refine=refine)[:3]

    with progress.task("thumbnails", total=len(paths), unit="img") as task:
        pyr = pyramids(paths, folder, workers=workers, task=task, sha256=digests)
    return pyr, pixel_pairs(pyr, threshold, search=search)


def _merge(
    vectors: RowFile,
    pyr: Pyramids,
    by_features: tuple[np.ndarray, np.ndarray, np.ndarray],
    by_pixels: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The union of the pairs found by features and by pixels: (i, j, feature cosine, pixel correlation,
    found by ``features`` / ``pixels`` / ``both``), each pair once. The pixel correlation is measured for
    the pairs found by the features; the pixel pairs bring their own."""
    fi, fj, fs = by_features
    pi, pj, ps = by_pixels
    n = max(len(vectors), 1)
    fkey, pkey = fi * n + fj, pi * n + pj
    only_pixels = ~np.isin(pkey, fkey)
    oi, oj = pi[only_pixels], pj[only_pixels]
    os_ = np.empty(len(oi), np.float32)
    for s in range(0, len(oi), 4096):  # the feature cosine of the pairs the features missed
        A, B = vectors.take(oi[s : s + 4096]), vectors.take(oj[s : s + 4096])
        os_[s : s + 4096] = np.minimum(1.0, np.einsum("ij,ij->i", A, B))
    ii, jj = np.concatenate([fi, oi]), np.concatenate([fj, oj])
    ss = np.concatenate([fs.astype(np.float32), os_])
    found_by = np.array(["features"] * len(fi) + ["pixels"] * len(oi), dtype=object)
    found_by[: len(fi)][np.isin(fkey, pkey)] = "both"
    pixel_sim = np.concatenate([pair_similarity(pyr, fi, fj), ps[only_pixels].astype(np.float32)])
    return ii, jj, ss, pixel_sim, found_by


def _groups(n: int, ii: np.ndarray, jj: np.ndarray) -> list[list[int]]:
    uf = UnionFind(n)
    for a, b in zip(ii.tolist(), jj.tolist()):
        uf.union(a, b)
    members: dict[int, list[int]] = {}
    for r in sorted(set(ii.tolist()) | set(jj.tolist())):
        members.setdefault(uf.find(r), []).append(r)
    return list(members.values())


def _summarise(
    meta: dict[str, list], ii: np.ndarray, jj: np.ndarray, ss: np.ndarray, threshold: float, layer: str, n: int
) -> DuplicatesSummary:
    split = meta["split"]
    cross = sum(split[a] != split[b] for a, b in zip(ii.tolist(), jj.tolist()))
    leaked: dict[str, set[int]] = {}
    for a, b in zip(ii.tolist(), jj.tolist()):
        for x, y in ((a, b), (b, a)):
            if split[y] == TRAIN_SPLIT and split[x] not in (TRAIN_SPLIT, None, ""):
                leaked.setdefault(split[x], set()).add(x)
    return DuplicatesSummary(
        rows=n,
        pairs=len(ii),
        groups=len(_groups(n, ii, jj)),
        threshold=threshold,
        layer=layer,
        cross_split_pairs=int(cross),
        leaks={s: len(v) for s, v in sorted(leaked.items())},
        leaked_ids={s: sorted(meta["id"][r] for r in v) for s, v in sorted(leaked.items())},
    )


def _write(
    out: str,
    meta: dict[str, list],
    ii: np.ndarray,
    jj: np.ndarray,
    ss: np.ndarray,
    by_pixels: tuple[np.ndarray, np.ndarray],
    summary: DuplicatesSummary,
    report: bool,
    store_path: str,
) -> dict[str, str]:
    split = meta["split"]
    pixel_sim, found_by = by_pixels
    strength = np.fmax(ss, pixel_sim)  # the closer of the two measures orders pairs and groups
    cross = np.array([split[a] != split[b] for a, b in zip(ii.tolist(), jj.tolist())], dtype=bool)
    order = np.lexsort((jj, ii, -strength, ~cross)) if len(ii) else np.zeros(0, np.int64)
    files = {"pairs.csv": os.path.join(out, "pairs.csv"), "groups.csv": os.path.join(out, "groups.csv")}
    with open(files["pairs.csv"] + ".tmp", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(PAIRS_COLUMNS)
        for k in order.tolist():
            a, b = int(ii[k]), int(jj[k])
            w.writerow(
                [
                    meta["path"][a],
                    meta["path"][b],
                    meta["id"][a],
                    meta["id"][b],
                    split[a] or "",
                    split[b] or "",
                    f"{float(ss[k]):.6f}",
                    "" if np.isnan(pixel_sim[k]) else f"{float(pixel_sim[k]):.6f}",
                    found_by[k],
                ]
            )
    os.replace(files["pairs.csv"] + ".tmp", files["pairs.csv"])
    if summary.unread:
        files["unread.csv"] = os.path.join(out, "unread.csv")
        with open(files["unread.csv"] + ".tmp", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "reason"])
            w.writerows(sorted(summary.unread.items()))
        os.replace(files["unread.csv"] + ".tmp", files["unread.csv"])
    elif os.path.exists(os.path.join(out, "unread.csv")):
        os.remove(os.path.join(out, "unread.csv"))  # from an earlier run into this folder
    groups = _ordered_groups(meta, ii, jj, strength, summary.rows)
    with open(files["groups.csv"] + ".tmp", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "size", "splits", "id", "path", "split", "label"])
        for g, (members, _best) in enumerate(groups, 1):
            splits_text = ",".join(sorted({split[r] or "" for r in members}))
            for r in members:
                w.writerow(
                    [g, len(members), splits_text, meta["id"][r], meta["path"][r], split[r] or "", meta["label"][r] or ""]
                )
    os.replace(files["groups.csv"] + ".tmp", files["groups.csv"])
    if report:
        files["report.html"] = write_duplicates_page(os.path.join(out, "report.html"), meta, groups, summary, store_path)
    return files


def _ordered_groups(
    meta: dict[str, list], ii: np.ndarray, jj: np.ndarray, ss: np.ndarray, n: int
) -> list[tuple[list[int], float]]:
    """Groups as (members, best similarity): groups that cross splits first, then larger, then closer."""
    best: dict[int, float] = {}
    for a, b, s in zip(ii.tolist(), jj.tolist(), ss.tolist()):
        best[a] = max(best.get(a, -1.0), s)
        best[b] = max(best.get(b, -1.0), s)
    split = meta["split"]
    out = []
    for members in _groups(n, ii, jj):
        members = sorted(members, key=lambda r: (split[r] != TRAIN_SPLIT, split[r] or "", meta["path"][r] or ""))
        out.append((members, max(best[r] for r in members)))
    out.sort(key=lambda g: (len({split[r] for r in g[0]}) == 1, -len(g[0]), -g[1]))
    return out

"""Search benchmarks: the near-duplicate threshold on planted duplicates, and the index on a synthetic store.

``thresholds``: real Fashion-MNIST images plus planted duplicates of some of them (byte copies, JPEG
re-encodes at quality 90, 75 and 40, downscales to 3/4 and 1/2 of the side), placed in train or test;
extracts them with the bundled efficientnet_lite0 (fp32) and prints, per cosine threshold, the recall
of each kind of planted pair and the precision of every reported pair (a pair is true when both
rows are copies of one original, or byte-identical files of Fashion-MNIST itself); then the recall at
``--default`` of the planted files whose short side is at least the model's resize target (input size /
crop_pct: the preprocessing only shrinks them) and of those below it (it enlarges them).

    python benchmarks/search.py thresholds [--per-class 100] [--planted 80] [--input-size 224]

``photos``: the same on scikit-image's sample photos and their quadrants (distinct look-alike originals).

    python benchmarks/search.py photos

``ood``: the far-from-training threshold of ``predict --neighbors``: the nearest-training similarity
of Fashion-MNIST test images (in domain) and of photos (out of domain) against an index of
Fashion-MNIST train.

    python benchmarks/search.py ood [--per-class 100]

``index``: a synthetic store of N rows x D dims (float16, written through the store's own writer,
clustered vectors with planted near-duplicates): index build time and peak memory, recall@10 of
the index against exact search, queries/s of both, and the duplicates scan on it.

    python benchmarks/search.py index [--rows 200000] [--dims 1280] [--queries 1000] [--budget 1GiB]

``fm``: the whole of Fashion-MNIST (70,000 images) extracted once (reused with ``--store``), then
``duplicates`` over it in a fresh process: time, peak RSS, pairs, groups, train/test leaks, and how
many of the reported pairs are byte-identical files.

    python benchmarks/search.py fm [--store st70k] [--input-size 96] [--method exact partitioned]

All print the CPU model and flags and the load average first. Each measurement runs in a fresh subprocess (peak RSS =
ru_maxrss of that process).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("copy", "jpeg90", "jpeg75", "jpeg40", "down75", "down50")


def cpu_line() -> str:
    model, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"CPU: {model}, {os.cpu_count()} cores visible, flags: {' '.join(simd) or 'none of avx2/avx512'}"


# ----------------------------------------------------------------------------- thresholds
def plant(root: str, n: int, seed: int) -> dict[str, tuple[str, str]]:
    """Planted copies: {planted path: (kind, original path)}."""
    from PIL import Image

    rng = random.Random(seed)
    originals = sorted(p for p in glob.glob(f"{root}/*/*/*.png") if not os.path.basename(p).startswith("planted_"))
    out = {}
    for kind in KINDS:
        for src in rng.sample(originals, n):
            split = rng.choice(["train", "test"])
            cls = os.path.basename(os.path.dirname(src))
            stem = os.path.splitext(os.path.basename(src))[0]
            folder = os.path.join(root, split, cls)
            os.makedirs(folder, exist_ok=True)
            im = Image.open(src)
            if kind == "copy":
                dst = os.path.join(folder, f"planted_{kind}_{stem}.png")
                shutil.copyfile(src, dst)
            elif kind.startswith("jpeg"):
                dst = os.path.join(folder, f"planted_{kind}_{stem}.jpg")
                im.save(dst, quality=int(kind[4:]))
            else:
                side = max(1, round(im.width * int(kind[4:]) / 100))
                dst = os.path.join(folder, f"planted_{kind}_{stem}.png")
                im.resize((side, side), Image.BILINEAR).save(dst)
            out[dst] = (kind, src)
    return out


PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "coins",
    "moon",
    "page",
    "text",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "brick",
    "grass",
    "gravel",
    "colorwheel",
    "clock",
    "cell",
)


def write_photos(root: str) -> None:
    """scikit-image's sample photos and the four quadrants of each (distinct, look-alike originals) as PNGs."""
    import numpy as np
    from PIL import Image
    from skimage import data

    for i, name in enumerate(PHOTOS):
        a = getattr(data, name)()
        a = np.stack([a] * 3, axis=-1) if a.ndim == 2 else a[..., :3]
        split = "train" if i % 2 == 0 else "test"
        os.makedirs(os.path.join(root, split, name), exist_ok=True)
        h, w = a.shape[:2]
        crops = {
            "full": a,
            "q1": a[: h // 2, : w // 2],
            "q2": a[: h // 2, w // 2 :],
            "q3": a[h // 2 :, : w // 2],
            "q4": a[h // 2 :, w // 2 :],
        }
        for key, c in crops.items():
            Image.fromarray(np.ascontiguousarray(c)).save(os.path.join(root, split, name, f"{name}_{key}.png"))


def thresholds(args: argparse.Namespace) -> None:
    import numpy as np

    import deepfeat
    from deepfeat.datasets import write_fashion_mnist
    from deepfeat.search.duplicates import all_pairs
    from deepfeat.search.index import build_index

    work = args.work or tempfile.mkdtemp(prefix="deepfeat-thresholds-")
    try:
        root = os.path.join(work, "fm")
        if not os.path.isdir(os.path.join(work, "st")):
            if args.mode == "photos":
                write_photos(root)
            else:
                write_fashion_mnist(root, per_class=args.per_class, shuffle=True, seed=args.seed)
        planted = plant(root, args.planted, args.seed)
        t = time.perf_counter()
        deepfeat.extract(
            root,
            os.path.join(work, "st"),
            model="efficientnet_lite0",
            input_size=args.input_size,
            layers=args.layers,
            precision="fp32",
            dtype="float16",
        )
        print(
            f"extracted {len(glob.glob(f'{root}/*/*/*'))} images at input size {args.input_size or 'default'} "
            f"in {time.perf_counter() - t:.1f} s"
        )
        idx = build_index(
            os.path.join(work, "st"), os.path.join(work, "idx"), layer=args.layer, kind="exact", overwrite=True
        )
        paths = idx.columns()["path"]
        # truth: a group per original (its planted copies join it); byte-identical files join too
        group: dict[str, str] = {}
        by_hash: dict[str, str] = {}
        for p in paths:
            if p in planted:
                continue
            h = hashlib.sha256(open(p, "rb").read()).hexdigest()
            group[p] = by_hash.setdefault(h, p)
        for p, (_, src) in planted.items():
            group[p] = group[src]
        ii, jj, ss = all_pairs(idx.vectors, args.low, 4096)
        row = {p: i for i, p in enumerate(paths)}
        sim_of = {}
        for a, b, s in zip(ii.tolist(), jj.tolist(), ss.tolist()):
            sim_of[(min(a, b), max(a, b))] = s
        true = np.array([group[paths[a]] == group[paths[b]] for a, b in zip(ii.tolist(), jj.tolist())], dtype=bool)
        n_natural = sum(1 for p in paths if p not in planted and group[p] != p)
        print(
            f"{len(paths)} rows, {len(planted)} planted ({args.planted} per kind), {n_natural} byte-identical "
            f"Fashion-MNIST files; {len(ii)} pairs at cosine >= {args.low}"
        )
        header = "| threshold | " + " | ".join(f"recall {k}" for k in KINDS) + " | recall all | pairs | precision |"
        print(f"layer {args.layer}, input size {args.input_size or 'default (224)'}")
        print(header)
        print("|" + "---|" * (len(KINDS) + 4))
        for thr in args.thresholds:
            rec = []
            for kind in KINDS:
                pairs = [(row[p], row[src]) for p, (k, src) in planted.items() if k == kind]
                hit = sum(sim_of.get((min(a, b), max(a, b)), -1) >= thr for a, b in pairs)
                rec.append(hit / len(pairs))
            pairs = [(row[p], row[src]) for p, (k, src) in planted.items()]
            hit_all = sum(sim_of.get((min(a, b), max(a, b)), -1) >= thr for a, b in pairs) / len(pairs)
            sel = ss >= thr
            prec = float(true[sel].mean()) if sel.any() else float("nan")
            print(
                f"| {thr:.2f} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {hit_all:.3f} | {int(sel.sum())} | "
                f"{prec:.3f} |"
            )
        by_resolution(planted, row, sim_of, idx.doc["store_metadata"]["preprocess"], args.default)
        by_pixels(work, paths, planted, group, sim_of, args.default)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def by_resolution(
    planted: dict[str, tuple[str, str]],
    row: dict[str, int],
    sim_of: dict[tuple[int, int], float],
    preprocess: dict,
    threshold: float,
) -> None:
    """Recall at ``threshold`` per kind, for planted files at or above the model's resize target and below it."""
    from PIL import Image

    target = max(preprocess["input_size"]) / preprocess.get("crop_pct", 1.0)
    counts: dict[tuple[str, bool], list[bool]] = {}
    for p, (kind, src) in planted.items():
        with Image.open(p) as im:
            big = min(im.size) >= target
        a, b = row[p], row[src]
        counts.setdefault((kind, big), []).append(sim_of.get((min(a, b), max(a, b)), -1) >= threshold)
    print(f"recall at {threshold:g} by the planted file's short side against the resize target ({target:.0f} px):")
    print("| kind | >= target: planted | recall | < target: planted | recall |")
    print("|---|---|---|---|---|")
    for kind in KINDS:
        cells = []
        for big in (True, False):
            hits = counts.get((kind, big), [])
            cells += [str(len(hits)), f"{sum(hits) / len(hits):.3f}" if hits else "-"]
        print(f"| {kind} | " + " | ".join(cells) + " |")


PIXEL_THRESHOLDS = (0.95, 0.97, 0.98, 0.985, 0.9875, 0.99, 0.995)


def by_pixels(
    work: str,
    paths: list[str],
    planted: dict[str, tuple[str, str]],
    group: dict[str, str],
    sim_of: dict[tuple[int, int], float],
    threshold: float,
) -> None:
    """Recall and precision of the pairs at cosine >= ``threshold`` or pixel correlation >= each of
    :data:`PIXEL_THRESHOLDS`; then what ``duplicates`` with its defaults writes, end to end."""

    import deepfeat
    from deepfeat.search.blocks import all_pairs
    from deepfeat.search.pixels import CANDIDATE_THRESHOLD, DEFAULT_PIXEL_THRESHOLD, pair_similarity, pyramids

    t = time.perf_counter()
    pyr = pyramids(paths, os.path.join(work, "pixels"))
    ci, cj, _ = all_pairs(pyr.candidates, CANDIDATE_THRESHOLD, 8192)
    sim = pair_similarity(pyr, ci, cj)
    print(
        f"pixels: {len(paths)} thumbnail pyramids, {len(ci)} candidate pairs at >= {CANDIDATE_THRESHOLD:g}, "
        f"{time.perf_counter() - t:.1f} s"
    )
    features = {k for k, s in sim_of.items() if s >= threshold}
    row = {p: i for i, p in enumerate(paths)}

    def score(found: set[tuple[int, int]]) -> tuple[list[float], float, float]:
        rec = []
        for kind in KINDS:
            pairs = [tuple(sorted((row[p], row[src]))) for p, (k, src) in planted.items() if k == kind]
            rec.append(sum(x in found for x in pairs) / len(pairs))
        everything = [tuple(sorted((row[p], row[src]))) for p, (k, src) in planted.items()]
        prec = sum(group[paths[a]] == group[paths[b]] for a, b in found) / len(found) if found else float("nan")
        return rec, sum(x in found for x in everything) / len(everything), prec

    print(f"features at cosine >= {threshold:g} or pixels at >= the threshold:")
    print("| pixel threshold | " + " | ".join(f"recall {k}" for k in KINDS) + " | recall all | pairs | precision |")
    print("|" + "---|" * (len(KINDS) + 4))
    for thr in PIXEL_THRESHOLDS:
        found = features | {(a, b) for a, b, s in zip(ci.tolist(), cj.tolist(), sim.tolist()) if s >= thr}
        rec, everything, prec = score(found)
        print(f"| {thr:g} | " + " | ".join(f"{r:.3f}" for r in rec) + f" | {everything:.3f} | {len(found)} | {prec:.3f} |")
    t = time.perf_counter()
    s = deepfeat.duplicates(os.path.join(work, "st"), os.path.join(work, "dups"), report=False)
    with open(os.path.join(work, "dups", "pairs.csv"), newline="", encoding="utf-8") as f:
        found = {tuple(sorted((row[r["path_a"]], row[r["path_b"]]))) for r in csv.DictReader(f)}
    rec, everything, prec = score(found)
    print(
        f"deepfeat.duplicates with its defaults (cosine >= {s.threshold:g} or pixels >= {DEFAULT_PIXEL_THRESHOLD:g}), "
        f"end to end in {time.perf_counter() - t:.1f} s: recall "
        + ", ".join(f"{k} {r:.3f}" for k, r in zip(KINDS, rec))
        + f"; all {everything:.3f}; {len(found)} pairs ({s.pixel_pairs} by pixels only), precision {prec:.3f}"
    )


# ----------------------------------------------------------------------------- ood
def ood(args: argparse.Namespace) -> None:
    """Nearest-training similarity of in-domain (Fashion-MNIST test) and out-of-domain (photos) images."""
    import numpy as np

    import deepfeat
    from deepfeat.datasets import write_fashion_mnist
    from deepfeat.search.index import build_index

    work = args.work or tempfile.mkdtemp(prefix="deepfeat-ood-")
    try:
        root, photos = os.path.join(work, "fm"), os.path.join(work, "photos")
        if not os.path.isdir(os.path.join(work, "st")):
            write_fashion_mnist(root, per_class=args.per_class, shuffle=True, seed=args.seed)
            write_photos(photos)
        deepfeat.extract(
            root,
            os.path.join(work, "st"),
            model="efficientnet_lite0",
            input_size=args.input_size,
            precision="fp32",
            dtype="float16",
        )
        idx = build_index(
            os.path.join(work, "st"), os.path.join(work, "idx"), splits=["train"], kind="exact", overwrite=True
        )
        tests = sorted(glob.glob(f"{root}/test/*/*.png"))
        photo_files = sorted(glob.glob(f"{photos}/*/*/*.png"))
        near = {}
        for name, files in (("Fashion-MNIST test", tests), ("photos", photo_files)):
            res = deepfeat.search(idx, files, top_k=1, precision="fp32")
            near[name] = np.array([r.neighbors[0].similarity for r in res if r.neighbors])
            q = np.quantile(near[name], [0.0, 0.01, 0.05, 0.5, 0.95, 1.0])
            print(
                f"{name}: {len(near[name])} images, nearest-training similarity min {q[0]:.3f}, 1 % {q[1]:.3f}, "
                f"5 % {q[2]:.3f}, median {q[3]:.3f}, 95 % {q[4]:.3f}, max {q[5]:.3f}"
            )
        print("| far threshold | Fashion-MNIST test flagged | photos flagged |")
        print("|---|---|---|")
        for t in args.thresholds:
            print(f"| {t:.2f} | {np.mean(near['Fashion-MNIST test'] < t):.3f} | {np.mean(near['photos'] < t):.3f} |")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- index
CHILD = r"""
import json, os, resource, sys, time, numpy as np
args = json.loads(sys.argv[1])

def drop_page_cache():  # empty the kernel's page cache (root only): the first search reads the index from the disk
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False

t = time.perf_counter()
out = {}
if args["step"] == "index":
    from deepfeat.search.index import build_index
    idx = build_index(args["store"], args["index"], kind=args["kind"], memory_budget=args["budget"], overwrite=True)
    out["seconds"] = time.perf_counter() - t
    out["ivf"] = idx.doc.get("ivf")
elif args["step"] == "query":
    from deepfeat.search.index import open_index
    idx = open_index(args["index"])
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(idx.rows, size=args["queries"], replace=False))
    # a stored row moved by noise of about its own length: its neighbours are its cluster's rows, not itself
    Q = idx.vectors_of(rows) + rng.normal(0, 1 / np.sqrt(idx.dims), (len(rows), idx.dims)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    out["cold"] = drop_page_cache()
    t, cpu = time.perf_counter(), time.process_time()
    sims, found = idx.knn(Q, 10, memory_budget=args["budget"], kind=args["kind"], nprobe=args.get("nprobe"))
    out["seconds"], out["cpu_seconds"] = time.perf_counter() - t, time.process_time() - cpu
    t = time.perf_counter()  # the same queries again: the index's pages and their candidates' rows are cached now
    idx.knn(Q, 10, memory_budget=args["budget"], kind=args["kind"], nprobe=args.get("nprobe"))
    out["warm_seconds"] = time.perf_counter() - t
    np.save(args["result"], found)
elif args["step"] == "duplicates":
    from deepfeat.search.duplicates import duplicates
    s = duplicates(args["store"], args["out"], threshold=args.get("threshold", 0.95), memory_budget=args["budget"],
                   report=args.get("report", False), method=args.get("method", "auto"), pixels=args.get("pixels", True))
    out["seconds"] = time.perf_counter() - t
    out["pairs"], out["groups"], out["leaks"] = s.pairs, s.groups, s.leaks
    out["pixel_pairs"], out["unread"] = s.pixel_pairs, len(s.unread)
    out["cross_split_pairs"], out["method"] = s.cross_split_pairs, s.method
out["maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
out["children_maxrss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps(out))
"""


def child(**kw: object) -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(res.stderr)
    return json.loads(res.stdout.strip().splitlines()[-1])


def synthetic_parts(rows: int, dims: int, part_rows: int, seed: int):  # noqa: ANN201
    """(float16 block, planted pairs) per part: clustered vectors, 1 % of rows a near-copy (noise 0.05)
    of another row of the part. Planted pairs: each copy with its source and copies of one source with
    each other (a copy whose source is itself replaced by a copy is not counted)."""
    import itertools

    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(256, dims)).astype(np.float32)
    for s in range(0, rows, part_rows):
        n = min(part_rows, rows - s)
        X = centres[rng.integers(0, 256, n)] + rng.normal(0, 1.0, (n, dims)).astype(np.float32)
        dup = rng.random(n) < 0.01
        src = rng.integers(0, n, n)
        X[dup] = X[src[dup]] + rng.normal(0, 0.05, (int(dup.sum()), dims)).astype(np.float32)
        groups: dict[int, list[int]] = {}
        for i in np.flatnonzero(dup).tolist():
            if src[i] != i and not dup[src[i]]:
                groups.setdefault(int(src[i]), [int(src[i])]).append(i)
        pairs = {(s + a, s + b) for m in groups.values() for a, b in itertools.combinations(sorted(m), 2)}
        yield X.astype(np.float16), pairs


def synthetic_store(path: str, rows: int, dims: int, part_rows: int, seed: int) -> None:
    """A store of :func:`synthetic_parts`, written through StoreWriter."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from searchstore import write_synthetic_store  # the tests' helper: StoreWriter + write_part

    write_synthetic_store(path, (X for X, _ in synthetic_parts(rows, dims, part_rows, seed)))


def index_bench(args: argparse.Namespace) -> None:
    import numpy as np

    from deepfeat.units import parse_size

    work = args.keep or tempfile.mkdtemp(prefix="deepfeat-searchbench-", dir=args.tmp)
    load = lambda: f"load average {os.getloadavg()[0]:.2f}"  # noqa: E731
    try:
        store = os.path.join(work, "st")
        budget = parse_size(args.budget)
        if os.path.isdir(store):
            print(f"synthetic store reused: {store}")
        else:
            t = time.perf_counter()
            synthetic_store(store, args.rows, args.dims, args.part_rows, args.seed)
            print(f"synthetic store: {args.rows:,} rows x {args.dims} dims float16 in {time.perf_counter() - t:.1f} s")
        if not os.path.isdir(os.path.join(work, "exact")):
            exact = child(step="index", store=store, index=os.path.join(work, "exact"), kind="exact", budget=budget)
            print(f"index exact: {exact['seconds']:.1f} s, peak RSS {exact['maxrss_mib']:.0f} MiB")
        if os.path.isfile(os.path.join(work, "exact.npy")):
            q_exact = None
            print("exact neighbours reused (exact.npy)")
        else:
            q_exact = child(
                step="query",
                index=os.path.join(work, "exact"),
                kind="exact",
                budget=budget,
                queries=args.queries,
                result=os.path.join(work, "exact.npy"),
            )
            print(
                f"search exact (numpy): {args.queries / q_exact['seconds']:.0f} queries/s, peak RSS "
                f"{q_exact['maxrss_mib']:.0f} MiB ({load()})"
            )
        truth = np.load(os.path.join(work, "exact.npy"))
        for kind in args.kinds:
            if args.keep and os.path.isdir(os.path.join(work, kind)) and not args.rebuild:
                print(f"index {kind} reused")
            else:
                built = child(step="index", store=store, index=os.path.join(work, kind), kind=kind, budget=budget)
                print(
                    f"index {kind}: build {built['seconds']:.1f} s (peak RSS {built['maxrss_mib']:.0f} MiB, "
                    f"{load()})" + (f", {built['ivf']}" if built.get("ivf") else "")
                )
            for nprobe in args.nprobe if kind == "ivf" else [None]:
                q = child(
                    step="query",
                    index=os.path.join(work, kind),
                    kind=kind,
                    budget=budget,
                    queries=args.queries,
                    result=os.path.join(work, f"{kind}.npy"),
                    nprobe=nprobe,
                )
                found = np.load(os.path.join(work, f"{kind}.npy"))
                recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
                cache = "page cache dropped first" if q["cold"] else "page cache as found (not root: not dropped)"
                print(
                    f"  search {kind}{f' nprobe {nprobe}' if nprobe else ''}: {args.queries / q['seconds']:.0f} "
                    f"queries/s ({cache}), {args.queries / q['warm_seconds']:.0f} queries/s repeated (cached); "
                    f"{args.queries / q['cpu_seconds']:.0f} per CPU-second ("
                    f"{2 * args.queries / q['cpu_seconds']:.0f}/s on 2 idle cores if both stay busy; peak RSS "
                    f"{q['maxrss_mib']:.0f} MiB, {load()}), recall@10 vs exact {recall:.3f}"
                    + (f", speed-up x{q_exact['seconds'] / q['seconds']:.1f} over exact numpy" if q_exact else "")
                )
        if args.duplicates:
            import csv

            # the synthetic store has no images behind its rows: features only
            d = child(step="duplicates", store=store, out=os.path.join(work, "dups"), budget=budget, pixels=False)
            planted = set().union(*(p for _, p in synthetic_parts(args.rows, args.dims, args.part_rows, args.seed)))
            with open(os.path.join(work, "dups", "pairs.csv"), newline="", encoding="utf-8") as f:
                found = {tuple(sorted((int(r["id_a"][4:]), int(r["id_b"][4:])))) for r in csv.DictReader(f)}
            print(
                f"duplicates ({d['method']}, cosine >= 0.95): {d['seconds']:.1f} s, peak RSS "
                f"{d['maxrss_mib']:.0f} MiB, {d['pairs']:,} pairs in {d['groups']:,} groups ({load()}); planted "
                f"pairs found {len(found & planted):,} of {len(planted):,}, other pairs {len(found - planted):,}"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------- fm
def fm_bench(args: argparse.Namespace) -> None:
    """The issue's full Fashion-MNIST duplicates run: 70,000 images, every pair compared."""
    import csv

    import deepfeat
    from deepfeat.datasets import write_fashion_mnist

    work = args.work or tempfile.mkdtemp(prefix="deepfeat-fm70k-", dir=args.tmp)
    store = args.store or os.path.join(work, "st")
    if not os.path.isdir(store):
        root = os.path.join(work, "fm")
        write_fashion_mnist(root)
        t = time.perf_counter()
        deepfeat.extract(root, store, input_size=args.input_size, layers="pre_logits", precision="fp32", dtype="float16")
        print(f"extracted Fashion-MNIST (train + test) at input size {args.input_size} in {time.perf_counter() - t:.0f} s")
    rows = deepfeat.open_store(store).rows(["path", "sha256"])
    sha = dict(zip(rows.column("path").to_pylist(), rows.column("sha256").to_pylist()))
    for method in args.method:
        out = os.path.join(work, f"dups-{method}")
        d = child(
            step="duplicates",
            store=store,
            out=out,
            budget=args.budget,
            threshold=args.threshold,
            method=method,
            report=True,
            pixels=not args.no_pixels,
        )
        with open(os.path.join(out, "pairs.csv"), newline="", encoding="utf-8") as f:
            pairs = list(csv.DictReader(f))
        same = sum(sha[p["path_a"]] == sha[p["path_b"]] for p in pairs)
        cross_same = sum(sha[p["path_a"]] == sha[p["path_b"]] and p["split_a"] != p["split_b"] for p in pairs)
        print(
            f"duplicates {d['method']} (cosine >= {args.threshold}, budget {args.budget}): {d['seconds']:.1f} s, "
            f"peak RSS {d['maxrss_mib']:.0f} MiB (largest child process {d['children_maxrss_mib']:.0f} MiB), "
            f"{d['pairs']:,} pairs ({d['pixel_pairs']:,} by pixels only; {d['unread']} images unread) "
            f"in {d['groups']:,} groups, "
            f"{d['cross_split_pairs']:,} across splits, leaks into train: {d['leaks']}; byte-identical pairs "
            f"{same:,} ({cross_same:,} across splits); load average {os.getloadavg()[0]:.2f}"
        )
    print(f"outputs kept in {work}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    t = sub.add_parser("thresholds")
    t.add_argument("--per-class", type=int, default=100, help="Fashion-MNIST images per class and split")
    t.add_argument("--planted", type=int, default=80, help="planted duplicates per kind")
    t.add_argument("--input-size", type=int, default=None, help="model input size (default: the model's, 224)")
    t.add_argument("--layers", default="pre_logits", help="layers extracted")
    t.add_argument("--layer", default="pre_logits", help="the layer compared")
    t.add_argument("--low", type=float, default=0.5, help="lowest similarity collected")
    t.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--default", type=float, default=0.95, help="the threshold of the by-resolution recall")
    t.add_argument("--work", default=None, help="keep the images and the store here (a rerun reuses them)")
    ph = sub.add_parser("photos", help="as thresholds, on scikit-image's sample photos and their quadrants")
    ph.add_argument("--planted", type=int, default=40, help="planted duplicates per kind")
    ph.add_argument("--input-size", type=int, default=None)
    ph.add_argument("--layers", default="pre_logits")
    ph.add_argument("--layer", default="pre_logits")
    ph.add_argument("--low", type=float, default=0.3)
    ph.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99]
    )
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--default", type=float, default=0.95)
    ph.add_argument("--work", default=None)
    o = sub.add_parser("ood", help="nearest-training similarity of Fashion-MNIST test images and of photos")
    o.add_argument("--per-class", type=int, default=100)
    o.add_argument("--input-size", type=int, default=None)
    o.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7])
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--work", default=None)
    i = sub.add_parser("index")
    i.add_argument("--rows", type=int, default=200_000)
    i.add_argument("--dims", type=int, default=1280)
    i.add_argument("--part-rows", type=int, default=4096)
    i.add_argument("--queries", type=int, default=1000)
    i.add_argument("--budget", default="1GiB")
    i.add_argument("--kinds", nargs="+", default=["flat", "ivf"])
    i.add_argument("--nprobe", type=int, nargs="+", default=[None], help="IVF lists visited (default: the index's)")
    i.add_argument(
        "--duplicates",
        action="store_true",
        help="also run duplicates on the store (partitioned above 200,000 rows) against the planted pairs",
    )
    i.add_argument("--tmp", default=None, help="where the synthetic store goes (default: the temp dir)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--keep", default=None, help="work folder kept and reused (store, exact index and neighbours)")
    i.add_argument("--rebuild", action="store_true", help="with --keep: rebuild the indexes of --kinds")
    f = sub.add_parser("fm", help="duplicates over the whole of Fashion-MNIST (70,000 images)")
    f.add_argument("--store", default=None, help="an extracted Fashion-MNIST store to reuse")
    f.add_argument("--input-size", type=int, default=96)
    f.add_argument("--threshold", type=float, default=0.95)
    f.add_argument("--budget", default="1GiB")
    f.add_argument("--method", nargs="+", default=["exact"], help="duplicates methods to run (exact, partitioned)")
    f.add_argument("--no-pixels", action="store_true", help="features only (no pixel check)")
    f.add_argument("--work", default=None, help="where the images, store and outputs go (kept)")
    f.add_argument("--tmp", default=None)
    args = ap.parse_args()
    print(cpu_line())
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    {"index": index_bench, "ood": ood, "fm": fm_bench}.get(args.mode, thresholds)(args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Extraction throughput benchmark: deepfeat vs the forward pass alone vs the tutorial loop.

One run prints, per data set (Fashion-MNIST PNGs and/or natural-photo JPEGs):

a. forward-only img/s -- the torch fp32 runtime on a pre-decoded uint8 NHWC batch of real images
   (normalisation, channels-last forward with taps, pooling and the float16 cast included;
   file reading, decoding, resizing and the store are not), timed in two sessions -- before
   and after the extract runs -- to average over a busy machine;
b. end-to-end img/s of ``deepfeat.extract`` into a fresh store, for each ``--workers`` value
   (the backbone is loaded once beforehand and passed in, so ``embedded / summary.seconds``
   excludes model loading; the model load time is reported separately);
c. the naive tutorial loop -- PIL open + convert("RGB"), torchvision Resize/CenterCrop/
   ToTensor/Normalize, the model with its classifier removed, ONE image per forward (NCHW,
   eager, ``torch.no_grad``), each vector appended as a CSV line with the ``csv`` module --
   timed on a subset and reported per image;
d. bytes on disk (store folder vs CSV) and read-back speed (``open_store().batches()`` vs
   the ``csv`` module and ``np.loadtxt``).

Then the ratios against the targets: end-to-end / forward-only >= 0.85, end-to-end / naive
>= 2x, store read / CSV read >= 10x, and the disk ratio.

Usage:
    python benchmarks/extract_throughput.py                 # both data sets (~5-10 min on 2 cores)
    python benchmarks/extract_throughput.py --quick         # smoke run (~1-2 min)
    python benchmarks/extract_throughput.py --dataset photos --photos 1000 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

MODEL = "efficientnet_lite0"
TARGETS = {"e2e_vs_forward": 0.85, "e2e_vs_naive": 2.0, "store_read_vs_csv_read": 10.0}


# --------------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def cpu_seconds() -> float:
    """User+system CPU seconds of this process (all threads) and its reaped children (workers)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def dir_bytes(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:,.1f}"


def best_of(fn, min_total_s: float = 1.0, max_reps: int = 20) -> tuple[float, Any]:
    """Run ``fn`` until ``min_total_s`` has passed (at least twice); return (best seconds, result)."""
    best, result, spent, reps = float("inf"), None, 0.0, 0
    while reps < 2 or (spent < min_total_s and reps < max_reps):
        t = time.perf_counter()
        result = fn()
        dt = time.perf_counter() - t
        best, spent, reps = min(best, dt), spent + dt, reps + 1
    return best, result


# --------------------------------------------------------------------------------- data
def make_fashion_mnist(root: str, n: int) -> tuple[str, int]:
    from deepfeat.datasets import write_fashion_mnist

    per_class = max(1, round(n / 20))  # 10 classes x 2 splits
    out = os.path.join(root, "fmnist")
    summary = write_fashion_mnist(out, per_class=per_class, download=False)
    return out, summary.total


def make_photos(root: str, n: int, seed: int = 0, size: tuple[int, int] = (640, 480)) -> tuple[str, int]:
    """``n`` JPEGs (quality 90) of ``size`` from scikit-image photos: random crops, resizes, flips."""
    import skimage.data as skd
    from PIL import Image

    sources = {}
    for name in (
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "cat",
        "immunohistochemistry",
        "hubble_deep_field",
        "retina",
        "colorwheel",
        "camera",
        "coins",
    ):
        try:
            arr = getattr(skd, name)()
        except Exception:  # noqa: BLE001 - a missing sample is simply skipped
            continue
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        sources[name] = Image.fromarray(np.ascontiguousarray(arr[..., :3]).astype(np.uint8))
    if not sources:
        raise SystemExit("no scikit-image sample photos could be loaded")
    rng = np.random.default_rng(seed)
    out = os.path.join(root, "photos")
    names = sorted(sources)
    for i in range(n):
        name = names[i % len(names)]
        img = sources[name]
        w, h = img.size
        tw, th = size if rng.random() < 0.75 else size[::-1]  # mostly landscape, some portrait
        aspect = tw / th
        scale = rng.uniform(0.35, 1.0)
        cw = min(w, int(round(np.sqrt(scale * w * h * aspect))))
        ch = min(h, int(round(cw / aspect)))
        cw = min(cw, int(round(ch * aspect)))
        x0 = int(rng.integers(0, w - cw + 1))
        y0 = int(rng.integers(0, h - ch + 1))
        crop = img.crop((x0, y0, x0 + cw, y0 + ch)).resize((tw, th), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        os.makedirs(os.path.join(out, name), exist_ok=True)
        crop.save(os.path.join(out, name, f"img_{i:05d}.jpg"), format="JPEG", quality=90)
    return out, n


def list_images(root: str) -> list[tuple[str, str]]:
    """(path, label) in sorted path order, the way a tutorial globs a folder."""
    paths = sorted(
        p for p in glob.glob(os.path.join(root, "**", "*"), recursive=True) if p.lower().endswith((".png", ".jpg", ".jpeg"))
    )
    return [(p, os.path.basename(os.path.dirname(p))) for p in paths]


# --------------------------------------------------------------------------------- measurements
class ForwardBench:
    """(a) The torch fp32 runtime on one pre-decoded batch of real images, timed in sessions."""

    def __init__(self, bb, layers: str, items: list[tuple[str, str]], batch_size: int) -> None:
        from deepfeat.data.decode import decode_file
        from deepfeat.runtimes import build_runtime, layer_specs

        # the torch fp32 reference; benchmarks/runtimes.py compares every runtime
        self.fc = build_runtime(
            bb, layer_specs(bb, layers, "avg"), runtime="torch", precision="fp32", dtype="float16", channels_last=True
        )
        t = time.perf_counter()
        self.pixels = np.stack([bb.preprocess.resize_crop(decode_file(p).image) for p, _ in items[:batch_size]])
        self.decode_img_per_s = len(self.pixels) / (time.perf_counter() - t)
        self.times: list[float] = []
        self.sessions: list[float] = []
        self.cpu = 0.0

    def session(self, n_batches: int, warmup: int) -> float:
        for _ in range(warmup):
            self.fc(self.pixels)
        times = []
        c0 = cpu_seconds()
        for _ in range(n_batches):
            t = time.perf_counter()
            self.fc(self.pixels)
            times.append(time.perf_counter() - t)
        self.cpu += cpu_seconds() - c0
        self.times.extend(times)
        rate = len(self.pixels) * n_batches / sum(times)
        self.sessions.append(rate)
        return rate

    def result(self) -> dict[str, Any]:
        n = len(self.pixels)
        rates = [n / s for s in self.times]
        return {
            "batch_size": n,
            "timed_batches": len(self.times),
            "img_per_s": n * len(self.times) / sum(self.times),  # all timed batches: images / seconds
            "img_per_s_median": statistics.median(rates),
            "img_per_s_best": max(rates),
            "img_per_s_by_session": self.sessions,
            "seconds": sum(self.times),
            "cpu_ms_per_img": 1000 * self.cpu / (n * len(self.times)),
            "decode_resize_img_per_s_1proc": self.decode_img_per_s,
        }


def measure_decode(bb, items: list[tuple[str, str]], limit: int) -> float:
    """Decode (deepfeat's decode policy) + resize/crop only, in this process: img/s.

    The same two calls a decode worker makes per image (``decode_file`` then
    ``Preprocess.resize_crop``), without the process pool, pickling or the forward pass.
    """
    from deepfeat.data.decode import DecodePolicy, decode_file

    policy = DecodePolicy()
    sub = items[:limit]
    t = time.perf_counter()
    for p, _ in sub:
        bb.preprocess.resize_crop(decode_file(p, policy).image)
    return len(sub) / (time.perf_counter() - t)


def measure_extract(bb, source: str, out: str, layers: str, batch_size: int, workers: int) -> dict[str, Any]:
    """(b) deepfeat.extract into a fresh store with a pre-loaded backbone."""
    import deepfeat

    marks: dict[str, float] = {}

    def progress(ev: dict[str, Any]) -> None:
        now = time.perf_counter()
        if ev.get("phase") == "plan":
            marks["plan"] = now
        elif ev.get("phase") == "batch":
            marks.setdefault("first_batch", now)
            marks["last_batch"] = now

    shutil.rmtree(out, ignore_errors=True)
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    s = deepfeat.extract(
        source,
        out,
        model=MODEL,
        layers=layers,
        pool="avg",
        dtype="float16",
        batch_size=batch_size,
        workers=workers,
        device="cpu",
        overwrite=True,
        progress=progress,
        backbone=bb,
        runtime="torch",
        precision="fp32",
    )
    wall = time.perf_counter() - t0
    cpu = cpu_seconds() - c0  # the decode workers are reaped when the pool closes, so they count
    n = s.embedded_now
    res = {
        "workers": workers,
        "embedded": n,
        "failed": s.failed_now,
        "wall_s": wall,
        "summary_seconds": s.seconds,
        "img_per_s": n / s.seconds if s.seconds else 0.0,
        "cpu_ms_per_img": 1000 * cpu / max(1, n),
        "setup_s": marks.get("plan", t0) - t0,  # discovery, layer probe, store setup
        "first_batch_s": marks.get("first_batch", t0) - marks.get("plan", t0),  # pool start + 1st batch
        "bytes_on_disk": s.bytes_on_disk,
        "store_dir_bytes": dir_bytes(out),
        "parts": s.parts_committed,
    }
    if "plan" in marks and "first_batch" in marks and n:
        res["img_per_s_after_setup"] = n / (t0 + wall - marks["plan"])  # model probe/discovery excluded
        # after the first batch (pool start-up excluded): all batches but the first
        res["img_per_s_steady"] = (
            (n - batch_size) / (marks["last_batch"] - marks["first_batch"])
            if n > batch_size and marks["last_batch"] > marks["first_batch"]
            else None
        )
    return res


def naive_loop(items: list[tuple[str, str]], csv_path: str, input_size: int, batch: int = 1) -> dict[str, Any]:
    """(c) the tutorial way: PIL + torchvision transforms, one image per forward, CSV lines."""
    import torch
    from torchvision import transforms

    from deepfeat.models import load_backbone

    bb = load_backbone(MODEL)  # the same weights; a plain eager NCHW module
    model = bb.model
    model.reset_classifier(0)  # "model.fc = nn.Identity()": outputs the 1280-d pre-logits
    model.eval()
    pre = bb.preprocess.with_overrides(input_size=input_size)
    tf = transforms.Compose(
        [
            transforms.Resize(pre.resize_size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(input_size),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
        ]
    )
    with torch.no_grad():  # warm-up (not timed), like a tutorial's first call
        model(torch.zeros(1, 3, input_size, input_size))
    dims = None
    c0 = cpu_seconds()
    t0 = time.perf_counter()
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        pending: list[tuple[str, str, Any]] = []
        for k, (path, label) in enumerate(items):
            img = Image_open_rgb(path)
            pending.append((path, label, tf(img)))
            if len(pending) == batch or k == len(items) - 1:
                with torch.no_grad():
                    feats = model(torch.stack([x for _, _, x in pending])).numpy()
                if dims is None:
                    dims = feats.shape[1]
                    writer.writerow(["path", "label"] + [f"f{i}" for i in range(dims)])
                for (p, lab, _), f in zip(pending, feats):
                    writer.writerow([p, lab] + f.tolist())
                pending = []
    secs = time.perf_counter() - t0
    cpu = cpu_seconds() - c0
    return {
        "images": len(items),
        "batch": batch,
        "seconds": secs,
        "img_per_s": len(items) / secs,
        "cpu_ms_per_img": 1000 * cpu / len(items),
        "dims": dims,
        "csv_bytes": os.path.getsize(csv_path),
    }


def Image_open_rgb(path: str):
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def tile_csv(src: str, dst: str, rows: int) -> None:
    """A CSV of ``rows`` data lines made by repeating ``src``'s data lines cyclically."""
    with open(src) as fh:
        header, *lines = fh.readlines()
    with open(dst, "w") as fh:
        fh.write(header)
        for i in range(rows):
            fh.write(lines[i % len(lines)])


def read_csv_module(path: str) -> tuple[int, np.ndarray]:
    rows = []
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for row in reader:
            rows.append([float(v) for v in row[2:]])
    x = np.asarray(rows, dtype=np.float32)
    return len(x), x


def read_csv_loadtxt(path: str, dims: int) -> tuple[int, np.ndarray]:
    x = np.loadtxt(path, delimiter=",", skiprows=1, usecols=range(2, 2 + dims), dtype=np.float32)
    return len(x), x


def read_store(path: str, layers: list[str]) -> tuple[int, float]:
    from deepfeat.store.reader import open_store

    store = open_store(path)
    n, checksum = 0, 0.0
    for b in store.batches(layers, batch_size=1024):
        x = b.features[layers[0]]
        n += len(x)
        checksum += float(x[:, 0].astype(np.float32).sum())  # touch the data
    return n, checksum


def compare_features(store_path: str, csv_path: str, layer: str) -> float | None:
    """Max |naive - deepfeat| / max|deepfeat| over the naive subset (a sanity check, not a target)."""
    from deepfeat.store.reader import open_store

    try:
        store = open_store(store_path)
        by_path: dict[str, np.ndarray] = {}
        for b in store.batches([layer], batch_size=1024, columns=("id", "label", "split", "view", "path")):
            for p, v in zip(b.meta.column("path").to_pylist(), b.features[layer]):
                by_path[os.path.realpath(p)] = v.astype(np.float32)
        worst, scale = 0.0, 1e-12
        with open(csv_path, newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            for row in reader:
                ref = by_path.get(os.path.realpath(row[0]))
                if ref is None:
                    return None
                v = np.asarray(row[2:], dtype=np.float32)
                worst = max(worst, float(np.abs(v - ref).max()))
                scale = max(scale, float(np.abs(ref).max()))
        return worst / scale
    except Exception:  # noqa: BLE001 - diagnostic only
        return None


# --------------------------------------------------------------------------------- one data set
def run_dataset(
    name: str, source: str, n_images: int, input_size: int, args: argparse.Namespace, work: str
) -> dict[str, Any]:
    from deepfeat.models import load_backbone

    layers_list = [s.strip() for s in args.layers.split(",") if s.strip()]
    items = list_images(source)
    res: dict[str, Any] = {
        "dataset": name,
        "images": len(items),
        "input_size": input_size,
        "layers": args.layers,
        "batch_size": args.batch_size,
    }
    t = time.perf_counter()
    bb = load_backbone(MODEL, input_size=input_size)
    res["model_load_s"] = time.perf_counter() - t

    log(f"{name}: forward-only ({args.forward_batches} x {args.batch_size} images @ {input_size})")
    fwd = ForwardBench(bb, args.layers, items, args.batch_size)
    fwd.session(args.forward_batches, args.warmup)
    res["decode_img_per_s_1proc"] = measure_decode(bb, items, min(len(items), args.decode_sample))

    res["extract"] = []
    for w in args.workers:
        log(f"{name}: deepfeat.extract workers={w} ({len(items)} images)")
        out = os.path.join(work, f"store_{name}_w{w}")
        r = measure_extract(bb, source, out, args.layers, args.batch_size, w)
        res["extract"].append(r)
        if w != args.workers[0]:
            shutil.rmtree(out, ignore_errors=True)  # keep only the first store for read-back
    store_path = os.path.join(work, f"store_{name}_w{args.workers[0]}")
    log(f"{name}: forward-only again (a second session, after the extract runs)")
    fwd.session(args.forward_batches, 1)
    res["forward"] = fwd.result()

    subset = items[: min(len(items), args.naive_subset_photos if name == "photos" else args.naive_subset)]
    log(f"{name}: naive loop on {len(subset)} images (batch {args.naive_batch})")
    naive_csv = os.path.join(work, f"naive_{name}.csv")
    res["naive"] = naive_loop(subset, naive_csv, input_size, args.naive_batch)
    res["naive"]["max_rel_diff_vs_store"] = compare_features(store_path, naive_csv, layers_list[-1])

    # (d) disk and read-back on the full row count
    full_csv = naive_csv
    if len(subset) < len(items):
        full_csv = os.path.join(work, f"naive_{name}_full.csv")
        tile_csv(naive_csv, full_csv, len(items))
    csv_bytes = os.path.getsize(full_csv)
    store_bytes = dir_bytes(store_path)
    log(f"{name}: read-back (store {store_bytes / 1e6:.1f} MB, CSV {csv_bytes / 1e6:.1f} MB)")
    s_store, (n_store, _) = best_of(lambda: read_store(store_path, layers_list), min_total_s=1.0)
    t = time.perf_counter()
    n_csv, _ = read_csv_module(full_csv)
    s_csv = time.perf_counter() - t
    dims = res["naive"]["dims"]
    t = time.perf_counter()
    n_lt, _ = read_csv_loadtxt(full_csv, dims)
    s_lt = time.perf_counter() - t
    first = res["extract"][0]
    res["disk"] = {
        "store_dir_bytes": store_bytes,
        "store_feature_part_bytes": first["bytes_on_disk"],
        "csv_bytes": csv_bytes,
        "csv_rows": len(items),
        "csv_tiled_from": len(subset),
        "csv_bytes_per_row": csv_bytes / len(items),
        "store_bytes_per_row": store_bytes / max(1, n_store),
    }
    res["read"] = {
        "store": {
            "rows": n_store,
            "seconds": s_store,
            "rows_per_s": n_store / s_store,
            "mb_per_s": store_bytes / 1e6 / s_store,
        },
        "csv_module": {"rows": n_csv, "seconds": s_csv, "rows_per_s": n_csv / s_csv, "mb_per_s": csv_bytes / 1e6 / s_csv},
        "np_loadtxt": {"rows": n_lt, "seconds": s_lt, "rows_per_s": n_lt / s_lt, "mb_per_s": csv_bytes / 1e6 / s_lt},
    }
    if not args.keep:
        shutil.rmtree(store_path, ignore_errors=True)
    return res


def ratios(res: dict[str, Any], default_workers: int) -> dict[str, Any]:
    fwd = res["forward"]["img_per_s"]
    naive = res["naive"]["img_per_s"]
    per_w = {r["workers"]: r["img_per_s"] for r in res["extract"]}
    by_cpu = {r["workers"]: r["cpu_ms_per_img"] for r in res["extract"]}
    main_w = default_workers if default_workers in per_w else max(per_w, key=per_w.get)
    e2e = per_w[main_w]
    best_csv = max(res["read"]["csv_module"]["rows_per_s"], res["read"]["np_loadtxt"]["rows_per_s"])
    return {
        "workers_used_for_ratios": main_w,
        "e2e_vs_forward": e2e / fwd,
        "e2e_vs_forward_median": e2e / res["forward"]["img_per_s_median"],
        "e2e_vs_forward_by_workers": {w: v / fwd for w, v in per_w.items()},
        "best_e2e_vs_forward": max(per_w.values()) / fwd,
        "e2e_vs_naive": e2e / naive,
        # the same two ratios from CPU time per image (less sensitive to other jobs on the machine)
        "cpu_e2e_vs_forward": res["forward"]["cpu_ms_per_img"] / by_cpu[main_w],
        "cpu_e2e_vs_naive": res["naive"]["cpu_ms_per_img"] / by_cpu[main_w],
        "store_read_vs_csv_read": res["read"]["store"]["rows_per_s"] / best_csv,
        "disk_csv_over_store": res["disk"]["csv_bytes"] / res["disk"]["store_dir_bytes"],
    }


# --------------------------------------------------------------------------------- printing
def print_report(machine: dict[str, Any], results: list[dict[str, Any]], default_workers: int) -> None:
    print("=" * 96)
    print("deepfeat extraction benchmark -- model efficientnet_lite0, pool avg, float16 store, CPU fp32")
    print(
        f"machine: {machine['platform']}; cpu_count={machine['cpu_count']} affinity={machine['affinity']} "
        f"torch threads={machine['torch_threads']} interop={machine['torch_interop_threads']}"
    )
    print(
        f"versions: python {machine['python']}, torch {machine['torch']}, deepfeat {machine['deepfeat']}, "
        f"numpy {machine['numpy']}; default workers={default_workers}; deepfeat from {machine['deepfeat_path']}"
    )
    print(
        f"load average: start {machine['loadavg_start']}, end {machine['loadavg_end']} "
        "(a busy machine makes every figure noisy)"
    )
    for res in results:
        r = res["ratios"]
        f = res["forward"]
        print("-" * 96)
        print(
            f"DATA SET {res['dataset']}: {res['images']} images, input {res['input_size']}px, layers "
            f"{res['layers']}, batch {res['batch_size']}, model load {res['model_load_s']:.2f} s"
        )
        print(f"{'measurement':<58}{'img/s':>12}{'seconds':>10}{'images':>9}{'cpu ms/img':>12}")
        print(
            f"{'a. forward-only (torch fp32, pre-decoded uint8 batch)':<58}{fmt_rate(f['img_per_s']):>12}"
            f"{f['seconds']:>10.2f}{f['batch_size'] * f['timed_batches']:>9}{f['cpu_ms_per_img']:>12.1f}"
        )
        sess = " / ".join(fmt_rate(v) for v in f["img_per_s_by_session"])
        print(
            f"{'   sessions before / after extract: ' + sess + '; median, best batch':<58}"
            f"{fmt_rate(f['img_per_s_median']):>12} / {fmt_rate(f['img_per_s_best'])}"
        )
        print(
            f"{'   decode+resize only, 1 process (decode_file+resize_crop)':<58}"
            f"{fmt_rate(res['decode_img_per_s_1proc']):>12}"
        )
        for e in res["extract"]:
            tag = " (default)" if e["workers"] == default_workers else ""
            print(
                f"{'b. deepfeat.extract workers=' + str(e['workers']) + tag + ': embedded/summary.seconds':<58}"
                f"{fmt_rate(e['img_per_s']):>12}{e['summary_seconds']:>10.2f}{e['embedded']:>9}"
                f"{e['cpu_ms_per_img']:>12.1f}"
            )
            wall = (
                f"     wall {e['wall_s']:.2f} s (+ model load {res['model_load_s']:.2f} s); setup "
                f"{e['setup_s']:.2f} s, 1st batch {e['first_batch_s']:.2f} s; steady"
            )
            print(f"{wall:<58}{fmt_rate(e.get('img_per_s_steady')):>12}")
        nv = res["naive"]
        diff = nv.get("max_rel_diff_vs_store")
        print(
            f"{'c. naive loop (PIL+torchvision, batch ' + str(nv['batch']) + ', NCHW eager, CSV)':<58}"
            f"{fmt_rate(nv['img_per_s']):>12}{nv['seconds']:>10.2f}{nv['images']:>9}{nv['cpu_ms_per_img']:>12.1f}"
        )
        if diff is not None:
            print(f"     naive vs store features: max |diff| / max |value| = {diff:.3g} (float16 store, resize rounding)")
        d, rd = res["disk"], res["read"]
        print(
            f"d. bytes on disk: store folder {d['store_dir_bytes'] / 1e6:.2f} MB "
            f"(committed part files {d['store_feature_part_bytes'] / 1e6:.2f} MB), CSV {d['csv_bytes'] / 1e6:.2f} MB "
            f"for {d['csv_rows']} rows"
            + (f" (the naive subset's {d['csv_tiled_from']} lines repeated)" if d["csv_tiled_from"] < d["csv_rows"] else "")
        )
        for key, label in (
            ("store", "open_store().batches(bs=1024), best of reps"),
            ("csv_module", "csv module"),
            ("np_loadtxt", "np.loadtxt"),
        ):
            x = rd[key]
            print(f"   read {label:<44} {x['rows_per_s']:>12,.0f} rows/s {x['mb_per_s']:>9,.1f} MB/s ({x['seconds']:.3f} s)")
        print("RATIOS (end-to-end uses workers=%d)" % r["workers_used_for_ratios"])
        rows = [
            ("end-to-end / forward-only", r["e2e_vs_forward"], ">= 0.85", r["e2e_vs_forward"] >= TARGETS["e2e_vs_forward"]),
            ("end-to-end / naive", r["e2e_vs_naive"], ">= 2x", r["e2e_vs_naive"] >= TARGETS["e2e_vs_naive"]),
            (
                "store read / CSV read (best CSV reader)",
                r["store_read_vs_csv_read"],
                ">= 10x",
                r["store_read_vs_csv_read"] >= TARGETS["store_read_vs_csv_read"],
            ),
            ("disk: CSV bytes / store bytes", r["disk_csv_over_store"], "(info)", None),
        ]
        for label, val, target, ok in rows:
            verdict = "" if ok is None else ("MET" if ok else "MISSED")
            print(f"   {label:<44}{val:>10.2f}   target {target:<8} {verdict}")
        by_w = ", ".join(f"w={w}: {v:.2f}" for w, v in r["e2e_vs_forward_by_workers"].items())
        print(
            f"   end-to-end / forward-only by workers: {by_w}; vs the median forward batch: {r['e2e_vs_forward_median']:.2f}"
        )
        print(
            f"   by CPU time per image instead of wall time: end-to-end / forward-only "
            f"{r['cpu_e2e_vs_forward']:.2f}, end-to-end / naive {r['cpu_e2e_vs_naive']:.2f}"
        )
    print("=" * 96)


# --------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=("both", "fmnist", "photos"), default="both")
    p.add_argument("--images", type=int, default=2000, help="Fashion-MNIST images (train+test), default 2000")
    p.add_argument("--photos", type=int, default=400, help="640x480 JPEG photos, default 400")
    p.add_argument("--input-size", type=int, default=96, help="Fashion-MNIST input size (default 96)")
    p.add_argument("--photo-input-size", type=int, default=224)
    p.add_argument("--layers", default="pre_logits", help="e.g. 'blocks.4,pre_logits'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", default="1,0,2", help="comma list; the first store is kept for read-back")
    p.add_argument("--forward-batches", type=int, default=6, help="timed batches per session (2 sessions)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--decode-sample", type=int, default=256)
    p.add_argument("--naive-subset", type=int, default=300, help="Fashion-MNIST images for the naive loop")
    p.add_argument("--naive-subset-photos", type=int, default=100)
    p.add_argument("--naive-batch", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 300 images, 60 photos, fewer batches")
    p.add_argument("--json", help="write the results as JSON here")
    p.add_argument("--workdir", help="scratch folder (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.photos = min(a.images, 300), min(a.photos, 60)
        a.forward_batches, a.warmup = min(a.forward_batches, 3), 1
        a.naive_subset, a.naive_subset_photos = min(a.naive_subset, 100), min(a.naive_subset_photos, 30)
        a.decode_sample = min(a.decode_sample, 64)
    a.workers = [int(w) for w in str(a.workers).split(",") if w.strip()]
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import deepfeat
    from deepfeat.extraction import default_workers

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "deepfeat": getattr(deepfeat, "__version__", "?"),
        "deepfeat_path": os.path.dirname(deepfeat.__file__),
        "loadavg_start": loadavg(),
    }
    dw = default_workers()
    work = args.workdir or tempfile.mkdtemp(prefix="deepfeat-bench-")
    os.makedirs(work, exist_ok=True)
    t_start = time.perf_counter()
    results = []
    try:
        if args.dataset in ("both", "fmnist"):
            log(f"writing Fashion-MNIST (~{args.images} PNGs)")
            src, n = make_fashion_mnist(os.path.join(work, "data"), args.images)
            results.append(run_dataset("fmnist", src, n, args.input_size, args, work))
        if args.dataset in ("both", "photos"):
            log(f"writing {args.photos} 640x480 JPEG photos")
            src, n = make_photos(os.path.join(work, "data"), args.photos)
            results.append(run_dataset("photos", src, n, args.photo_input_size, args, work))
        for res in results:
            res["ratios"] = ratios(res, dw)
        machine["loadavg_end"] = loadavg()
        machine["total_seconds"] = time.perf_counter() - t_start
        print_report(machine, results, dw)
        print(
            f"total benchmark time {machine['total_seconds']:.0f} s; workdir {work}"
            + (" (kept)" if args.keep else " (removed)")
        )
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(
                    {"machine": machine, "default_workers": dw, "targets": TARGETS, "args": vars(args), "results": results},
                    fh,
                    indent=2,
                    default=str,
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

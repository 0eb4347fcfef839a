#!/usr/bin/env python
"""Inference runtimes side by side: forward-only and end-to-end ``deepfeat extract`` per runtime and precision.

One run, one process, on the bundled EfficientNet-Lite0 with taps on ``blocks.4`` + ``pre_logits``:

* data sets: 640x480 JPEG photos made from scikit-image's samples at 224 px (batch 32), and
  Fashion-MNIST PNGs at 96 px (batch 64);
* configurations: every installed runtime at fp32, bf16 where the CPU computes it natively, OpenVINO
  int8 (NNCF, calibrated on a seeded sample of up to 300 of the data set's images) where NNCF is
  installed, and ``auto`` (what deepfeat picks here);
* the precision guard's outcome for each reduced precision: per tap min / median row cosine against
  torch fp32 on the forward batch and pass / fail at the default threshold (end to end, an int8 that
  the guard refuses is run again with ``min_agreement=0.5`` so its speed is still shown, marked);
* read + decode + resize img/s on one core through the decode workers' own function, for each resizer
  (``pillow``: resize the whole image, then crop -- every store before issue 24; ``torch``: the
  default), side by side, with the feature agreement; on grey files (Fashion-MNIST) also the path
  before stop 26 (grey converted to RGB at decode, three bands resized), with the same pixels;
* forward-only img/s: the runtime on one pre-decoded uint8 batch of real images, configurations
  interleaved round by round (so a busy machine slows all of them alike), median of the rounds;
  agreement: the minimum per-row cosine against torch fp32 over that batch;
* end-to-end img/s: ``deepfeat.extract`` into a fresh store (default decode workers), timed from the
  plan event (runtime built, export cached) to the end: decode, forward, pooling, commit; torch fp32
  and ``auto`` run ``--repeats`` times, interleaved round by round, and the targets use the median of
  the per-round ratios (one run of a few seconds moves by +-20 % on a shared 2-core VM);
* the export/compile time of each runtime on a cold cache is printed separately;
* 2048x1536 JPEG photos, end to end with and without the JPEG draft (DCT-domain downscale).

Then the ratios against torch fp32 and the targets (issue 24): ``auto`` end to end >= 4x torch fp32
end to end at 224 px (>= 4.5x at 96 px), >= 80 % of its own forward-only rate at 224 px, and decode +
resize >= 2x per core with the torch resizer. The ceiling: the fastest forward-only rate is what this
CPU can do; the decode workers each end-to-end run used (one per core, taking turns with a CPU runtime) are printed.

Usage:
    python benchmarks/runtimes.py                  # ~25 min on 2 AVX2 cores
    python benchmarks/runtimes.py --quick          # smoke run (~3 min)
    python benchmarks/runtimes.py --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from extract_throughput import make_fashion_mnist, make_photos  # noqa: E402

MODEL = "efficientnet_lite0"
LAYERS = "blocks.4,pre_logits"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    import torch

    from deepfeat.runtimes import cpu_model
    from deepfeat.runtimes.base import cpu_flags

    flags = cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f in flags]
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for mod in ("openvino", "onnxruntime"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            versions[mod] = "not installed"
    return {
        "cpu": cpu_model(),
        "flags": shown,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def configurations() -> list[tuple[str, str]]:
    """(runtime, precision) pairs that run here, the torch fp32 reference first, ``auto`` last."""
    from deepfeat.errors import UsageError
    from deepfeat.runtimes import RUNTIMES, resolve_runtime

    out = [("torch", "fp32")]
    for name in ("torch", *[n for n in RUNTIMES if n != "torch"]):
        for prec in ("fp32", "bf16", "int8"):
            if (name, prec) in out:
                continue
            try:
                resolve_runtime(name, "cpu", prec)
            except UsageError:
                continue
            if prec == "bf16":
                from deepfeat.runtimes import cpu_has_bf16

                if not cpu_has_bf16():
                    continue
            out.append((name, prec))
    return [*out, ("auto", "auto")]


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def decode_rates(files: list[str], input_size: int, rounds: int) -> dict[str, Any]:
    """Read + decode + resize + crop img/s on one core (this thread's CPU time) through the decode workers'
    own function (``prepare_batch``) per resizer, interleaved round by round, and the feature agreement
    (torch fp32, min row cosine) of the torch resizer with Pillow's. Where the files are grey (Fashion-MNIST),
    also the path before stop 26, which converted a grey image to RGB at decode and resized three bands:
    the same pixels (checked), so the ratio is the one-band resize's gain."""
    import torch
    from PIL import Image

    from deepfeat.data.decode import DecodePolicy, decode_file
    from deepfeat.data.worker import prepare_batch
    from deepfeat.models import load_backbone
    from deepfeat.runtimes import build_runtime, layer_specs
    from deepfeat.runtimes.guard import row_cosines

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core, as in a decode worker
    bb = load_backbone(MODEL, input_size=input_size)
    pres = {
        "pillow": dataclasses.replace(bb.preprocess, resizer="pillow"),
        "torch": dataclasses.replace(bb.preprocess, resizer="torch"),
    }
    items = [(str(i), f, 0) for i, f in enumerate(files[:256])]
    policy = DecodePolicy()

    def worker_path(pre: Any) -> np.ndarray:
        return np.stack([d.pixels[0] for d in prepare_batch(items, pre.to_dict(), policy)])  # type: ignore[union-attr]

    def rgb_at_decode(pre: Any) -> np.ndarray:
        return np.stack([pre.resize_crop(decode_file(f, policy, draft=pre.draft_size).image) for _, f, _ in items])

    paths = {"pillow": (worker_path, pres["pillow"]), "torch": (worker_path, pres["torch"])}
    with Image.open(files[0]) as first:
        grey = first.mode == "L"
    if grey:
        paths["torch, grey as RGB"] = (rgb_at_decode, pres["torch"])
    rates: dict[str, list[float]] = {k: [] for k in paths}
    pixels = {name: run(pre) for name, (run, pre) in paths.items()}  # warm-up (torch's first call)
    for _ in range(rounds):
        for name, (run, pre) in paths.items():
            t = time.thread_time()
            run(pre)
            rates[name].append(len(items) / (time.thread_time() - t))
    torch.set_num_threads(threads)
    rt = build_runtime(bb, layer_specs(bb, LAYERS), runtime="torch", precision="fp32")
    ref, new = rt(pixels["pillow"][:64]), rt(pixels["torch"][:64])
    out: dict[str, Any] = {k: statistics.median(v) for k, v in rates.items()}
    out["min_cosine"] = min(float(row_cosines(new[k], ref[k]).min()) for k in ref)
    out["max_pixel_difference"] = int(np.abs(pixels["torch"].astype(int) - pixels["pillow"]).max())
    if grey:
        out["grey_identical"] = bool(np.array_equal(pixels["torch"], pixels["torch, grey as RGB"]))
    return out


def calibration_of(files: list[str], input_size: int) -> Any:
    """The int8 calibration ``extract`` would use on these files: a seeded sample of up to 300, decoded."""
    from deepfeat.data.decode import decode_file
    from deepfeat.models import load_backbone
    from deepfeat.runtimes import CALIBRATION_IMAGES, CALIBRATION_SEED, Calibration
    from deepfeat.runtimes.guard import sample_indices

    pre = load_backbone(MODEL, input_size=input_size).preprocess
    picked = sample_indices(len(files), CALIBRATION_IMAGES, CALIBRATION_SEED)
    return Calibration.of(np.stack([pre.resize_crop(decode_file(files[i], draft=pre.draft_size).image) for i in picked]))


def forward_only(
    files: list[str],
    input_size: int,
    batch: int,
    configs: list[tuple[str, str]],
    rounds: int,
    per_round: int,
    cache: str,
    decode_rate: float,
) -> dict[str, dict[str, Any]]:
    from deepfeat.agreement import DEFAULT_MIN_AGREEMENT, Agreement
    from deepfeat.data.decode import decode_file
    from deepfeat.models import load_backbone
    from deepfeat.runtimes import build_runtime, layer_specs
    from deepfeat.runtimes.guard import row_cosines

    bb0 = load_backbone(MODEL, input_size=input_size)
    pixels = np.stack([bb0.preprocess.resize_crop(decode_file(p).image) for p in files[:batch]])
    calibration = calibration_of(files, input_size) if any(p == "int8" for _, p in configs) else None
    runtimes, res = {}, {}
    for rt, prec in configs:
        key = f"{rt} {prec}"
        bb = load_backbone(MODEL, input_size=input_size)
        t = time.perf_counter()
        runtimes[key] = build_runtime(
            bb,
            layer_specs(bb, LAYERS),
            runtime=rt,
            precision=prec,
            cache_dir=cache,
            calibration=calibration if prec == "int8" else None,
        )
        desc = runtimes[key].describe()
        res[key] = {
            "runtime": desc["runtime"],
            "precision": desc["precision"],
            "build_s": time.perf_counter() - t,
            "rounds": [],
        }
        log(f"{input_size}px {key}: {desc['runtime']} {desc['precision']} built in {res[key]['build_s']:.1f} s")
    ref = runtimes["torch fp32"](pixels)
    for key, r in runtimes.items():
        out = r(pixels)
        res[key]["min_cosine"] = min(min_cosine(out[k], ref[k]) for k in ref)
        if res[key]["precision"] != "fp32":  # the guard's rule on this batch
            taps = {
                k: {"min": float(row_cosines(out[k], ref[k]).min()), "median": float(np.median(row_cosines(out[k], ref[k])))}
                for k in ref
            }
            ag = Agreement(res[key]["precision"], res[key]["runtime"], len(pixels), DEFAULT_MIN_AGREEMENT, taps)
            res[key]["guard"] = (
                ("pass" if ag.passed else "FAIL")
                + "; "
                + "; ".join(f"{k} min {v['min']:.4f} median {v['median']:.4f}" for k, v in taps.items())
            )
        r(pixels)  # warm-up
    for i in range(rounds):
        for key, r in runtimes.items():
            r(pixels)  # untimed: lets the previous runtime's idle threads stop spinning on the cores
            t = time.perf_counter()
            for _ in range(per_round):
                r(pixels)
            res[key]["rounds"].append(per_round * len(pixels) / (time.perf_counter() - t))
        log(
            f"{input_size}px forward round {i + 1}/{rounds}: "
            + ", ".join(f"{k} {v['rounds'][-1]:.0f}" for k, v in res.items())
        )
    for v in res.values():
        v["img_per_s"] = statistics.median(v["rounds"])
    res["_decode_img_per_s_one_core"] = {"img_per_s": decode_rate}
    return res


def end_to_end(
    source: str, input_size: int, batch: int, configs: list[tuple[str, str]], work: str, cache: str, draft: bool = True
) -> dict[str, dict[str, Any]]:
    import deepfeat
    from deepfeat.errors import UsageError
    from deepfeat.models import load_backbone

    os.environ["DEEPFEAT_CACHE_DIR"] = cache
    res = {}
    for rt, prec in configs:
        key = f"{rt} {prec}"
        marks: dict[str, float] = {}

        def progress(ev: dict[str, Any], marks: dict[str, float] = marks) -> None:
            if ev.get("phase") == "plan":
                marks["plan"] = time.perf_counter()
                marks["runtime"] = ev.get("runtime")
                marks["precision"] = ev.get("precision")

        out = os.path.join(work, f"store-{input_size}-{rt}-{prec}")
        shutil.rmtree(out, ignore_errors=True)
        bb = load_backbone(MODEL, input_size=input_size)
        if not draft:
            bb.preprocess = dataclasses.replace(bb.preprocess, jpeg_draft=False)
        kw = dict(
            model=MODEL,
            layers=LAYERS,
            pool="avg",
            dtype="float16",
            batch_size=batch,
            device="cpu",
            runtime=rt,
            precision=prec,
            progress=progress,
            backbone=bb,
        )
        note = ""
        try:
            s = deepfeat.extract(source, out, **kw)
        except UsageError as exc:  # the guard refused an explicit precision: still show its speed
            note = f"guard refused at the default threshold ({str(exc).split('images: ', 1)[-1].split('. Use', 1)[0]})"
            log(f"{input_size}px end-to-end {key}: {note}; again with min_agreement=0.5")
            shutil.rmtree(out, ignore_errors=True)
            s = deepfeat.extract(source, out, min_agreement=0.5, **kw)
        end = time.perf_counter()
        n = s.embedded_now + s.failed_now
        res[key] = {
            "runtime": marks.get("runtime"),
            "precision": marks.get("precision"),
            "images": n,
            "img_per_s": n / (end - marks["plan"]),
            "summary_img_per_s": s.images_per_second,
            "decode_workers": s.decode_workers,
            "guard": note,
        }
        log(f"{input_size}px end-to-end {key}: {res[key]['img_per_s']:.1f} img/s ({n} images; {s.decode_workers})")
        shutil.rmtree(out, ignore_errors=True)
    return res


#: the configurations whose end-to-end runs are repeated, interleaved, for the targets' ratio
PAIRED = [("torch", "fp32"), ("auto", "auto")]


def paired_rounds(e2e: dict[str, dict[str, Any]], more: list[dict[str, dict[str, Any]]]) -> None:
    """Fold ``more`` end-to-end rounds of the :data:`PAIRED` configurations (each ran torch fp32, then auto:
    a slower stretch of a shared machine slows both) into ``e2e``, keeping every round: each paired
    configuration's ``img_per_s`` becomes the median of its rounds, ``ratios`` the per-round auto / torch
    fp32 ratios (their median is the figure the targets use)."""
    rounds = [e2e, *more]
    for key in (f"{rt} {prec}" for rt, prec in PAIRED):
        e2e[key]["rounds"] = [r[key]["img_per_s"] for r in rounds]
        e2e[key]["img_per_s"] = statistics.median(e2e[key]["rounds"])
    e2e["auto auto"]["ratios"] = [r["auto auto"]["img_per_s"] / r["torch fp32"]["img_per_s"] for r in rounds]


def report(name: str, fwd: dict[str, Any], e2e: dict[str, Any], dec: dict[str, Any]) -> dict[str, float]:
    base_f = fwd["torch fp32"]["img_per_s"]
    base_e = e2e["torch fp32"]["img_per_s"]
    print(f"\n{name}")
    print(
        f"{'configuration':<24}{'ran as':<22}{'forward img/s':>14}{'x torch':>9}{'min cos':>10}"
        f"{'e2e img/s':>11}{'x torch':>9}{'e2e/fwd':>9}{'build s':>9}"
    )
    for key, f in fwd.items():
        if key.startswith("_"):
            continue
        e = e2e[key]
        print(
            f"{key:<24}{f['runtime'] + ' ' + f['precision']:<22}{f['img_per_s']:>14,.1f}"
            f"{f['img_per_s'] / base_f:>9.2f}{f['min_cosine']:>10.5f}{e['img_per_s']:>11,.1f}"
            f"{e['img_per_s'] / base_e:>9.2f}{e['img_per_s'] / f['img_per_s']:>9.2f}{f['build_s']:>9.1f}"
        )
    best = max((v["img_per_s"] for k, v in fwd.items() if not k.startswith("_")))
    decode = fwd["_decode_img_per_s_one_core"]["img_per_s"]
    cores = os.cpu_count() or 1
    # Forward on every core plus decoding on the same cores: the most end to end can reach here.
    ceiling = cores / (cores / best + 1 / decode)
    auto = e2e["auto auto"]["img_per_s"]
    print(
        f"decode + resize on one core: {decode:,.0f} img/s; fastest forward-only: {best:,.0f} img/s; "
        f"end-to-end ceiling on {cores} cores (forward + decode sharing them): {ceiling:,.0f} img/s; "
        f"auto reaches {auto / ceiling:.0%} of it"
    )
    print(
        f"decode + resize img/s per core: pillow resizer {dec['pillow']:,.0f}, torch resizer (default) "
        f"{dec['torch']:,.0f} ({dec['torch'] / dec['pillow']:.2f}x); torch vs pillow: max pixel difference "
        f"{dec['max_pixel_difference']}, min feature cosine {dec['min_cosine']:.5f}"
    )
    if "grey_identical" in dec:
        print(
            f"grey files, torch resizer: one band to the crop {dec['torch']:,.0f} img/s per core, RGB at decode "
            f"(before stop 26) {dec['torch, grey as RGB']:,.0f} ({dec['torch'] / dec['torch, grey as RGB']:.2f}x); "
            f"pixels identical: {dec['grey_identical']}"
        )
    for key, f in fwd.items():
        if "guard" in f:
            print(f"precision guard, {key} ({f['runtime']} {f['precision']}) on the forward batch: {f['guard']}")
    for key, e in e2e.items():
        if e.get("guard"):
            print(f"end to end, {key}: {e['guard']}; timed with min_agreement=0.5")
    paired = e2e["auto auto"].get("ratios", [])
    if len(paired) > 1:
        print(
            f"end to end, {len(paired)} interleaved rounds: torch fp32 "
            + " / ".join(f"{v:,.1f}" for v in e2e["torch fp32"]["rounds"])
            + " img/s, auto "
            + " / ".join(f"{v:,.1f}" for v in e2e["auto auto"]["rounds"])
            + " img/s; auto / torch fp32 per round "
            + " / ".join(f"{v:.2f}x" for v in paired)
            + f", median {statistics.median(paired):.2f}x (the figure the targets use; the table shows the"
            " medians of the rounds)"
        )
    print("decode workers chosen end to end: " + "; ".join(f"{k}: {e.get('decode_workers') or '?'}" for k, e in e2e.items()))
    return {
        "auto_e2e_vs_torch_e2e": statistics.median(paired) if paired else auto / base_e,
        "auto_e2e_vs_auto_forward": e2e["auto auto"]["img_per_s"] / fwd["auto auto"]["img_per_s"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=1152, help="640x480 JPEG photos (224 px)")
    p.add_argument("--fashion", type=int, default=6000, help="Fashion-MNIST images (96 px)")
    p.add_argument("--big-photos", type=int, default=128, help="2048x1536 JPEG photos (224 px, draft vs full)")
    p.add_argument("--rounds", type=int, default=5, help="forward-only rounds")
    p.add_argument(
        "--repeats", type=int, default=3, help="end-to-end rounds of torch fp32 and auto, interleaved (median ratio)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: fewer images and rounds")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.photos, args.fashion, args.rounds, args.big_photos, args.repeats = 96, 400, 2, 32, 1
    info = machine()
    print(
        f"CPU: {info['cpu']} ({info['cores']} cores; flags: {', '.join(info['flags']) or 'none of note'}); "
        f"torch threads {info['torch_threads']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    configs = configurations()
    results: dict[str, Any] = {"machine": info, "configs": configs}
    with tempfile.TemporaryDirectory(prefix="deepfeat-bench-runtimes-") as work:
        cache = os.path.join(work, "cache")
        photos, _ = make_photos(work, args.photos)
        fm, _ = make_fashion_mnist(work, args.fashion)
        jobs = [
            ("JPEG photos 640x480 at 224 px, batch 32", photos, 224, 32, 4),
            ("Fashion-MNIST PNGs at 96 px, batch 64", fm, 96, 64, 4),
        ]
        ratios = {}
        for title, src, size, batch, per_round in jobs:
            files = sorted(
                os.path.join(r, f) for r, _, fs in os.walk(src) for f in fs if f.lower().endswith((".jpg", ".jpeg", ".png"))
            )
            dec = decode_rates(files, size, args.rounds)
            fwd = forward_only(files, size, batch, configs, args.rounds, per_round, cache, dec["torch"])
            e2e = end_to_end(src, size, batch, configs, work, cache)
            more = [end_to_end(src, size, batch, PAIRED, work, cache) for _ in range(args.repeats - 1)]
            paired_rounds(e2e, more)
            ratios[size] = report(title, fwd, e2e, dec)
            results[str(size)] = {"decode_per_core": dec, "forward": fwd, "end_to_end": e2e}
        # Large photos: the JPEG draft (DCT-domain downscale) against a full decode, end to end.
        big = os.path.join(work, "big")
        os.makedirs(big, exist_ok=True)
        big_src, _ = make_photos(big, args.big_photos, size=(2048, 1536))
        picked = [("torch", "fp32"), ("auto", "auto")]
        # with, without, without, with: a short run's place in the sequence does not decide the ratio
        runs: dict[bool, list[dict[str, dict[str, Any]]]] = {True: [], False: []}
        for draft in (True, False, False, True):
            runs[draft].append(end_to_end(big_src, 224, 32, picked, work, cache, draft=draft))
        print(
            "\nJPEG photos 2048x1536 at 224 px, batch 32: end-to-end img/s with / without the JPEG draft "
            "(mean of 2 rounds each, run with, without, without, with)"
        )
        for key in runs[True][0]:
            a, b = ([r[key]["img_per_s"] for r in runs[d]] for d in (True, False))
            ran_as = f"{runs[True][0][key]['runtime']} {runs[True][0][key]['precision']}"
            print(
                f"{key:<24}{ran_as:<22}{statistics.mean(a):>10,.1f} / {statistics.mean(b):,.1f} img/s "
                f"({statistics.mean(a) / statistics.mean(b):.2f}x; rounds {' / '.join(f'{x:.1f}' for x in a)} "
                f"with, {' / '.join(f'{x:.1f}' for x in b)} without)"
            )
        results["big_photos"] = {"draft": runs[True], "full_decode": runs[False]}
    print("\ntargets")
    r224 = ratios[224]
    print(f"auto end-to-end vs torch fp32 end-to-end at 224 px: {r224['auto_e2e_vs_torch_e2e']:.2f}x (target >= 4)")
    print(f"auto end-to-end vs auto forward-only at 224 px: {r224['auto_e2e_vs_auto_forward']:.2f} (target >= 0.80)")
    print(f"auto end-to-end vs torch fp32 end-to-end at 96 px: {ratios[96]['auto_e2e_vs_torch_e2e']:.2f}x (target >= 4.5)")
    d224 = results["224"]["decode_per_core"]
    print(
        f"decode + resize per core at 224 px, torch resizer vs pillow: {d224['torch'] / d224['pillow']:.2f}x (target >= 2)"
    )
    results["ratios"] = ratios
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1, default=str)


if __name__ == "__main__":
    main()

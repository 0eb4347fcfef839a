#!/usr/bin/env python
"""One GPU check, under 8 minutes on one GPU: extraction speed and agreement of the CUDA path.

Prints, for EfficientNet-Lite0 (bundled weights) and ResNet-50 (random weights: no hub is
needed, speed does not depend on the values) at batch 256, 224 px:

* forward-only img/s of the torch runtime on CUDA at fp32, and with AMP (bf16, fp16), channels-last,
  from pinned memory with non-blocking copies;
* end-to-end ``deepfeat.extract`` img/s on CUDA (AMP) from JPEG photos;
* JPEG decoding on the GPU with ``torchvision.io.decode_jpeg(device="cuda")`` vs Pillow on the CPU,
  where torchvision offers it;
* agreement: minimum per-row cosine of CUDA fp32 / AMP features against the CPU torch fp32 features.

Usage (on a machine with a CUDA GPU):
    python benchmarks/gpu_check.py                  # writes nothing; prints a table
    python benchmarks/gpu_check.py --json gpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from extract_throughput import make_photos  # noqa: E402

LAYERS = {"efficientnet_lite0": "blocks.4,pre_logits", "timm:resnet50": "layer3,pre_logits"}
BATCH = 256


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)).min())


def backbone(model: str) -> Any:
    from deepfeat.models import load_backbone

    return load_backbone(model, None if model == "efficientnet_lite0" else "random")


def forward(model: str, pixels: np.ndarray, reps: int) -> dict[str, Any]:
    import torch

    from deepfeat.runtimes import build_runtime, layer_specs

    out: dict[str, Any] = {}
    bb = backbone(model)
    cpu = build_runtime(bb, layer_specs(bb, LAYERS[model]), runtime="torch", device="cpu", precision="fp32")
    ref = cpu(pixels[:32])
    precisions = ["fp32", "fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    for prec in precisions:
        bb = backbone(model)
        rt = build_runtime(bb, layer_specs(bb, LAYERS[model]), runtime="torch", device="cuda", precision=prec)
        rt(pixels)  # warm-up (cuDNN autotuning)
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            rt(pixels)
        torch.cuda.synchronize()
        rate = reps * len(pixels) / (time.perf_counter() - t)
        got = rt(pixels[:32])
        cos = min(min_cosine(got[k], ref[k]) for k in ref)
        out[prec] = {"img_per_s": rate, "min_cosine_vs_cpu_fp32": cos}
        print(f"{model:<22}forward {prec:<5}{rate:>10,.0f} img/s   min cosine vs CPU fp32 {cos:.5f}", flush=True)
        del rt
        torch.cuda.empty_cache()
    return out


def end_to_end(model: str, photos: str, work: str) -> dict[str, Any]:
    import deepfeat

    out = os.path.join(work, "store")
    shutil.rmtree(out, ignore_errors=True)
    marks: dict[str, float] = {}

    def progress(ev: dict[str, Any]) -> None:
        if ev["phase"] == "plan":
            marks["t"] = time.perf_counter()

    s = deepfeat.extract(
        photos,
        out,
        model=model,
        weights=None if model == "efficientnet_lite0" else "random",
        layers=LAYERS[model],
        batch_size=BATCH,
        device="cuda",
        runtime="torch",
        precision="auto",
        dtype="float16",
        progress=progress,
    )
    rate = s.embedded_now / (time.perf_counter() - marks["t"])
    print(f"{model:<22}end-to-end extract (CUDA, AMP, {os.cpu_count()} CPU cores decoding): {rate:,.0f} img/s", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return {"img_per_s": rate, "images": s.embedded_now}


def gpu_decode(photos: str) -> dict[str, Any]:
    import torch
    import torchvision
    from PIL import Image

    files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith(".jpg"))[:256]
    datas = [torchvision.io.read_file(f) for f in files]
    t = time.perf_counter()
    for f in files:
        with Image.open(f) as im:
            im.convert("RGB").load()
    cpu_rate = len(files) / (time.perf_counter() - t)
    try:
        torchvision.io.decode_jpeg(datas[:8], device="cuda")
        torch.cuda.synchronize()
        t = time.perf_counter()
        torchvision.io.decode_jpeg(datas, device="cuda")
        torch.cuda.synchronize()
        gpu_rate = len(files) / (time.perf_counter() - t)
    except Exception as exc:  # noqa: BLE001 - not every build has nvjpeg
        print(f"GPU JPEG decode unavailable: {exc}")
        gpu_rate = None
    print(
        f"JPEG decode 640x480: Pillow one core {cpu_rate:,.0f} img/s; torchvision nvjpeg (batched) "
        f"{'-' if gpu_rate is None else f'{gpu_rate:,.0f}'} img/s",
        flush=True,
    )
    return {"pillow_one_core": cpu_rate, "nvjpeg": gpu_rate}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos", type=int, default=2048)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    from deepfeat.data.decode import decode_file
    from deepfeat.models import load_backbone

    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; CPU cores {os.cpu_count()}")
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="deepfeat-gpu-") as work:
        photos, _ = make_photos(work, args.photos)
        files = sorted(os.path.join(photos, f) for f in os.listdir(photos) if f.endswith(".jpg"))[:BATCH]
        pre = load_backbone("efficientnet_lite0").preprocess
        pixels = np.stack([pre.resize_crop(decode_file(f).image) for f in files])
        for model in LAYERS:
            results[model] = {"forward": forward(model, pixels, args.reps), "end_to_end": end_to_end(model, photos, work)}
        results["decode"] = gpu_decode(photos)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

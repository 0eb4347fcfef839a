#!/usr/bin/env python
"""Ray engine throughput: local vs Ray with 1 and 2 workers, and the overhead of Ray.

Writes ~1,000 real Fashion-MNIST PNGs (50 per class and split), then runs ``deepfeat.extract``
(EfficientNet-Lite0, ``pre_logits``, float32, 224x224 input) into fresh stores:

- ``local``: the local engine with its defaults (decode workers = spare cores, torch's threads);
- ``local 1 thread``: the same with ``torch.set_num_threads(1)`` -- the like-for-like reference of a
  1-CPU Ray worker (the Ray overhead column compares each Ray run with it);
- ``ray 1w x 1cpu``, ``ray 1w x 2cpu``, ``ray 2w x 1cpu``: the Ray engine on a local Ray instance
  (``ray.init(num_cpus=N)``) that is started once beforehand -- as a cluster is -- and timed apart.

For each run it prints wall seconds (``summary.seconds``: planning + worker start-up + work),
end-to-end img/s, the seconds until the first part was committed, the steady-state img/s between the
first and the last committed part (start-up excluded), and the wall-time overhead against
``local 1 thread``. The machine's load average is printed too: on a shared machine, compare runs of
one invocation only. Parts hold 64 inputs (``--part-size``) so that
two workers have parts to share; real runs use the default (~256 MiB per part).

Usage:
    python benchmarks/ray_throughput.py                  # ~3-5 min on 2 cores
    python benchmarks/ray_throughput.py --per-class 10   # smoke run
    python benchmarks/ray_throughput.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(src: str, out: str, part_size: int, **kw: Any) -> dict[str, Any]:
    import deepfeat

    commits: list[tuple[float, int]] = []

    def progress(event: dict[str, Any]) -> None:
        if event["phase"] == "batch":
            commits.append((time.perf_counter(), event["done"]))

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = deepfeat.extract(
        src, out, layers="pre_logits", dtype="float32", device="cpu", part_size=part_size, progress=progress, **kw
    )
    n = s.embedded_now + s.failed_now
    # Ray reports one "batch" event per committed part; the local engine one per batch: group by part size.
    steady = None
    if getattr(kw.get("engine"), "name", kw.get("engine")) == "ray" and len(commits) >= 3:
        first, last = commits[0][0], commits[-1][0]
        steady = sum(d for _, d in commits[1:]) / (last - first) if last > first else None
    elif len(commits) >= 3:
        marks = [t for t, _ in commits]
        firsts = int(part_size // max(1, commits[0][1]))  # batches in the first part
        if len(marks) > firsts + 1:
            steady = (n - part_size) / (marks[-1] - marks[firsts - 1])
    return {
        "images": n,
        "seconds": round(s.seconds, 2),
        "img_per_s": round(n / s.seconds, 1),
        "first_part_s": round(commits[0][0] - t0, 1) if commits else None,
        "load": os.getloadavg()[0],
        "steady_img_per_s": round(steady, 1) if steady else None,
        "parts": s.parts_committed,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--part-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs of the local Ray instance")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import ray
    import torch

    from deepfeat.datasets import write_fashion_mnist

    tmp = tempfile.mkdtemp(prefix="deepfeat-ray-bench-")
    try:
        src = os.path.join(tmp, "fm")
        write_fashion_mnist(src, per_class=args.per_class)
        from deepfeat.engines.builtin import RayEngine

        common = dict(batch_size=args.batch_size)
        results: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "ray": ray.__version__,
                "torch_threads": torch.get_num_threads(),
            }
        }
        log("local engine")
        results["local"] = run(src, os.path.join(tmp, "local"), args.part_size, **common)
        log("local engine, 1 torch thread")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results["local 1 thread"] = run(src, os.path.join(tmp, "local1"), args.part_size, **common)
        finally:
            torch.set_num_threads(threads)
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        results["ray_init_s"] = round(time.perf_counter() - t, 2)
        try:
            for workers, cpus in ((1, 1), (1, args.cpus), (2, 1)):
                if workers * cpus > args.cpus:
                    continue
                name = f"ray {workers}w x {cpus}cpu"
                log(name)
                results[name] = run(
                    src,
                    os.path.join(tmp, name.replace(" ", "_")),
                    args.part_size,
                    engine=RayEngine(workers=workers, cpus_per_worker=cpus),
                    **common,
                )
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ref = results["local 1 thread"]
    print(f"| {'run':<16} | images | wall s | img/s | 1st part s | steady img/s | overhead s | load |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        if not isinstance(r, dict) or "images" not in r:
            continue
        over = f"{r['seconds'] - ref['seconds']:+.1f}" if name.startswith("ray") else "-"
        steady = f"{r['steady_img_per_s']:.1f}" if r["steady_img_per_s"] else "-"
        print(
            f"| {name:<16} | {r['images']} | {r['seconds']:.1f} | {r['img_per_s']:.1f} | {r['first_part_s']} | "
            f"{steady} | {over} | {r['load']:.1f} |"
        )
    print(f"ray.init (local instance, once): {results['ray_init_s']:.1f} s; machine: {results['machine']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

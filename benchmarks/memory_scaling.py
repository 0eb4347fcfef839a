"""Peak RSS of `deepfeat extract` at N and k*N images: memory must not grow with the input count.

Each extraction runs in a fresh subprocess (`deepfeat extract` via the CLI) on real
Fashion-MNIST PNGs and reports its peak RSS (ru_maxrss of the extracting process). Prints both figures and
their ratio (target: within 10 %).

    python benchmarks/memory_scaling.py [--small 1000] [--factor 6] [--input-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time, deepfeat
t = time.perf_counter()
s = deepfeat.extract(sys.argv[1], sys.argv[2], layers="blocks.4,pre_logits", pool="avg", dtype="float16",
                     input_size=int(sys.argv[3]), workers=1, part_size=int(sys.argv[4]))
print(json.dumps({"embedded": s.embedded_total, "seconds": time.perf_counter() - t,
                  "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def run(src: str, out: str, input_size: int, part_size: int) -> dict:
    res = subprocess.run(
        [sys.executable, "-c", CHILD, src, out, str(input_size), str(part_size)], check=True, capture_output=True, text=True
    )
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=1000, help="images in the small run")
    ap.add_argument("--factor", type=int, default=6, help="the large run has factor x small images")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--part-size", type=int, default=512)
    args = ap.parse_args()
    from deepfeat.datasets import write_fashion_mnist

    work = tempfile.mkdtemp(prefix="deepfeat-mem-")
    try:
        results = {}
        for n in (args.small, args.small * args.factor):
            src = os.path.join(work, f"fm{n}")
            write_fashion_mnist(src, per_class=n // 20)  # train + test, 10 classes
            t = time.perf_counter()
            results[n] = run(src, os.path.join(work, f"feats{n}"), args.input_size, args.part_size)
            results[n]["wall"] = time.perf_counter() - t
        # (A decode worker's own RSS is ~40 MiB; RUSAGE_CHILDREN's maxrss is not used because
        # Linux carries the parent's high-water mark across fork+exec.)
        print(f"{'images':>8} {'peak RSS main process':>22} {'img/s':>8}")
        for r in results.values():
            print(f"{r['embedded']:>8} {r['maxrss_kib'] / 1024:>18.0f} MiB {r['embedded'] / r['seconds']:>8.1f}")
        small, large = results[args.small], results[args.small * args.factor]
        ratio = large["maxrss_kib"] / small["maxrss_kib"]
        print(f"peak RSS ratio ({args.factor}x images): {ratio:.3f}  (target <= 1.10)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

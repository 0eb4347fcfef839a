"""Peak memory of streaming training against the store's size and the memory budget.

Extracts Fashion-MNIST with EfficientNet-Lite0's ``blocks.2`` unpooled in float32 (5,760 dims
per image at 96 px, 22.5 KiB a row) into stores of growing size, then trains the streaming
logistic head on each with the same ``--budget`` in a fresh process, and reports how much the
process's resident memory grew while training:

* the process first trains once on the smallest store (torch, scikit-learn and the head are
  initialised, their one-off allocations made), then the kernel's peak-RSS counter is reset
  (``/proc/self/clear_refs``), then the measured training runs; growth = peak - resident at reset;
* the target: growth below the budget on every store, and about the same growth on every store
  (ratio largest / smallest store close to 1).

    python benchmarks/train_memory.py [--sizes 100,200,400] [--budget 32MiB] [--batch-size 64]
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
import json, sys, deepfeat

def status(key):
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

warm, target, budget, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
before_warm = status("VmRSS")
deepfeat.train(warm, layers="blocks.2", head="logreg", solver="stream", epochs=1, batch_size=batch,
               memory_budget=budget)
after_warm = status("VmHWM")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak-RSS counter to the current RSS
base = status("VmRSS")
r = deepfeat.train(target, layers="blocks.2", head="logreg", solver="stream", epochs=2, batch_size=batch,
                   memory_budget=budget)
print(json.dumps({"before_warm": before_warm, "warm_peak": after_warm, "base": base, "peak": status("VmHWM"),
                  "val_accuracy": r.validation.get("accuracy"), "seconds": r.seconds}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,200,400", help="images per class and split of each store")
    ap.add_argument("--budget", default="32MiB", help="memory budget given to training")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--workdir", default=None, help="keep the stores here (reused when present)")
    args = ap.parse_args()
    import deepfeat
    from deepfeat.datasets import write_fashion_mnist
    from deepfeat.units import parse_size

    budget = parse_size(args.budget, "--budget")
    sizes = [int(s) for s in args.sizes.split(",")]
    work = args.workdir or tempfile.mkdtemp(prefix="deepfeat-trainmem-")
    os.makedirs(work, exist_ok=True)
    try:
        stores = []
        for n in sizes:
            src = os.path.join(work, f"fm{n}")
            if not os.path.isdir(os.path.join(src, "test")):
                write_fashion_mnist(src, per_class=n)
            path = os.path.join(work, f"blocks2_{n}_{args.input_size}")
            t = time.perf_counter()
            deepfeat.extract(
                src, path, layers="blocks.2", pool="none", dtype="float32", input_size=args.input_size, workers=1
            )
            st = deepfeat.open_store(path)
            nbytes = sum(i["bytes"] for p in st.parts for k, i in p.files.items() if k.endswith(".npy"))
            print(
                f"store {n}/class: {st.num_rows()} rows x {st.layer('blocks.2').dims} dims float32 = "
                f"{nbytes / 2**20:.0f} MiB (extract {time.perf_counter() - t:.0f} s)",
                flush=True,
            )
            stores.append((n, path, nbytes))
        print(f"\nmemory budget {budget / 2**20:.0f} MiB, batch size {args.batch_size}, logreg, 2 epochs\n")
        print(
            f"{'store':>10}{'store MiB':>11}{'x budget':>10}{'growth MiB':>12}{'/ budget':>10}"
            f"{'peak MiB':>10}{'val acc':>9}{'s':>7}"
        )
        growths = []
        for n, path, nbytes in stores:
            out = subprocess.run(
                [sys.executable, "-c", CHILD, stores[0][1], path, str(budget), str(args.batch_size)],
                check=True,
                capture_output=True,
                text=True,
            )
            m = json.loads(out.stdout.strip().splitlines()[-1])
            growth = m["peak"] - m["base"]
            growths.append(growth)
            print(
                f"{n:>8}/c{nbytes / 2**20:>11.0f}{nbytes / budget:>10.1f}{growth / 2**20:>12.1f}"
                f"{growth / budget:>10.2f}{m['peak'] / 2**20:>10.0f}{m['val_accuracy']:>9.3f}{m['seconds']:>7.0f}",
                flush=True,
            )
        print(
            f"\ngrowth on the largest store / on the smallest: {growths[-1] / max(growths[0], 1):.2f} "
            f"(store {stores[-1][2] / stores[0][2]:.0f}x larger)"
        )
        print(f"largest growth / budget: {max(growths) / budget:.2f} (target < 1)")
        print(
            f"one-off cost of the first training in a process (torch, scikit-learn, head): "
            f"{(m['warm_peak'] - m['before_warm']) / 2**20:.0f} MiB, not counted against the budget"
        )
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

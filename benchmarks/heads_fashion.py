"""Fashion-MNIST accuracy table of the heads on the bundled backbone's features.

Extracts Fashion-MNIST (``--per-class`` images per class and split, upsampled to ``--input-size``)
with EfficientNet-Lite0 (`blocks.4` and `pre_logits`, avg, float16), then trains each head on
the last layer and on both layers, and prints test accuracy, epochs, time per epoch and total
time. The streaming logistic regression is compared with scikit-learn's exact solver on the same
standardised features (target: within 1 accuracy point), and with the data set's published
baselines. Then the memory check: training the streaming head on an unpooled layer stored in
float32 whose size exceeds the memory budget given to training, reporting the peak RSS growth.

    python benchmarks/heads_fashion.py [--per-class 500] [--input-size 96] [--epochs 15]
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

PUBLISHED = {"raw-pixel SVC": 0.897, "HOG + SVM": 0.926, "small CNNs": "0.90-0.93"}

# VmHWM (not ru_maxrss, which Linux carries over from the parent across fork + exec).
RSS_CHILD = r"""
import json, sys, torch, deepfeat, deepfeat.training
def hwm():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
base = hwm()
r = deepfeat.train(sys.argv[1], layers=sys.argv[2], head="logreg", solver="stream", epochs=2,
                   batch_size=256, memory_budget=int(sys.argv[3]))
print(json.dumps({"base_kib": base, "peak_kib": hwm(), "val_accuracy": r.validation.get("accuracy")}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    import deepfeat
    from deepfeat.datasets import write_fashion_mnist

    work = args.workdir or tempfile.mkdtemp(prefix="deepfeat-heads-")
    try:
        src = os.path.join(work, "fm")
        write_fashion_mnist(src, per_class=args.per_class)
        feats = os.path.join(work, "feats")
        t = time.perf_counter()
        s = deepfeat.extract(src, feats, layers="blocks.4,pre_logits", pool="avg", dtype="float16",
                             input_size=args.input_size, workers=1)
        print(f"extracted {s.embedded_total} images in {time.perf_counter() - t:.0f} s "
              f"({args.per_class} per class and split, {args.input_size} px)")
        rows = []
        for layers in ("pre_logits", "blocks.4,pre_logits"):
            for head, solver in (("logreg", "stream"), ("svm", "stream"), ("mlp", "stream"),
                                 ("logreg", "exact"), ("svm", "exact")):
                bundle = os.path.join(work, f"{head}-{solver}-{layers.replace(',', '+')}.dfm")
                t = time.perf_counter()
                r = deepfeat.train(feats, layers=layers, head=head, solver=solver, epochs=args.epochs,
                                   hidden=(256,), out=bundle)
                seconds = time.perf_counter() - t
                rep = deepfeat.evaluate(bundle, feats, split="test")
                epochs = len(r.history) or None
                per_epoch = (sum(h.get("seconds", 0) for h in r.history) / epochs) if epochs else None
                rows.append((layers, head, solver, rep["accuracy"], epochs, per_epoch, seconds))
        print(f"\n{'layers':<22}{'head':<8}{'solver':<8}{'test acc':>9}{'epochs':>8}{'s/epoch':>9}{'total s':>9}")
        for layers, head, solver, acc, ep, pe, sec in rows:
            print(f"{layers:<22}{head:<8}{solver:<8}{acc:>9.4f}{ep or '-':>8}"
                  f"{(f'{pe:.2f}' if pe else '-'):>9}{sec:>9.1f}")
        acc = {(lay, h, so): a for lay, h, so, a, *_ in rows}
        gap = acc[("pre_logits", "logreg", "stream")] - acc[("pre_logits", "logreg", "exact")]
        print(f"\nstreaming vs exact logistic regression on pre_logits: {gap * 100:+.2f} points (target within 1)")
        print("published Fashion-MNIST baselines:", ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))

        # Memory: a store larger than the budget given to training.
        big = os.path.join(work, "unpooled")
        deepfeat.extract(src, big, layers="blocks.2", pool="none", dtype="float32",
                         input_size=args.input_size, workers=1)
        store = deepfeat.open_store(big)
        store_bytes = sum(i["bytes"] for p in store.parts for n, i in p.files.items() if n.endswith(".npy"))
        budget = store_bytes // 4
        out = subprocess.run([sys.executable, "-c", RSS_CHILD, big, "blocks.2", str(budget)],
                             check=True, capture_output=True, text=True)
        m = json.loads(out.stdout.strip().splitlines()[-1])
        growth = (m["peak_kib"] - m["base_kib"]) * 1024
        print(f"\nunpooled blocks.2 store: {store_bytes / 2**20:.0f} MiB of features ({store.layer('blocks.2').dims} "
              f"dims, float32); memory budget {budget / 2**20:.0f} MiB; peak RSS growth while training "
              f"{growth / 2**20:.0f} MiB (peak {m['peak_kib'] / 1024:.0f} MiB incl. torch); "
              f"val accuracy {m['val_accuracy']:.3f}")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

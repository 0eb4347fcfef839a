"""Why the precision guard's default threshold is 0.98: head accuracy against feature agreement.

Extracts Fashion-MNIST (``--per-class`` images per class and split, 96 px, taps blocks.4 and
pre_logits) once at fp32 and once at every reduced precision the CPU runs natively (bf16) and
int8 (OpenVINO + NNCF, calibrated on 300 of the job's images, where NNCF is installed; extracted
with ``min_agreement=0.5`` so that the guard records but does not refuse it: its line says whether the
default 0.98 would have passed), then trains the same logistic-regression head on each store and
scores it on the test split. To see where
accuracy starts to suffer, it also adds Gaussian noise of growing size to the fp32 features (a
stand-in for a precision worse than any we ship): for each level it prints the per-tap minimum and
median row cosine against fp32 (what the guard measures) and the head's test accuracy.

    python benchmarks/precision_guard.py --per-class 300

Prints the CPU model and flags; the claim is the accuracy difference at each agreement level,
measured side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

import deepfeat
from deepfeat.agreement import DEFAULT_MIN_AGREEMENT, Agreement
from deepfeat.datasets import write_fashion_mnist
from deepfeat.errors import UsageError
from deepfeat.runtimes import cpu_has_bf16, cpu_model, resolve_runtime
from deepfeat.runtimes.base import cpu_flags
from deepfeat.runtimes.guard import row_cosines
from deepfeat.store.reader import FeatureStore

LAYERS = ("blocks.4", "pre_logits")


def load(store: str) -> dict[str, tuple[dict[str, np.ndarray], np.ndarray]]:
    """{split: ({layer: X}, labels)} with rows in id order (two stores of the same inputs line up)."""
    fs = FeatureStore(store)
    out = {}
    for split in ("train", "test"):
        feats = {}
        for layer in LAYERS:
            x, y, meta = fs.load(layer, split=split)
            order = np.argsort(np.asarray(meta.column("id").to_pylist()))
            feats[layer] = x[order]
        out[split] = (feats, y[order])
    return out


def accuracy(train: dict[str, np.ndarray], y_train: np.ndarray, test: dict[str, np.ndarray], y_test: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr = np.concatenate([train[k] for k in LAYERS], axis=1)
    xte = np.concatenate([test[k] for k in LAYERS], axis=1)
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=1.0, max_iter=300).fit(scaler.transform(xtr), y_train)
    return float((clf.predict(scaler.transform(xte)) == y_test).mean())


def agreement(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    parts = []
    for k in LAYERS:
        cos = row_cosines(got[k], ref[k])
        parts.append(f"{k} min {cos.min():.4f} median {np.median(cos):.4f}")
    return "; ".join(parts)


def noisy(feats: dict[str, np.ndarray], sigma: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Features plus N(0, (sigma * rms of the layer)^2) per value: cosine ~ 1 / sqrt(1 + sigma^2)."""
    return {
        k: v + rng.normal(0.0, sigma * float(np.sqrt((v.astype(np.float64) ** 2).mean())), v.shape).astype(np.float32)
        for k, v in feats.items()
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx", "amx")))
    print(f"CPU: {cpu_model()}; flags: {' '.join(flags)}; native bf16: {cpu_has_bf16()}")
    work = args.workdir or tempfile.mkdtemp(prefix="deepfeat-guard-")
    data = os.path.join(work, "fm")
    if not os.path.isdir(data):
        write_fashion_mnist(data, per_class=args.per_class)
    precisions = ["fp32"]
    for p in ("bf16", "int8"):
        try:
            resolve_runtime("auto", "cpu", p)
            if cpu_has_bf16() or p == "int8":
                precisions.append(p)
        except UsageError:
            pass
    stores, guarded = {}, {}
    for p in precisions:
        out = os.path.join(work, f"store_{p}")
        t0 = time.perf_counter()
        deepfeat.extract(data, out, layers=",".join(LAYERS), input_size=96, precision=p, min_agreement=0.5, progress=None)
        print(f"extract {p}: {time.perf_counter() - t0:.1f} s")
        stores[p] = load(out)
        ag = FeatureStore(out).metadata.get("runtime", {}).get("agreement")
        if ag:  # the guard's own measurement (64 images), judged at the default threshold
            at_default = Agreement.from_dict({**ag, "threshold": DEFAULT_MIN_AGREEMENT})
            guarded[p] = f"guard at {DEFAULT_MIN_AGREEMENT}: {'pass' if at_default.passed else 'FAIL'}"
    ref = stores["fp32"]
    (ref_tr, y_tr), (ref_te, y_te) = ref["train"], ref["test"]
    base = accuracy(ref_tr, y_tr, ref_te, y_te)
    print(f"\n{'features':<22} {'accuracy':>9} {'vs fp32':>8}  agreement with fp32 (test rows)")
    print(f"{'fp32':<22} {base:>9.4f} {0:>+8.4f}  (reference)")
    for p in precisions[1:]:
        (tr, ytr), (te, yte) = stores[p]["train"], stores[p]["test"]
        acc = accuracy(tr, ytr, te, yte)
        print(
            f"{p + ' (measured)':<22} {acc:>9.4f} {acc - base:>+8.4f}  {agreement(te, ref_te)}"
            + (f"  [{guarded[p]}]" if p in guarded else "")
        )
    rng = np.random.default_rng(0)
    for sigma in (0.05, 0.1, 0.2, 0.3, 0.5):
        tr, te = noisy(ref_tr, sigma, rng), noisy(ref_te, sigma, rng)
        acc = accuracy(tr, y_tr, te, y_te)
        print(f"{f'fp32 + noise {sigma:g}':<22} {acc:>9.4f} {acc - base:>+8.4f}  {agreement(te, ref_te)}")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

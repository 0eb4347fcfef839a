"""Fashion-MNIST: last layer vs all layers (standardised) vs the full-network embedding, same linear head.

The bundled EfficientNet-Lite0 (ImageNet weights), ``--layers all --pool avg`` (every conv + pre_logits)
at ``--input-size``; one store is extracted, then:

1. ``pre_logits`` only, standardised, linear SVM (``--solver exact``: scikit-learn's LinearSVC;
   ``--solver stream``: deepfeat's streaming hinge-loss head, ``--epochs`` passes);
2. all layers concatenated, standardised, linear SVM;
3. the full-network embedding (standardise with training statistics, ternarise -0.25/0.15, int8 store),
   linear SVM;

each trained on the same ``--per-class`` training images per class and scored on ``--test-per-class``
test images per class. The per-feature analysis report of the training split is written too.

Usage::

    python benchmarks/fne_fashion.py --work /tmp/fne_bench                      # 5,000 train, 96x96
    python benchmarks/fne_fashion.py --work /tmp/fne_bench --solver stream      # minutes, not hours
    python benchmarks/fne_fashion.py --per-class 100 --test-per-class 50 --input-size 64 --json r.json

Needs the Fashion-MNIST idx files (Debian package ``dataset-fashion-mnist``; see ``deepfeat.datasets``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any


def _log(msg: str) -> None:
    print(msg, flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/fne_bench")
    ap.add_argument("--per-class", type=int, default=500, help="training images per class (500 -> 5,000)")
    ap.add_argument("--test-per-class", type=int, default=200, help="test images per class")
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--alpha", type=float, default=1e-4, help="L2 strength of the SVM (C = 1 / (alpha n))")
    ap.add_argument(
        "--solver",
        default="exact",
        choices=("exact", "stream"),
        help="exact: LinearSVC in memory (slow on 22k dims); stream: the streaming SVM head",
    )
    ap.add_argument("--epochs", type=int, default=30, help="epochs of the streaming head")
    ap.add_argument("--no-analysis", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import deepfeat
    from deepfeat.datasets import write_fashion_mnist

    os.makedirs(args.work, exist_ok=True)
    data = os.path.join(args.work, f"fm_{args.per_class}_{args.test_per_class}")
    if not os.path.isdir(os.path.join(data, "test")):
        write_fashion_mnist(data, per_class=args.per_class, splits=("train",))
        write_fashion_mnist(data, per_class=args.test_per_class, splits=("test",))
    results: dict[str, Any] = {
        "per_class": args.per_class,
        "test_per_class": args.test_per_class,
        "input_size": args.input_size,
        "solver": args.solver,
        "epochs": args.epochs,
        "machine": platform.platform(),
        "python": sys.version.split()[0],
    }
    store = os.path.join(args.work, f"all_{args.per_class}_{args.input_size}")
    t0 = time.perf_counter()
    s = deepfeat.extract(
        data,
        store,
        layers="all",
        pool="avg",
        input_size=args.input_size,
        dtype="float16",
        device=args.device,
        workers=args.workers,
    )
    results["extract_seconds"] = time.perf_counter() - t0
    st = deepfeat.open_store(store)
    results["layers"] = len(st.layers)
    results["dims_all"] = sum(x.dims for x in st.layers)
    _log(
        f"extract: {s.rows_total} rows, {len(st.layers)} layers, {results['dims_all']} dims "
        f"({results['extract_seconds']:.0f} s)"
    )
    fne = os.path.join(args.work, f"fne_{args.per_class}_{args.input_size}")
    t0 = time.perf_counter()
    f = deepfeat.full_network_embedding(store, fne)
    results["fne_seconds"] = time.perf_counter() - t0
    results["fne_zero_variance"] = f.zero_variance
    results["fne_value_counts"] = f.value_counts
    runs = {
        "last layer (pre_logits)": (store, "pre_logits"),
        "all layers standardised": (store, None),
        "FNE ternary (all layers)": (fne, None),
    }
    for name, (path, layers) in runs.items():
        t0 = time.perf_counter()
        r = deepfeat.train(
            path,
            layers=layers,
            head="svm",
            solver=args.solver,
            alpha=args.alpha,
            val_fraction=0.0,
            epochs=args.epochs,
            patience=None,
            out=os.path.join(args.work, f"{name.split()[0]}_{layers or 'all'}.dfm".replace(" ", "_")),
        )
        rep = deepfeat.evaluate(r.bundle_path, path, split="test")
        results[name] = {
            "test_accuracy": rep["accuracy"],
            "dims": sum(x.dims for x in r.layers),
            "train_seconds": time.perf_counter() - t0,
        }
        _log(
            f"{name:28s} test accuracy {rep['accuracy']:.4f}  ({results[name]['dims']} dims, "
            f"{results[name]['train_seconds']:.0f} s)"
        )
    if not args.no_analysis:
        t0 = time.perf_counter()
        a = deepfeat.analyze(store, os.path.join(args.work, "analysis"), split="train")
        results["analysis"] = {
            "report": a["report"],
            "noise_overall": a["noise_overall"],
            "noise_rule": a["noise_rule"],
            "seconds": time.perf_counter() - t0,
            "layers": a["layers"],
        }
        _log(f"analysis: noise {a['noise_overall']:.3f}; report {a['report']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Fashion-MNIST accuracy table of the heads on the bundled backbone's features.

Extracts Fashion-MNIST (``--per-class`` images per class and split, upsampled to ``--input-size``)
with EfficientNet-Lite0 (`blocks.4` and `pre_logits`, avg, float16), then trains each head on
the last layer and on both layers, and prints test accuracy, epochs, time per epoch and total
time. The streaming logistic regression is compared with scikit-learn's exact solver on the same
standardised features (target: within 1 accuracy point), and with the data set's published
baselines. ``--full`` uses all 60,000 training and 10,000 test images. The memory check of
streaming training is ``benchmarks/train_memory.py``.

    python benchmarks/heads_fashion.py [--per-class 500 | --full] [--input-size 96] [--epochs 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

PUBLISHED = {"raw-pixel SVC": 0.897, "HOG + SVM": 0.926, "small CNNs": "0.90-0.93"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=500)
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--full", action="store_true", help="all of Fashion-MNIST (60,000 train, 10,000 test)")
    ap.add_argument("--workers", type=int, default=1, help="decode workers of the extraction")
    ap.add_argument("--workdir", default=None, help="keep the images and the store here (reused when present)")
    args = ap.parse_args()
    import deepfeat
    from deepfeat.datasets import write_fashion_mnist

    work = args.workdir or tempfile.mkdtemp(prefix="deepfeat-heads-")
    try:
        src = os.path.join(work, "fm")
        per_class = None if args.full else args.per_class
        if not os.path.isdir(os.path.join(src, "test")):
            write_fashion_mnist(src, per_class=per_class)
        feats = os.path.join(work, "feats")
        t = time.perf_counter()
        s = deepfeat.extract(
            src,
            feats,
            layers="blocks.4,pre_logits",
            pool="avg",
            dtype="float16",
            input_size=args.input_size,
            workers=args.workers,
        )
        print(
            f"extracted {s.embedded_total} images in {time.perf_counter() - t:.0f} s "
            f"({'all' if args.full else args.per_class} per class and split, {args.input_size} px)",
            flush=True,
        )
        rows = []
        for layers in ("pre_logits", "blocks.4,pre_logits"):
            for head, solver in (
                ("logreg", "stream"),
                ("svm", "stream"),
                ("mlp", "stream"),
                ("logreg", "exact"),
                ("svm", "exact"),
            ):
                bundle = os.path.join(work, f"{head}-{solver}-{layers.replace(',', '+')}.dfm")
                t = time.perf_counter()
                r = deepfeat.train(
                    feats,
                    layers=layers,
                    head=head,
                    solver=solver,
                    epochs=args.epochs,
                    hidden=(256,) if head == "mlp" else None,
                    out=bundle,
                )
                seconds = time.perf_counter() - t
                rep = deepfeat.evaluate(bundle, feats, split="test")
                epochs = len(r.history) or None
                per_epoch = (sum(h.get("seconds", 0) for h in r.history) / epochs) if epochs else None
                rows.append((layers, head, solver, rep["accuracy"], epochs, per_epoch, seconds))
                print(f"  {layers} {head} {solver}: test accuracy {rep['accuracy']:.4f} ({seconds:.0f} s)", flush=True)
        print(f"\n{'layers':<22}{'head':<8}{'solver':<8}{'test acc':>9}{'epochs':>8}{'s/epoch':>9}{'total s':>9}")
        for layers, head, solver, acc, ep, pe, sec in rows:
            print(f"{layers:<22}{head:<8}{solver:<8}{acc:>9.4f}{ep or '-':>8}{(f'{pe:.2f}' if pe else '-'):>9}{sec:>9.1f}")
        acc = {(lay, h, so): a for lay, h, so, a, *_ in rows}
        gap = acc[("pre_logits", "logreg", "stream")] - acc[("pre_logits", "logreg", "exact")]
        print(f"\nstreaming vs exact logistic regression on pre_logits: {gap * 100:+.2f} points (target within 1)")
        print("published Fashion-MNIST baselines:", ", ".join(f"{k} {v}" for k, v in PUBLISHED.items()))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Do augmented views help? Accuracy with 0, 2 and 5 views per training image, same head.

A small Fashion-MNIST training subset (``--per-class`` images per class) is extracted with
EfficientNet-Lite0 (`pre_logits`, avg, float16, ``--input-size`` px) with K = 0, 2, 5 augmented
views per training image (test images keep view 0 only); the same streaming logistic head is
trained on each store and evaluated on the same test images.

    python benchmarks/views_fashion.py [--per-class 50] [--test-per-class 100] [--input-size 64]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--augment", default="flip,crop=0.8,rotate=10")
    ap.add_argument("--views", default="0,2,5")
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    import deepfeat
    from deepfeat.datasets import write_fashion_mnist

    work = tempfile.mkdtemp(prefix="deepfeat-views-")
    try:
        src = os.path.join(work, "fm")
        write_fashion_mnist(src, per_class=args.test_per_class)
        # keep only --per-class training images per class (the first ones, deterministic)
        for cls in os.listdir(os.path.join(src, "train")):
            for name in sorted(os.listdir(os.path.join(src, "train", cls)))[args.per_class :]:
                os.unlink(os.path.join(src, "train", cls, name))
        rows = []
        for k in (int(v) for v in args.views.split(",")):
            out = os.path.join(work, f"views{k}")
            t = time.perf_counter()
            s = deepfeat.extract(
                src,
                out,
                layers="pre_logits",
                pool="avg",
                dtype="float16",
                input_size=args.input_size,
                workers=1,
                views=k,
                augment=args.augment if k else None,
            )
            extract_s = time.perf_counter() - t
            bundle = os.path.join(work, f"views{k}.dfm")
            t = time.perf_counter()
            deepfeat.train(out, head="logreg", solver="stream", epochs=args.epochs, out=bundle, seed=0)
            train_s = time.perf_counter() - t
            acc = deepfeat.evaluate(bundle, out, split="test")["accuracy"]
            rows.append((k, s.rows_total, extract_s, train_s, acc))
        print(
            f"{args.per_class} training images per class, {args.test_per_class} test images per class, "
            f"{args.input_size} px, augment {args.augment!r}"
        )
        print(f"{'views':>6}{'rows':>8}{'extract s':>11}{'train s':>9}{'test acc':>10}")
        for k, n, es, ts, acc in rows:
            print(f"{k:>6}{n:>8}{es:>11.1f}{ts:>9.1f}{acc:>10.4f}")
        base = rows[0][4]
        for k, _, _, _, acc in rows[1:]:
            print(f"views={k}: {100 * (acc - base):+.2f} accuracy points vs no views")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

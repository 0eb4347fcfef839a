"""Fashion-MNIST: a small ConvNet from scratch, its dense features + a linear SVM, and fine-tuning.

Part A (``--part scratch``): the full training set (60,000 images), the seed's ``small`` ConvNet
trained from scratch on the CPU; test accuracy (10,000 images) and wall time. Then the dense
layer's 256 activations of every image are extracted with ``deepfeat.extract`` (the trained
model directory used as a backbone) and a linear SVM is trained on the training rows and
scored on the test rows, next to the network's own accuracy.

Part B (``--part finetune``): a class-balanced subset of Fashion-MNIST; the bundled
EfficientNet-Lite0 fine-tuned (first stages frozen, lower body learning rate) versus a
logistic-regression head on its frozen ``pre_logits`` features, both at the same input size,
trained on the same images and scored on the same test images.

Usage::

    python benchmarks/fashion_cnn.py --work /tmp/fmbench                 # both parts
    python benchmarks/fashion_cnn.py --part scratch --epochs 10 --json a.json
    python benchmarks/fashion_cnn.py --part finetune --ft-per-class 100 --ft-input-size 64

Needs the Fashion-MNIST idx files (Debian package ``dataset-fashion-mnist`` or see
``deepfeat.datasets``). Not part of the test suite (it takes tens of minutes on a CPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from typing import Any

import numpy as np


def _log(msg: str) -> None:
    print(msg, flush=True)


def _progress(event: dict[str, Any]) -> None:
    if event["phase"] == "start":
        _log(
            f"  {event['kind']}: {event['n_train']} train / {event['n_val']} valid ({event['val_source']}), "
            f"{event['trainable']:,} trainable parameters, {'cached' if event['cached'] else 'streamed'}, "
            f"{event['device']} {event['precision']}, input {event['input_size']}"
        )
        _log(f"  {'epoch':>5} {'train loss':>11} {'valid loss':>11} {'train/valid':>12} {'valid acc':>10} {'seconds':>8}")
    elif event["phase"] == "epoch":
        _log(
            f"  {event['epoch']:>5} {event['train_loss']:>11.4f} {event['valid_loss']:>11.4f} "
            f"{event['train_valid_ratio']:>12.3f} {event['valid_accuracy']:>10.4f} {event['seconds']:>8.1f}"
        )


def _store_xy(store_dir: str, layer: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from deepfeat import open_store

    st = open_store(store_dir)
    x_tr, y_tr, _ = st.load(layer, split="train")
    x_te, y_te, _ = st.load(layer, split="test")
    return x_tr, y_tr.astype(str), x_te, y_te.astype(str)


def part_scratch(work: str, args: argparse.Namespace) -> dict[str, Any]:
    from deepfeat import extract
    from deepfeat.cnn import train_cnn
    from deepfeat.datasets import write_fashion_mnist

    data = os.path.join(work, "fm_full")
    if not os.path.isfile(os.path.join(data, ".complete")):
        t0 = time.perf_counter()
        write_fashion_mnist(data)
        open(os.path.join(data, ".complete"), "w").close()
        _log(f"wrote 70,000 PNG files in {time.perf_counter() - t0:.0f} s")
    model_dir = os.path.join(work, "fm_cnn")
    _log(f"A. small ConvNet from scratch, {args.epochs} epochs, batch {args.batch_size}, on the CPU")
    t0 = time.perf_counter()
    r = train_cnn(
        data,
        model_dir,
        arch=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        augment=args.augment,
        seed=args.seed,
        device="cpu",
        workers=args.workers,
        overwrite=True,
        progress=_progress,
    )
    wall = time.perf_counter() - t0
    net_acc = float(r.metrics["test_accuracy"])
    _log(
        f"  network test accuracy {net_acc:.4f}; training {r.metrics['train_seconds']:.0f} s "
        f"({wall:.0f} s wall with decoding and evaluation){' [already trained]' if r.already_complete else ''}"
    )

    feats = os.path.join(work, "fm_dense")
    t0 = time.perf_counter()
    s = extract(data, feats, model=model_dir, layers="dense", device="cpu", batch_size=256, workers=args.workers)
    extract_s = time.perf_counter() - t0
    _log(f"  extracted dense features of {s.embedded_total:,} images in {extract_s:.0f} s")
    x_tr, y_tr, x_te, y_te = _store_xy(feats, "dense")
    t0 = time.perf_counter()
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    svm = make_pipeline(StandardScaler(), LinearSVC(C=args.svm_c, max_iter=5000, random_state=0))
    svm.fit(x_tr, y_tr)
    svm_acc = float((svm.predict(x_te) == y_te).mean())
    svm_s = time.perf_counter() - t0
    _log(
        f"  dense features + linear SVM (C={args.svm_c}): test accuracy {svm_acc:.4f} ({svm_s:.0f} s); "
        f"network {net_acc:.4f}; difference {100 * (svm_acc - net_acc):+.2f} points"
    )
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "arch": args.arch,
        "augment": args.augment,
        "network_test_accuracy": net_acc,
        "train_seconds": r.metrics["train_seconds"],
        "wall_seconds": wall,
        "history": r.history,
        "extract_seconds": extract_s,
        "svm_test_accuracy": svm_acc,
        "svm_seconds": svm_s,
        "svm_minus_network_points": 100 * (svm_acc - net_acc),
    }


def part_finetune(work: str, args: argparse.Namespace) -> dict[str, Any]:
    from deepfeat import extract
    from deepfeat.cnn import finetune
    from deepfeat.datasets import write_fashion_mnist

    data = os.path.join(work, f"fm_{args.ft_per_class}")
    if not os.path.isfile(os.path.join(data, ".complete")):
        write_fashion_mnist(data, per_class=args.ft_per_class, shuffle=True, seed=0)
        open(os.path.join(data, ".complete"), "w").close()
    size = args.ft_input_size
    _log(f"B. EfficientNet-Lite0 on {args.ft_per_class} images per class (train and test), input {size}px")
    # Frozen features + logistic regression.
    feats = os.path.join(work, f"fm_{args.ft_per_class}_lite0_{size}")
    t0 = time.perf_counter()
    extract(
        data, feats, model="efficientnet_lite0", layers="pre_logits", input_size=size, device="cpu", workers=args.workers
    )
    x_tr, y_tr, x_te, y_te = _store_xy(feats, "pre_logits")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=args.logreg_c, max_iter=3000))
    clf.fit(x_tr, y_tr)
    frozen_acc = float((clf.predict(x_te) == y_te).mean())
    frozen_s = time.perf_counter() - t0
    _log(f"  frozen pre_logits + logistic regression: test accuracy {frozen_acc:.4f} ({frozen_s:.0f} s)")
    # Fine-tuning.
    out = os.path.join(work, f"fm_{args.ft_per_class}_tuned_{size}")
    t0 = time.perf_counter()
    r = finetune(
        data,
        out,
        model="efficientnet_lite0",
        freeze=args.ft_freeze,
        body_lr_mult=args.ft_body_lr_mult,
        epochs=args.ft_epochs,
        batch_size=args.ft_batch_size,
        lr=args.ft_lr,
        input_size=size,
        augment=args.ft_augment,
        seed=args.seed,
        device="cpu",
        workers=args.workers,
        overwrite=True,
        progress=_progress,
    )
    tuned_s = time.perf_counter() - t0
    tuned_acc = float(r.metrics["test_accuracy"])
    _log(
        f"  fine-tuned (freeze {args.ft_freeze}, body lr x{args.ft_body_lr_mult}, {args.ft_epochs} epochs): "
        f"test accuracy {tuned_acc:.4f} ({tuned_s:.0f} s); frozen-feature head {frozen_acc:.4f}; "
        f"{'fine-tuning wins' if tuned_acc > frozen_acc else 'the frozen head wins'} by "
        f"{100 * abs(tuned_acc - frozen_acc):.2f} points"
    )
    return {
        "per_class": args.ft_per_class,
        "input_size": size,
        "frozen_logreg_test_accuracy": frozen_acc,
        "frozen_seconds": frozen_s,
        "finetune_test_accuracy": tuned_acc,
        "finetune_seconds": tuned_s,
        "freeze": args.ft_freeze,
        "body_lr_mult": args.ft_body_lr_mult,
        "epochs": args.ft_epochs,
        "history": r.history,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default="/tmp/deepfeat-fashion-cnn", help="folder for data, models and stores")
    p.add_argument("--part", default="all", choices=["all", "scratch", "finetune"])
    p.add_argument("--arch", default="small")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--augment", default="flip,crop=0.9,rotate=10")
    p.add_argument("--svm-c", type=float, default=0.01)
    p.add_argument("--ft-per-class", type=int, default=100)
    p.add_argument("--ft-input-size", type=int, default=64)
    p.add_argument("--ft-epochs", type=int, default=10)
    p.add_argument("--ft-batch-size", type=int, default=32)
    p.add_argument("--ft-lr", type=float, default=2e-3)
    p.add_argument("--ft-freeze", type=int, default=1)
    p.add_argument("--ft-body-lr-mult", type=float, default=0.5)
    p.add_argument("--ft-augment", default="flip,crop=0.8")
    p.add_argument("--logreg-c", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.work, exist_ok=True)
    import torch

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),
        }
    }
    if args.part in ("all", "scratch"):
        results["scratch"] = part_scratch(args.work, args)
    if args.part in ("all", "finetune"):
        results["finetune"] = part_finetune(args.work, args)
    results["machine"]["load_average_at_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

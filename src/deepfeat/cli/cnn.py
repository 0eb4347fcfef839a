"""``deepfeat train-cnn`` (a small ConvNet from scratch) and ``deepfeat finetune`` (a pretrained backbone)."""

from __future__ import annotations

import argparse
from typing import Any

from ..apidefaults import api_constant
from .common import SIZE, VALIDATION_SOURCES, EventRenderer, _add_offline_arg, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"train-cnn": ("deepfeat.cnn.training", "train_cnn"), "finetune": ("deepfeat.cnn.training", "finetune")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "train-cnn": {
        "batch_size": "images per optimiser step",
        "epochs": "passes over the training images",
    },
    "finetune": {
        "batch_size": "images per optimiser step",
        "epochs": "passes over the training images",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, helptext in (
        ("train-cnn", "train a small ConvNet from scratch on a labelled image folder"),
        ("finetune", "fine-tune a pretrained backbone on a labelled image folder"),
    ):
        p = sub.add_parser(name, help=helptext + " (writes a model directory usable as --model)")
        p.add_argument("source", help="image folder (split/class/* or class/*) or list file with labels")
        p.add_argument("--out", required=True, help="model directory to write (resumes if it holds a checkpoint)")
        if name == "train-cnn":
            p.add_argument("--arch", default="small", help="small (the seed's layout) | small_bn | medium")
            p.add_argument(
                "--channels",
                type=int,
                default=None,
                choices=[1, 3],
                help="input channels (default: 1 when every image is gray)",
            )
            p.add_argument("--epochs", type=int, default=10)
            p.add_argument("--batch-size", type=int, default=64)
            p.add_argument("--weight-decay", type=float, default=0.0)
            p.add_argument(
                "--augment",
                default="flip,crop=0.9,rotate=10",
                help="flip, vflip, crop, rotate, translate, color, grayscale (with =value); 'none' for off",
            )
            p.add_argument(
                "--input-size",
                type=int,
                default=None,
                help="square input side (default: the first image's shorter side, 16..64)",
            )
            p.set_defaults(func=run)
        else:
            p.add_argument("--model", default="efficientnet_lite0", help="any backbone name 'deepfeat models' lists")
            p.add_argument(
                "--weights",
                default=None,
                help="local weights file (default: the pretrained weights, downloaded on first use)",
            )
            _add_offline_arg(p)
            p.add_argument(
                "--freeze",
                type=int,
                default=0,
                help="freeze the first N stages (see 'deepfeat layers'); -1 freezes the whole body",
            )
            p.add_argument("--body-lr-mult", type=float, default=0.1, help="body learning rate = lr x this")
            p.add_argument("--epochs", type=int, default=5)
            p.add_argument("--batch-size", type=int, default=32)
            p.add_argument("--weight-decay", type=float, default=1e-4)
            p.add_argument(
                "--augment",
                default="flip,crop=0.8",
                help="flip, vflip, crop, rotate, translate, color, grayscale (with =value); 'none' for off",
            )
            p.add_argument("--input-size", type=int, default=None, help="override the model's input size (square)")
            p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")
            p.set_defaults(func=run)
        p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (of the new head when fine-tuning)")
        p.add_argument("--schedule", default="cosine", choices=api_constant("deepfeat.cnn.training", "SCHEDULES"))
        p.add_argument(
            "--patience",
            type=int,
            default=0,
            help="stop after N epochs without a better validation loss and keep the best epoch (0: off)",
        )
        p.add_argument(
            "--val-fraction",
            type=float,
            default=0.1,
            help="share of the training images held out for validation (by id hash, per class) when "
            "the source has no val split",
        )
        p.add_argument(
            "--validation",
            default="auto",
            choices=api_constant("deepfeat.cnn.data", "VALIDATION_CHOICES"),
            help="validate on: auto (the val split if present, else a hold-out of train; never test), "
            "val, held-out, or test (only when asked: early stopping then tunes on the test images)",
        )
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
        p.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
        p.add_argument("--workers", type=int, default=None, help="decode processes (default: spare cores)")
        p.add_argument("--memory-budget", metavar=SIZE, help="decoded images are cached in memory below this")
        p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
        p.add_argument("--overwrite", action="store_true", help="replace a model trained with another configuration")
        p.add_argument("--keep-checkpoint", action="store_true", help="keep the last checkpoint after training")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (the epoch table stays)")


def _print_cnn_result(r: Any) -> None:
    m = r.metrics
    test = f", test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m else ""
    note = " (already trained: nothing to do)" if r.already_complete else ""
    source = VALIDATION_SOURCES.get(m["valid_source"], m["valid_source"])
    _print(
        f"done in {r.seconds:.1f} s{note}: valid accuracy {m['valid_accuracy']:.4f} ({source}){test}; "
        f"model directory {r.out} (use it as --model {r.out})"
    )
    if r.skipped:
        _print(f"{len(r.skipped):,} images could not be decoded and were left out")


def _cnn_common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        patience=args.patience or None,
        augment=args.augment,
        input_size=args.input_size,
        val_fraction=args.val_fraction,
        validation=args.validation,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        workers=args.workers,
        memory_budget=args.memory_budget,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        keep_checkpoint=args.keep_checkpoint,
    )


def cmd_train_cnn(args: argparse.Namespace) -> int:
    from ..cnn import train_cnn

    progress = EventRenderer("cnn", args.quiet)
    try:
        r = train_cnn(
            args.source, args.out, arch=args.arch, channels=args.channels, progress=progress, **_cnn_common_kwargs(args)
        )
    finally:
        progress.close()
    _print_cnn_result(r)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..cnn import finetune

    progress = EventRenderer("cnn", args.quiet)
    try:
        r = finetune(
            args.source,
            args.out,
            model=args.model,
            weights=args.weights,
            freeze=args.freeze,
            body_lr_mult=args.body_lr_mult,
            crop_pct=args.crop_pct,
            progress=progress,
            **_cnn_common_kwargs(args),
        )
    finally:
        progress.close()
    _print_cnn_result(r)
    return 0


def run(args: argparse.Namespace) -> int:
    return (cmd_train_cnn if args.command == "train-cnn" else cmd_finetune)(args)

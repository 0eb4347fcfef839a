"""``deepfeat evaluate``: accuracy, top-k, per-class report and confusion matrix of a bundle."""

from __future__ import annotations

import argparse

from ..apidefaults import api_constant
from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {"evaluate": ("deepfeat.evaluation", "evaluate")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {"evaluate": {"batch_size": "rows scored per batch"}}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("evaluate", help="accuracy, top-k, per-class report and confusion matrix of a bundle")
    p.add_argument("bundle")
    p.add_argument("store")
    p.add_argument("--split", default="test", help="split to evaluate, or 'all'")
    p.add_argument("--out", default=None, help="directory for report.txt/json, confusion_matrix.csv/png")
    p.add_argument("--top-k", default="1,3", help="top-k accuracies to report, e.g. 1,3,5")
    p.add_argument("--tta", action="store_true", help="average the scores over each image's stored views")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument(
        "--leakage-threshold",
        type=float,
        default=0.95,
        help="count the rows with a near-duplicate in train (cosine >= this on pre_logits) and report the "
        "accuracy without them",
    )
    p.add_argument(
        "--leakage-pixel-threshold",
        type=float,
        default=api_constant("deepfeat.search.pixels", "DEFAULT_PIXEL_THRESHOLD"),
        help="also read the images and count a row whose grey thumbnails correlate with a train image's at >= "
        "this (re-encodes and downscales the features miss)",
    )
    p.add_argument("--no-pixel-check", action="store_true", help="near-duplicates in train by features only (no image read)")
    p.add_argument("--no-leakage-check", action="store_true", help="skip the near-duplicates-in-train check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation import evaluate, format_report

    report = evaluate(
        args.bundle,
        args.store,
        split=args.split,
        out=args.out,
        top_k=args.top_k,
        tta=args.tta,
        batch_size=args.batch_size,
        leakage_threshold=None if args.no_leakage_check else args.leakage_threshold,
        leakage_pixel_threshold=None if args.no_pixel_check else args.leakage_pixel_threshold,
    )
    _print(format_report(report).rstrip())
    if report.get("files"):
        _print("\nwrote " + ", ".join(report["files"].values()))
    return 0

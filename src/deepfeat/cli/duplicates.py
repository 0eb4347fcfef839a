"""``deepfeat duplicates``: near-duplicate rows of a store, their groups, and the val/test inputs that leak from train."""

from __future__ import annotations

import argparse

from ..apidefaults import api_constant
from .common import SIZE, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"duplicates": ("deepfeat.search.duplicates", "duplicates")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "duplicates": {
        "layer": "the stored layer compared (view 0 of every row)",
        "threshold": "cosine similarity in (0, 1] from which two rows are near-duplicates (measured: docs/SEARCH.md)",
        "splits": "only rows of these splits, comma-separated (default: every row)",
        "memory_budget": "memory for vectors and similarities, with a unit: 512MiB, 2GiB",
        "method": "exact: every pair, blockwise; partitioned: k-means partitions, exact within each (as "
        "SemDeDup); auto: exact up to 200,000 rows",
        "pixel_threshold": "correlation of two images' grey thumbnails, at the finest size both hold, from which "
        "they are copies: finds the re-encodes and downscales the features miss (measured: docs/SEARCH.md)",
        "workers": "processes reading the images for the pixel check (default: one per core)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "duplicates",
        help="near-duplicate rows of a store (cosine similarity of features, or correlation of the "
        "images' thumbnails), their groups and "
        "the val/test inputs with a near-duplicate in train: pairs.csv, "
        "groups.csv, report.html",
    )
    p.add_argument("store")
    p.add_argument("--out", required=True, help="folder for pairs.csv, groups.csv and report.html")
    p.add_argument("--layer", default="pre_logits")
    p.add_argument("--threshold", type=float, default=0.95)
    p.add_argument("--splits", default=None)
    p.add_argument("--memory-budget", metavar=SIZE)
    p.add_argument("--method", default="auto", choices=api_constant("deepfeat.search.duplicates", "METHODS"))
    p.add_argument(
        "--pixel-threshold", type=float, default=api_constant("deepfeat.search.pixels", "DEFAULT_PIXEL_THRESHOLD")
    )
    p.add_argument("--no-pixels", action="store_true", help="compare features only (do not read the images again)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--no-report", action="store_true", help="skip report.html (thumbnails of every group)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.duplicates import duplicates

    s = duplicates(
        args.store,
        args.out,
        layer=args.layer,
        threshold=args.threshold,
        splits=args.splits,
        memory_budget=args.memory_budget,
        report=not args.no_report,
        method=args.method,
        pixels=not args.no_pixels,
        pixel_threshold=args.pixel_threshold,
        workers=args.workers,
    )
    _print("wrote " + ", ".join(s.files.values()))
    _print(s.line())
    return 0

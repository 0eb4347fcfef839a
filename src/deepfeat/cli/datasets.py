"""``deepfeat datasets``: write a real dataset as image files."""

from __future__ import annotations

import argparse

from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {"datasets": ("deepfeat.datasets", "write_dataset")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {"datasets": {"out": "folder to write the images into (split/class/*.png)"}}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("datasets", help="write a real dataset as image files (e.g. fashion-mnist)")
    p.add_argument("name")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=None, help="images per class and split (default: all)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..datasets import write_dataset

    summary = write_dataset(args.name, args.out, per_class=args.per_class)
    _print(
        f"wrote {summary.total} images to {args.out}: " + ", ".join(f"{s}={summary.split_total(s)}" for s in summary.counts)
    )
    return 0

"""``deepfeat index``: a nearest-neighbour index of one layer of a store (for ``search`` and ``predict --neighbors``)."""

from __future__ import annotations

import argparse

from ..apidefaults import api_constant
from .common import SIZE, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"index": ("deepfeat.search.index", "build_index")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "index": {
        "layer": "the stored layer indexed (view 0 of every row)",
        "kind": "auto: exact without faiss, else faiss flat up to 200,000 rows and IVF beyond",
        "splits": "only rows of these splits, comma-separated (default: every row)",
        "memory_budget": "memory for vectors at a time, with a unit: 512MiB, 2GiB",
        "overwrite": "replace an existing index at OUT",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "index", help="index a store's layer for nearest-neighbour search (exact, or faiss with the 'search' extra)"
    )
    p.add_argument("store")
    p.add_argument("--out", required=True, help="the index folder to write")
    p.add_argument("--layer", default="pre_logits")
    p.add_argument("--kind", default="auto", choices=api_constant("deepfeat.search.index", "KINDS"))
    p.add_argument("--splits", default=None)
    p.add_argument("--memory-budget", metavar=SIZE)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.index import build_index, describe

    idx = build_index(
        args.store,
        args.out,
        layer=args.layer,
        kind=args.kind,
        splits=args.splits,
        memory_budget=args.memory_budget,
        overwrite=args.overwrite,
    )
    _print(f"indexed {describe(idx)} into {args.out} in {idx.doc['seconds']:.1f} s")
    return 0

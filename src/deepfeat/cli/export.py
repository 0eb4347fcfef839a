"""``deepfeat export``: a store to npy, hdf5, parquet or csv."""

from __future__ import annotations

import argparse

from ..apidefaults import api_constant
from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {"export": ("deepfeat.store.export", "export_store")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "export": {
        "out": "a folder for npy (one .npy per layer + rows.parquet), else a file",
        "overwrite": "replace an existing OUT (otherwise refused)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export a store to npy, hdf5, parquet or csv")
    p.add_argument("store")
    p.add_argument("--format", required=True, choices=api_constant("deepfeat.store.export", "FORMATS"))
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..store.export import export_store

    layers = args.layers.split(",") if args.layers else None
    written = export_store(args.store, args.out, args.format, layers=layers, split=args.split, overwrite=args.overwrite)
    for p in written:
        _print(p)
    return 0

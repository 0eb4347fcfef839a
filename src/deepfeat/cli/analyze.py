"""``deepfeat analyze`` (per-feature statistics, report) and ``deepfeat fne`` (full-network embedding)."""

from __future__ import annotations

import argparse
import re

from .common import NEGATIVE_NUMBERS, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"analyze": ("deepfeat.analysis.report", "analyze"), "fne": ("deepfeat.analysis.fne", "full_network_embedding")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "fne": {
        "overwrite": "replace an existing OUT store made with other settings",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("analyze", help="per-feature discriminative statistics per class; HTML report + tables")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="report folder (report.html, report.md, CSV/Parquet, PNG)")
    p.add_argument("--split", default="train", help="split to analyse ('' = every row)")
    p.add_argument("--layers", default=None, help="stored layers to analyse (default: all)")
    p.add_argument("--bins", type=int, default=64, help="histogram bins per feature (approximation; see docs)")
    p.add_argument("--alpha", type=float, default=0.05, help="Benjamini-Hochberg false discovery rate")
    p.add_argument("--top-k", dest="top_k", type=int, default=10, help="top features listed per class")
    p.add_argument(
        "--sample-rows",
        dest="sample_rows",
        type=int,
        default=2048,
        help="reservoir sample the bin edges come from (rows, default 2048; memory: rows x features in the store's dtype)",
    )
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=2048,
        help="most rows per batch (default 2048); a batch is also capped at 32 MiB as float64",
    )
    p.set_defaults(func=run)

    p = sub.add_parser("fne", help="full-network embedding: standardise + ternarise a store into a new int8 store")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="new store directory (rerun to resume)")
    p.add_argument("--thresholds", default="-0.25,0.15", help="lo,hi on standardised values (default -0.25,0.15)")
    # let "--thresholds -0.25,0.15" parse: argparse otherwise takes "-0.25,0.15" for an option
    p._negative_number_matcher = re.compile(NEGATIVE_NUMBERS)  # type: ignore[attr-defined]
    p.add_argument("--layers", default=None, help="stored layers to embed (default: all)")
    p.add_argument("--stats-split", dest="stats_split", default="train", help="split giving the mean/std ('' = every row)")
    p.add_argument(
        "--batch-size",
        dest="batch_size",
        type=int,
        default=4096,
        help="most rows per batch (default 4096); a batch is also capped at 32 MiB as float64",
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis.report import analyze

    s = analyze(
        args.store,
        args.out,
        split=args.split or None,
        layers=args.layers or None,
        bins=args.bins,
        alpha=args.alpha,
        top_k=args.top_k,
        sample_rows=args.sample_rows,
        batch_size=args.batch_size,
    )
    noisiest = max(s["layers"], key=lambda r: r["noise"])
    _print(
        f"done in {s['seconds']:.1f} s: {s['features']:,} features x {len(s['classes'])} classes on {s['rows']:,} "
        f"rows; noise {s['noise_overall']:.3f} overall (max {noisiest['noise']:.3f} in {noisiest['layer']}); "
        f"report {s['report']}"
    )
    return 0


def cmd_fne(args: argparse.Namespace) -> int:
    from ..analysis.fne import full_network_embedding

    s = full_network_embedding(
        args.store,
        args.out,
        thresholds=args.thresholds,
        layers=args.layers or None,
        stats_split=args.stats_split or None,
        overwrite=args.overwrite,
        batch_size=args.batch_size,
    )
    total = max(1, sum(s.value_counts.values()))
    shares = ", ".join(f"{k:+d}: {v / total:.3f}" for k, v in s.value_counts.items()) if s.value_counts else "-"
    _print(
        f"done in {s.seconds:.1f} s: {s.rows:,} rows x {s.dims:,} int8 dims ({len(s.layers)} layers, "
        f"{s.zero_variance} zero-variance features; statistics from {s.stats_rows:,} rows); "
        f"{s.parts_written} parts written, {s.parts_skipped} kept; values {shares}; store {s.out}"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    return (cmd_fne if args.command == "fne" else cmd_analyze)(args)

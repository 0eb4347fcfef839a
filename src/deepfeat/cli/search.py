"""``deepfeat search``: the stored rows most similar to image files (embedded as the store was) or to stored ids."""

from __future__ import annotations

import argparse
import json

from .common import SIZE, _add_runtime_args, _print, _print_error

#: the API function each command calls: its signature gives the options' defaults
API = {"search": ("deepfeat.search.query", "search")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "search": {
        "top_k": "neighbours per query",
        "memory_budget": "memory for stored vectors scored at a time, with a unit: 512MiB, 2GiB",
        "batch_size": "query images per forward pass",
        "nprobe": "IVF index only: inverted lists visited per query (default: the index's)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("search", help="nearest stored rows of image files or stored ids, from an index ('deepfeat index')")
    p.add_argument("index", help="an index folder from 'deepfeat index'")
    p.add_argument("queries", nargs="*", help="image files, folders or list files (embedded exactly as the store was)")
    p.add_argument(
        "--id",
        dest="ids",
        action="append",
        default=None,
        metavar="ID",
        help="query with a stored row (its id, as in pairs.csv or rows.parquet); repeatable",
    )
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON object per query: {"query", "neighbors": [{"path", "id", "split", "label", '
        '"similarity"}], "error" when it failed}',
    )
    p.add_argument("--out", default=None, help="write the results as a self-contained .html page (or .json)")
    p.add_argument("--memory-budget", metavar=SIZE)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--weights", default=None, help="backbone weights file if not at the path the store recorded")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--workers", type=int, default=None, help="decode processes (default: spare cores; 0 decodes in this process)"
    )
    _add_runtime_args(p, auto_help="auto: the store's own runtime and precision when they run here")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..search.query import search

    results = search(
        args.index,
        args.queries,
        top_k=args.top_k,
        ids=args.ids or (),
        memory_budget=args.memory_budget,
        weights=args.weights,
        device=args.device,
        runtime=args.runtime,
        precision=args.precision,
        batch_size=args.batch_size,
        workers=args.workers,
        nprobe=args.nprobe,
    )
    bad = sum(r.error is not None for r in results)
    if args.out:
        from ..search.report import write_results

        write_results(results, args.out, index=args.index)
    if args.json:
        for r in results:
            _print(json.dumps(r.to_dict()))
    elif not args.out:
        for r in results:
            if r.error:
                _print(f"{r.query}\tERROR\t{r.error}")
                continue
            for rank, n in enumerate(r.neighbors, 1):
                _print(f"{r.query}\t{rank}\t{n.similarity:.4f}\t{n.split or '-'}\t{n.label or '-'}\t{n.path}")
    _print_error(f"{len(results):,} queries ({bad:,} failed)" + (f"; wrote {args.out}" if args.out else ""))
    return 0 if bad < len(results) or not results else 1

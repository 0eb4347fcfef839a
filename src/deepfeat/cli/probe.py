"""``deepfeat probe``: which layer? a quick linear head per layer and group."""

from __future__ import annotations

import argparse
import re

from .common import NEGATIVE_NUMBERS, SIZE, EventRenderer, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"probe": ("deepfeat.probing", "probe")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "probe": {
        "batch_size": "rows per optimiser step",
        "epochs": "most passes over the training rows (early stopping may end sooner)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "probe",
        help="which layer? a quick linear head per layer (and stage, all layers, FNE), "
        "one pass over the store per epoch; table, CSV/JSON, plot, report.html",
    )
    p.add_argument("store")
    p.add_argument("--out", default=None, help="folder for probe.csv, probe.json, probe.png, report.html")
    p.add_argument("--layers", default=None, help="stored layers to probe (default: all)")
    p.add_argument(
        "--groups",
        default="stages,all,fne",
        help="extra candidates: stages, all (all layers standardised), fne; 'none' for none",
    )
    p.add_argument("--head", default="logreg", help="logreg | svm | mlp (the streaming head of 'train')")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3, cosine decay)")
    p.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training ids held out when there is no val split")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--test-split", default="test", help="split scored at the end ('' for none)")
    p.add_argument("--thresholds", default="-0.25,0.15", help="FNE thresholds lo,hi on standardised values")
    p._negative_number_matcher = re.compile(NEGATIVE_NUMBERS)  # type: ignore[attr-defined]
    p.add_argument("--memory-budget", metavar=SIZE, help="memory for feature rows, with a unit: 512MiB, 2GiB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..probing import probe

    progress = EventRenderer("probe", args.quiet)
    try:
        r = probe(
            args.store,
            args.out,
            layers=args.layers,
            groups=args.groups,
            head=args.head,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            alpha=args.alpha,
            val_fraction=args.val_fraction,
            patience=args.patience or None,
            memory_budget=args.memory_budget,
            test_split=args.test_split or None,
            thresholds=args.thresholds,
            seed=args.seed,
            progress=progress,
        )
    finally:
        progress.close()
    _print(r.table())
    _print("\n" + r.advice)
    wrote = f"; wrote {', '.join(r.files.values())}" if r.files else ""
    _print(f"done in {r.seconds:.1f} s: {len(r.rows)} candidates, best {r.best['name']}{wrote}")
    return 0

"""``deepfeat train``: train a head on a store; writes a bundle."""

from __future__ import annotations

import argparse

from .common import SIZE, EventRenderer, _print_error, _print_json_summary

#: the API function each command calls: its signature gives the options' defaults
API = {"train": ("deepfeat.training", "train")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "train": {
        "batch_size": "rows per optimiser step",
        "epochs": "most passes over the training rows (early stopping may end sooner; --solver stream)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train a head (logreg, svm, mlp) on a store, streaming it; writes a bundle")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="bundle file to write, e.g. model.dfm")
    p.add_argument("--layers", default=None, help="stored layers to concatenate (default: all)")
    p.add_argument("--head", default="logreg", help="logreg | svm | mlp")
    p.add_argument("--hidden", default=None, help="MLP hidden sizes, e.g. 256,16 (default 256; --head mlp only)")
    p.add_argument("--solver", default="auto", help="auto | stream | exact (scikit-learn, in memory)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3, cosine decay)")
    p.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training ids held out when there is no val split")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--class-weight", default=None, help="balanced | none")
    p.add_argument(
        "--memory-budget", metavar=SIZE, help="memory for feature rows, with a unit: 512MiB, 2GiB (decides --solver auto)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument(
        "--no-resume", action="store_true", help="start over even if OUT.ckpt holds a checkpoint of an interrupted run"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle OUT (otherwise refused)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines and no progress bar")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the final summary as one JSON object on stdout (every other line goes to stderr)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training import train

    class_weight = None if args.class_weight in (None, "", "none") else args.class_weight
    progress = EventRenderer("train", args.quiet, to_stderr=args.json)
    try:
        r = train(
            args.store,
            layers=args.layers,
            head=args.head,
            solver=args.solver,
            hidden=args.hidden,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            alpha=args.alpha,
            val_fraction=args.val_fraction,
            patience=args.patience or None,
            class_weight=class_weight,
            memory_budget=args.memory_budget,
            seed=args.seed,
            device=args.device,
            out=args.out,
            overwrite=args.overwrite,
            resume=not args.no_resume,
            progress=progress,
        )
    except KeyboardInterrupt:
        _print_error(
            "interrupted: no bundle was written (it is written atomically at the end); rerun the same "
            "command to continue (a streaming run resumes from its last complete epoch)"
        )
        return 130
    finally:
        progress.close()
    v = r.validation
    val = (
        f"validation accuracy {v['accuracy']:.4f} on {v['n']:,} rows ({v['source']})" if v.get("n") else "no validation rows"
    )
    stopped = (
        f"; stopped early after epoch {r.history[-1]['epoch']} of {args.epochs}, kept epoch {r.best_epoch}"
        if r.history and r.history[-1].get("stopped_early")
        else ""
    )
    progress.say(f"done in {r.seconds:.1f} s ({r.solver}, {r.head_kind}): {val}{stopped}; saved {r.bundle_path}")
    if args.json:
        _print_json_summary(
            "train",
            0,
            {
                "seconds": r.seconds,
                "solver": r.solver,
                "head": r.head_kind,
                "classes": r.classes,
                "layers": [s.name for s in r.layers],
                "n_train": r.n_train,
                "n_val": r.n_val,
                "validation": r.validation,
                "best_epoch": r.best_epoch,
                "epochs_run": len(r.history),
                "stopped_early": bool(r.history and r.history[-1].get("stopped_early")),
                "bundle": r.bundle_path,
            },
        )
    return 0

"""``deepfeat plot filters|activations|embedding|history``: PNG plots."""

from __future__ import annotations

import argparse

from ..apidefaults import api_constant
from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {
    "plot": {
        "layer": "layer to show (see 'deepfeat layers MODEL')",
        "split": "plot only this split (default: every row)",
    },
}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plot", help="plots: filters, activations, embedding, history (PNG)")
    plot_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = plot_sub.add_parser("filters", help="a conv layer's filters (RGB tiles for a first layer)")
    q.add_argument("model", help="model directory or backbone name")
    q.add_argument(
        "--layer", default=None, help="conv layer (or a block holding one); default: the model's first convolution"
    )
    q.add_argument("--out", required=True, help="PNG file")
    q.add_argument("--max-filters", type=int, default=64)
    q.add_argument("--max-channels", type=int, default=16, help="input channels shown per filter (deeper layers)")
    q.set_defaults(func=run)
    q = plot_sub.add_parser("activations", help="one image's activations: bar plot (vector) or map grid (conv)")
    q.add_argument("model", help="model directory or backbone name")
    q.add_argument("image", help="image file")
    q.add_argument("--layer", default="pre_logits")
    q.add_argument("--out", required=True, help="PNG file")
    q.add_argument("--max-maps", type=int, default=64)
    q.set_defaults(func=run)
    q = plot_sub.add_parser("embedding", help="2-D PCA or t-SNE of a stored layer, coloured by class")
    q.add_argument("store", help="feature store directory")
    q.add_argument("--layer", default=None, help="stored layer (default: the only one)")
    q.add_argument("--method", default="pca", choices=api_constant("deepfeat.viz.plots", "EMBEDDING_METHODS"))
    q.add_argument("--split", default=None)
    q.add_argument("--max-points", type=int, default=5000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="PNG file")
    q.set_defaults(func=run)
    q = plot_sub.add_parser("history", help="loss and accuracy curves of a trained model directory or a .dfm bundle")
    q.add_argument("model", help="model directory")
    q.add_argument("--out", required=True, help="PNG file")
    q.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..viz import plots

    if args.what == "filters":
        res = plots.plot_filters(
            args.model, args.layer, args.out, max_filters=args.max_filters, max_channels=args.max_channels
        )
    elif args.what == "activations":
        res = plots.plot_activations(args.model, args.image, args.layer, args.out, max_maps=args.max_maps)
    elif args.what == "embedding":
        res = plots.plot_embedding(
            args.store,
            args.layer,
            args.out,
            method=args.method,
            split=args.split,
            max_points=args.max_points,
            seed=args.seed,
        )
    else:
        res = plots.plot_history(args.model, args.out)
    _print(
        f"wrote {res.path} ({res.size[0]}x{res.size[1]} px, {res.panels} panel{'s' if res.panels != 1 else ''}): {res.title}"
    )
    return 0

"""``deepfeat models``: list backbones and where their weights are."""

from __future__ import annotations

import argparse

from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("models", help="list backbones and where their weights are: bundled, cached or download")
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'resnet*'")
    p.add_argument("--all", action="store_true", help="every timm/torchvision architecture too")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.registry import list_models

    rows = list_models(args.pattern, include_all=args.all)
    _print(f"{'model':<42} {'family':<12} {'weights':<9} where")
    for r in rows:
        _print(f"{r.name:<42} {r.family:<12} {r.status:<9} {r.where}")
    if not args.all:
        _print(
            "\n(weights: bundled = in an installed package; cached = in the HF / torch hub cache; download = "
            "fetched on first use (not with --offline). A PATTERN such as 'resnet*' lists every matching "
            "timm/torchvision name; --all also those without published weights)"
        )
    return 0

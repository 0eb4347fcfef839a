"""``deepfeat layers``: every tappable layer of a backbone."""

from __future__ import annotations

import argparse
import json

from .common import _add_model_args, _print

#: the API function each command calls: its signature gives the options' defaults
API = {"layers": ("deepfeat.models.registry", "load_backbone")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("layers", help="every tappable layer: name, output shape, dims per pooling")
    p.add_argument("model", nargs="?", default="efficientnet_lite0")
    _add_model_args(p)
    p.add_argument("--all", action="store_true", help="show every module, not only the main ones")
    p.add_argument("--depth", type=int, default=1, help="module depth shown without --all (default 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.layers import describe_layers
    from ..models.pooling import POOLINGS
    from ..models.registry import load_backbone

    bb = load_backbone(args.model, args.weights, input_size=args.input_size)
    infos = describe_layers(bb)
    shown = [i for i in infos.values() if args.all or i.depth <= args.depth or i.stage or i.block or i.depth == 0]
    if args.json:
        _print(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "type": i.kind,
                        "shape": list(i.shape),
                        "calls": i.calls,
                        "stage": i.stage,
                        "prefix_tokens": i.prefix_tokens,
                        "dims": i.dims_by_pool(),
                    }
                    for i in shown
                ],
                indent=1,
            )
        )
        return 0
    h, w = bb.preprocess.input_size
    _print(f"{bb.name}: input 3x{h}x{w}; {len(infos)} tappable layers ({len(shown)} shown; --all for every module)")
    prefix = max((i.prefix_tokens for i in infos.values()), default=0)
    if prefix:
        _print(
            f"token layers (N x T x D): the first {prefix} of T are class/register tokens; avg, max and avgmax "
            "pool the patch tokens only, cls takes the class token"
        )
    pools = [p for p in POOLINGS if any(p in i.dims_by_pool() for i in shown if len(i.shape) > 1)] or list(POOLINGS[:4])
    header = f"{'layer':<34} {'type':<22} {'output shape':<18}" + "".join(f"{p:>10}" for p in pools)
    _print(header)
    for i in shown:
        tag = " [stage]" if i.stage else ""
        shape = "x".join(str(s) for s in i.shape)
        dims = i.dims_by_pool()
        _print(f"{i.name:<34} {(i.kind + tag)[:22]:<22} {shape:<18}" + "".join(f"{dims.get(p, '-'):>10}" for p in pools))
    _print("\nshortcuts: pre_logits, all-stages, all-blocks, all-conv, all, -1 (last stage), last:N")
    return 0

"""``deepfeat info``: rows per split/class, layers, failures, size; ``--verify``."""

from __future__ import annotations

import argparse
import json

from ..errors import StoreError
from .common import _print

#: the API function each command calls: its signature gives the options' defaults
API = {}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("info", help="rows per split/class, layers, failures by reason, size on disk")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--failures", action="store_true", help="list every failed and excluded input")
    p.add_argument("--verify", action="store_true", help="check every part's checksum (exit 3 on a problem)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..store.info import format_info, store_info, verify_store

    try:
        info = store_info(args.store)
    except StoreError:
        if not args.verify:
            raise
        info = None  # the store cannot be summarised; verify says which check fails
    if info is not None:
        _print(json.dumps(info.to_dict(), indent=1, default=str) if args.json else format_info(info, failures=args.failures))
    if args.verify:
        problems = verify_store(args.store)
        for p in problems:
            _print(f"PROBLEM: {p}")
        _print("verify: ok" if not problems else f"verify: {len(problems)} problem(s)")
        return 3 if problems else 0
    return 0

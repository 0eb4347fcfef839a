"""``deepfeat extract``: extract features into a crash-safe, resumable store."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from ..apidefaults import api_constant
from ..engines import add_engine_arguments
from ..units import format_size
from .common import EventRenderer, _add_model_args, _add_runtime_args, _add_source_args, _print_json_summary, _source_of

#: the API function each command calls: its signature gives the options' defaults
API = {"extract": ("deepfeat.extraction", "extract")}
#: help of the options declared without one
OPTION_HELP: dict[str, dict[str, str]] = {"extract": {"batch_size": "images per forward pass"}}


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("extract", help="extract features into a crash-safe, resumable store")
    _add_source_args(p)
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--model", default="efficientnet_lite0")
    _add_model_args(p)
    p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")
    p.add_argument("--layers", default="pre_logits", help="comma-separated names or shortcuts (see 'layers')")
    p.add_argument(
        "--pool",
        default="avg",
        help="none|avg|max|avgmax; ViT token layers also cls|cls+avg (avg then "
        "leaves out class/register tokens); per layer as 'avg,blocks.4=none'",
    )
    p.add_argument("--dtype", default="float32", choices=api_constant("deepfeat.extraction", "DTYPES"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode processes (default: one per core with a CPU runtime, fed taking turns or overlapped, "
        "whichever the first batches timed faster; with a GPU runtime, as many as keep it fed, measured "
        "over the first part; a number given here is kept; with --engine ray: per Ray worker, default 0)",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    _add_runtime_args(p)
    p.add_argument(
        "--min-agreement",
        type=float,
        default=0.98,
        help="the precision guard: a reduced precision (bf16, fp16) is used only when, on a seeded sample "
        "of 64 of the job's images, every layer's minimum per-row cosine with torch fp32 is at "
        "least this (and its median at least 1 - (1 - this) / 4); below it --precision auto falls "
        "back to fp32 and an explicit --precision is refused. In (0, 1]",
    )
    p.add_argument(
        "--part-size",
        type=_part_size,
        default=None,
        help="inputs per committed part (e.g. 512), or features per part as a size (e.g. 64MiB); "
        "default: ~256 MiB, 16 to 4096 inputs",
    )
    p.add_argument(
        "--part-seconds",
        type=float,
        default=30.0,
        help="also commit a part once it has been open this long, so Ctrl-C loses at most about that "
        "much work (default: 30; 0: by size only; the Ray engine commits by size)",
    )
    p.add_argument("--views", type=int, default=0, help="augmented views per image, besides the original (view 0)")
    p.add_argument(
        "--augment",
        default=None,
        help="augmentation spec for the views, e.g. 'flip,crop=0.8,rotate=15,color=0.2' (default flip,crop=0.8)",
    )
    p.add_argument("--views-splits", default="train", help="splits that get augmented views (default: train)")
    p.add_argument("--augment-seed", type=int, default=0)
    add_engine_arguments(p)  # --engine and each engine's own flags (--address, --ray-workers, ...)
    p.add_argument("--overwrite", action="store_true", help="delete an existing store with another config")
    p.add_argument(
        "--ignore-free-space",
        action="store_true",
        help="start even when the job's estimated size exceeds the free space on the output's filesystem "
        "(otherwise refused with exit status 4)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--json",
        action="store_true",
        help="print the final summary as one JSON object on stdout (every other line goes to stderr)",
    )
    p.set_defaults(func=run)


def _part_size(value: str) -> int | str:
    """argparse type of --part-size: a count of inputs or a size with a unit (deepfeat.units)."""
    from ..errors import UsageError
    from ..units import count_or_size

    try:
        return count_or_size(value, "part_size")
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("The 'part_size' parameter", "--part-size")) from None


def run(args: argparse.Namespace) -> int:
    from ..engines import engine_from_arguments
    from ..extraction import extract

    progress = EventRenderer("extract", args.quiet, to_stderr=args.json)
    try:
        s = extract(
            _source_of(args),
            args.out,
            model=args.model,
            layers=args.layers,
            pool=args.pool,
            dtype=args.dtype,
            weights=args.weights,
            input_size=args.input_size,
            crop_pct=args.crop_pct,
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            runtime=args.runtime,
            precision=args.precision,
            min_agreement=args.min_agreement,
            part_size=args.part_size,
            part_seconds=args.part_seconds or None,
            overwrite=args.overwrite,
            ignore_free_space=args.ignore_free_space,
            engine=engine_from_arguments(args),
            progress=progress,
            views=args.views,
            augment=args.augment,
            views_splits=args.views_splits,
            augment_seed=args.augment_seed,
        )
    finally:
        progress.close()
    say = progress.say
    n = s.embedded_now + s.failed_now
    total = time.monotonic() - progress.started  # the command's time, start-up included
    setup = progress.setup_seconds()
    split = (
        f"; {setup:.1f} s loading the model and runtime, then {n / (total - setup):.1f} img/s"
        if setup is not None and total > setup
        else ""
    )
    say(
        f"done in {total:.1f} s ({n / total if total > 0 else 0.0:.1f} img/s{split}): "
        f"{s.embedded_now:,} embedded and {s.failed_now:,} failed this run; "
        f"store holds {s.embedded_total:,} embedded, {s.failed_total:,} failed, {s.excluded:,} excluded; "
        f"{s.rows_total:,} rows, {format_size(s.bytes_on_disk)} in {args.out}"
        + (f"; {s.decode_workers}" if s.decode_workers else "")
    )
    if s.failures_by_reason:
        say(
            "failures by reason: "
            + ", ".join(f"{k}={v}" for k, v in s.failures_by_reason.items())
            + f"  (details: deepfeat info {args.out} --failures)"
        )
    if s.vanished_since:
        say(f"note: {s.vanished_since} stored inputs are no longer in the source")
    for note in s.notes:
        say(f"note: {note}")
    status = 0 if s.embedded_total else 1
    if status:
        say(_nothing_embedded(s, args.source, args.out))
    if args.json:
        _print_json_summary(
            "extract", status, {**dataclasses.asdict(s), "images_per_second": s.images_per_second, "accounted": s.accounted}
        )
    return status


def _nothing_embedded(s: Any, source: str, out: str) -> str:
    """The final line of an extract run that embedded nothing (exit status 1)."""
    if s.discovered:
        return f"nothing embedded: all {s.discovered:,} inputs failed (see the failures above); exit status 1"
    if s.excluded:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.excluded_by_reason.items()))
        return (
            f"nothing embedded: {source} holds no usable image file ({s.excluded:,} entries excluded at "
            f"discovery: {reasons}; details: deepfeat info {out} --failures); exit status 1"
        )
    return f"nothing embedded: {source} holds no image files; exit status 1"

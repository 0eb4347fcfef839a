"""The ``deepfeat`` command line: a thin shell over the Python API (same verbs, same names).

Exit status: 0 success (bad images are in the ledger, not errors); 1 the run completed but no
input could be embedded; 2 bad arguments; 3 store problem (locked, other config, corrupt);
4 environment fault (disk full, I/O error); 130 interrupted (the part in progress is discarded).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .errors import EnvironmentFault, StoreError, UsageError

log = logging.getLogger("deepfeat")


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _print(*args: Any) -> None:
    print(*args, flush=True)


# ----------------------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import list_models

    rows = list_models(args.pattern, include_all=args.all)
    _print(f"{'model':<42} {'family':<12} {'weights offline':<16} where")
    for r in rows:
        _print(f"{r.name:<42} {r.family:<12} {'yes' if r.weights_offline else 'no':<16} {r.where}")
    if not args.all:
        _print("\n(--all lists every timm and torchvision architecture; they take --weights PATH)")
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    from .models.layers import describe_layers
    from .models.pooling import POOLINGS
    from .models.registry import load_backbone

    bb = load_backbone(args.model, args.weights, input_size=args.input_size)
    infos = describe_layers(bb)
    shown = [i for i in infos.values() if args.all or i.depth <= args.depth or i.stage or i.block or i.depth == 0]
    if args.json:
        _print(json.dumps([{"name": i.name, "type": i.kind, "shape": list(i.shape), "calls": i.calls,
                            "stage": i.stage, "dims": i.dims_by_pool()} for i in shown], indent=1))
        return 0
    h, w = bb.preprocess.input_size
    _print(f"{bb.name}: input 3x{h}x{w}; {len(infos)} tappable layers ({len(shown)} shown; --all for every module)")
    header = f"{'layer':<34} {'type':<22} {'output shape':<18}" + "".join(f"{p:>10}" for p in POOLINGS)
    _print(header)
    for i in shown:
        tag = " [stage]" if i.stage else ""
        shape = "x".join(str(s) for s in i.shape)
        _print(f"{i.name:<34} {(i.kind + tag)[:22]:<22} {shape:<18}" + "".join(f"{i.dims(p):>10}" for p in POOLINGS))
    _print("\nshortcuts: pre_logits, all-stages, all-blocks, all-conv, all, -1 (last stage), last:N")
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from .datasets import write_dataset

    summary = write_dataset(args.name, args.out, per_class=args.per_class)
    _print(f"wrote {summary.total} images to {args.out}: " +
           ", ".join(f"{s}={summary.split_total(s)}" for s in summary.counts))
    return 0


class _Progress:
    """tqdm progress bar fed by extract()'s progress events."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None
        self.failed = 0

    def __call__(self, event: dict[str, Any]) -> None:
        phase = event["phase"]
        if phase == "plan":
            est = event["estimate"]
            layers = ", ".join(f"{s.name}[{s.pool}]={s.dims}" for s in event["layers"])
            _print(f"layers: {layers}")
            _print(f"job: {est['rows']:,} rows x {est['dims']:,} dims x {est['bytes_per_value']} B = "
                   f"{_human_bytes(est['bytes'])} on {event['device']} ({event['precision']})"
                   f"; {event['already_done']:,} already done, {event['excluded']:,} excluded at discovery")
            if not self.quiet:
                from tqdm import tqdm

                self.bar = tqdm(total=event["pending"], unit="img", dynamic_ncols=True, desc="extract")
        elif phase == "batch" and self.bar is not None:
            self.failed += event["failed"]
            self.bar.update(event["done"])
            self.bar.set_postfix(failed=self.failed, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_extract(args: argparse.Namespace) -> int:
    from .extraction import extract

    progress = _Progress(args.quiet)
    try:
        s = extract(args.source, args.out, model=args.model, layers=args.layers, pool=args.pool, dtype=args.dtype,
                    weights=args.weights, input_size=args.input_size, crop_pct=args.crop_pct,
                    batch_size=args.batch_size, workers=args.workers, device=args.device,
                    precision=args.precision, part_size=args.part_size, overwrite=args.overwrite,
                    engine=args.engine, progress=progress, views=args.views, augment=args.augment,
                    views_splits=args.views_splits, augment_seed=args.augment_seed)
    finally:
        progress.close()
    _print(f"done in {s.seconds:.1f} s ({s.images_per_second:.1f} img/s): "
           f"{s.embedded_now:,} embedded and {s.failed_now:,} failed this run; "
           f"store holds {s.embedded_total:,} embedded, {s.failed_total:,} failed, {s.excluded:,} excluded; "
           f"{s.rows_total:,} rows, {_human_bytes(s.bytes_on_disk)} in {args.out}")
    if s.failures_by_reason:
        _print("failures by reason: " + ", ".join(f"{k}={v}" for k, v in s.failures_by_reason.items())
               + f"  (details: deepfeat info {args.out} --failures)")
    if s.vanished_since:
        _print(f"note: {s.vanished_since} stored inputs are no longer in the source")
    if s.discovered and not s.embedded_total:
        _print("no input could be embedded (see the failures above)")
        return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .store.info import format_info, store_info, verify_store

    info = store_info(args.store)
    if args.json:
        _print(json.dumps(info.to_dict(), indent=1, default=str))
    else:
        _print(format_info(info, failures=args.failures))
    if args.verify:
        problems = verify_store(args.store)
        for p in problems:
            _print(f"PROBLEM: {p}")
        _print("verify: ok" if not problems else f"verify: {len(problems)} problem(s)")
        return 3 if problems else 0
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .store.export import export_store

    layers = args.layers.split(",") if args.layers else None
    written = export_store(args.store, args.out, args.format, layers=layers, split=args.split,
                           overwrite=args.overwrite)
    for p in written:
        _print(p)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .classify import classify_images

    preds = classify_images(args.model, args.inputs, top_k=args.top_k)
    bad = 0
    for p in preds:
        if p.error:
            bad += 1
            _print(f"{p.path}\tERROR\t{p.error}")
        else:
            _print(f"{p.path}\t" + "\t".join(f"{lbl} ({prob:.3f})" for lbl, prob in zip(p.labels, p.probabilities)))
    return 0 if bad < len(preds) or not preds else 1


class _TrainProgress:
    """Prints train()'s progress events: the plan, then one line per epoch."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, event: dict[str, Any]) -> None:
        phase = event["phase"]
        if phase == "scan":
            layers = ", ".join(f"{s.name}[{s.pool}]={s.dims}" for s in event["layers"])
            _print(f"layers: {layers} ({event['dims']:,} dims)")
            _print(f"rows: {event['n_train']:,} training, {event['n_val']:,} validation ({event['val_source']}); "
                   f"{len(event['classes'])} classes; solver: {event['solver']}")
        elif self.quiet:
            return
        elif phase == "stats":
            _print(f"feature statistics: {event['rows']:,} rows in {event['seconds']:.1f} s")
        elif phase == "exact":
            _print(f"exact solver ({event['solver']}): {event['rows']:,} rows in {event['seconds']:.1f} s")
        elif phase == "epoch":
            val = ("" if event["val_loss"] is None else
                   f", val loss {event['val_loss']:.4f}, val accuracy {event['val_accuracy']:.4f}")
            _print(f"epoch {event['epoch']}/{event['epochs']}: train loss {event['train_loss']:.4f}{val} "
                   f"({event['seconds']:.1f} s){' *' if event.get('best') else ''}")


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    class_weight = None if args.class_weight in (None, "", "none") else args.class_weight
    r = train(args.store, layers=args.layers, head=args.head, solver=args.solver, hidden=args.hidden,
              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, alpha=args.alpha,
              val_fraction=args.val_fraction, patience=args.patience or None, class_weight=class_weight,
              memory_budget=args.memory_budget, seed=args.seed, device=args.device, out=args.out,
              progress=_TrainProgress(args.quiet))
    v = r.validation
    val = (f"validation accuracy {v['accuracy']:.4f} on {v['n']:,} rows ({v['source']})" if v.get("n")
           else "no validation rows")
    _print(f"done in {r.seconds:.1f} s ({r.solver}, {r.head_kind}): {val}; saved {r.bundle_path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate, format_report

    report = evaluate(args.bundle, args.store, split=args.split, out=args.out, top_k=args.top_k, tta=args.tta,
                      batch_size=args.batch_size)
    _print(format_report(report).rstrip())
    if report.get("files"):
        _print("\nwrote " + ", ".join(report["files"].values()))
    return 0


def _is_bundle_arg(value: str) -> bool:
    from .bundle import SUFFIX, is_bundle

    return value.lower().endswith(SUFFIX) or is_bundle(value)


def cmd_predict_bundle(args: argparse.Namespace) -> int:
    from .predict import predict_images, write_predictions

    preds = predict_images(args.model, args.inputs, top_k=args.top_k or 3, batch_size=args.batch_size,
                           weights=args.weights, device=args.device)
    bad = sum(p.error is not None for p in preds)
    if args.out:
        write_predictions(preds, args.out)
        _print(f"wrote {len(preds):,} predictions to {args.out} ({bad:,} could not be classified)")
    else:
        for p in preds:
            if p.error:
                _print(f"{p.path}\tERROR\t{p.error}")
            else:
                _print(f"{p.path}\t" + "\t".join(f"{lbl} ({s:.3f})" for lbl, s in zip(p.labels, p.scores)))
    return 0 if bad < len(preds) or not preds else 1


def cmd_predict_any(args: argparse.Namespace) -> int:
    """``predict BUNDLE.dfm ...`` uses a trained bundle; ``predict MODEL ...`` the backbone's own classifier."""
    if _is_bundle_arg(args.model):
        return cmd_predict_bundle(args)
    if args.top_k is None:
        args.top_k = 5
    if args.out:
        from .classify import classify_images
        from .predict import write_predictions

        preds = classify_images(args.model, args.inputs, top_k=args.top_k)
        write_predictions(preds, args.out)
        bad = sum(p.error is not None for p in preds)
        _print(f"wrote {len(preds):,} predictions to {args.out} ({bad:,} could not be classified)")
        return 0 if bad < len(preds) or not preds else 1
    return cmd_predict(args)


# ----------------------------------------------------------------------------- parser
def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None,
                   help="local weights file (.safetensors or state dict), or 'random'; default: offline pretrained")
    p.add_argument("--input-size", type=int, default=None, help="override the model's input size (square)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepfeat", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--config", default=None, help="YAML file whose keys set option defaults")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list backbones and whether their weights are available offline")
    p.add_argument("pattern", nargs="?", default=None, help="glob filter, e.g. 'resnet*'")
    p.add_argument("--all", action="store_true", help="every timm/torchvision architecture too")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("layers", help="every tappable layer: name, output shape, dims per pooling")
    p.add_argument("model", nargs="?", default="efficientnet_lite0")
    _add_model_args(p)
    p.add_argument("--all", action="store_true", help="show every module, not only the main ones")
    p.add_argument("--depth", type=int, default=1, help="module depth shown without --all (default 1)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_layers)

    p = sub.add_parser("datasets", help="write a real dataset as image files (e.g. fashion-mnist)")
    p.add_argument("name")
    p.add_argument("out")
    p.add_argument("--per-class", type=int, default=None, help="images per class and split (default: all)")
    p.set_defaults(func=cmd_datasets)

    p = sub.add_parser("extract", help="extract features into a crash-safe, resumable store")
    p.add_argument("source", help="image folder or CSV/TXT list file")
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--model", default="efficientnet_lite0")
    _add_model_args(p)
    p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")
    p.add_argument("--layers", default="pre_logits", help="comma-separated names or shortcuts (see 'layers')")
    p.add_argument("--pool", default="avg", help="none|avg|max|avgmax, per layer as 'avg,blocks.4=none'")
    p.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: spare cores)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--part-size", type=int, default=None, help="inputs per committed part (default: ~256 MiB)")
    p.add_argument("--views", type=int, default=0, help="augmented views per image, besides the original (view 0)")
    p.add_argument("--augment", default=None,
                   help="augmentation spec for the views, e.g. 'flip,crop=0.8,rotate=15,color=0.2' (default flip,crop=0.8)")
    p.add_argument("--views-splits", default="train", help="splits that get augmented views (default: train)")
    p.add_argument("--augment-seed", type=int, default=0)
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--overwrite", action="store_true", help="delete an existing store with another config")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("info", help="rows per split/class, layers, failures by reason, size on disk")
    p.add_argument("store")
    p.add_argument("--json", action="store_true")
    p.add_argument("--failures", action="store_true", help="list every failed and excluded input")
    p.add_argument("--verify", action="store_true", help="check every part's checksum (exit 3 on a problem)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("export", help="export a store to npy, hdf5, parquet or csv")
    p.add_argument("store")
    p.add_argument("--format", required=True, choices=["npy", "hdf5", "parquet", "csv"])
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default=None)
    p.add_argument("--split", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("train", help="train a head (logreg, svm, mlp) on a store, streaming it; writes a bundle")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="bundle file to write, e.g. model.dfm")
    p.add_argument("--layers", default=None, help="stored layers to concatenate (default: all)")
    p.add_argument("--head", default="logreg", help="logreg | svm | mlp")
    p.add_argument("--hidden", default="256", help="MLP hidden sizes, e.g. 256,16")
    p.add_argument("--solver", default="auto", help="auto | stream | exact (scikit-learn, in memory)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-2 linear, 1e-3 mlp)")
    p.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training ids held out when there is no val split")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--class-weight", default=None, help="balanced | none")
    p.add_argument("--memory-budget", default="1GiB", help="memory for feature rows (decides --solver auto)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="accuracy, top-k, per-class report and confusion matrix of a bundle")
    p.add_argument("bundle")
    p.add_argument("store")
    p.add_argument("--split", default="test", help="split to evaluate, or 'all'")
    p.add_argument("--out", default=None, help="directory for report.txt/json, confusion_matrix.csv/png")
    p.add_argument("--top-k", default="1,3", help="top-k accuracies to report, e.g. 1,3,5")
    p.add_argument("--tta", action="store_true", help="average the scores over each image's stored views")
    p.add_argument("--batch-size", type=int, default=1024)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images with a trained bundle (.dfm) or a backbone's own classifier")
    p.add_argument("model", help="a bundle from 'deepfeat train' (model.dfm), or a backbone name (ImageNet top-k)")
    p.add_argument("inputs", nargs="+", help="image files, folders or list files")
    p.add_argument("--top-k", type=int, default=None, help="classes per image (default: 3 for a bundle, 5 for a backbone)")
    p.add_argument("--out", default=None, help="write predictions to a .csv or .json file")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="bundle only: backbone weights file if not at the recorded path")
    p.add_argument("--device", default="cpu", help="bundle only: cpu | cuda | auto")
    p.set_defaults(func=cmd_predict_any)
    return parser


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """``--config FILE`` (YAML, safe_load) sets defaults; flags on the command line override it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    import yaml

    with open(known.config, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise UsageError(f"The config file {known.config!r} must hold a mapping of option: value.")
    defaults = {str(k).replace("-", "_"): v for k, v in data.items()}
    for action in parser._subparsers._group_actions if parser._subparsers else []:  # type: ignore[union-attr]
        for sp in action.choices.values():
            sp.set_defaults(**{k: v for k, v in defaults.items() if any(a.dest == k for a in sp._actions)})


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        _apply_config(parser, argv)
        args = parser.parse_args(argv)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except UsageError as exc:
        _print_error(f"error: {exc}")
        return 2
    except StoreError as exc:
        _print_error(f"store error: {exc}")
        return 3
    except EnvironmentFault as exc:
        _print_error(f"environment error: {exc}")
        return 4
    except KeyboardInterrupt:
        _print_error("interrupted: the part in progress was discarded; rerun the same command to resume")
        return 130
    except FileNotFoundError as exc:
        _print_error(f"error: {exc}")
        return 2


def _print_error(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

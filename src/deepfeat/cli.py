"""The ``deepfeat`` command line: a thin shell over the Python API (same verbs, same names).

Exit status: 0 success (bad images are in the ledger, not errors); 1 the run completed but no
input could be embedded; 2 bad arguments; 3 store problem (locked, other config, corrupt);
4 environment fault (disk full, I/O error); 130 interrupted (the part in progress is discarded).
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import re
import signal
import sys
from collections.abc import Sequence
from typing import Any

from .engines import add_engine_arguments
from . import __version__
from .errors import EnvironmentFault, StoreError, UsageError
from .units import format_size

log = logging.getLogger("deepfeat")


def _print(*args: Any) -> None:
    print(*args, flush=True)


# ----------------------------------------------------------------------------- commands
def cmd_models(args: argparse.Namespace) -> int:
    from .models.registry import list_models

    rows = list_models(args.pattern, include_all=args.all)
    _print(f"{'model':<42} {'family':<12} {'weights':<9} where")
    for r in rows:
        _print(f"{r.name:<42} {r.family:<12} {r.status:<9} {r.where}")
    if not args.all:
        _print("\n(weights: bundled = in an installed package; cached = in the HF / torch hub cache; download = "
               "fetched on first use (not with --offline). A PATTERN such as 'resnet*' lists every matching "
               "timm/torchvision name; --all also those without published weights)")
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
                            "stage": i.stage, "prefix_tokens": i.prefix_tokens, "dims": i.dims_by_pool()}
                           for i in shown], indent=1))
        return 0
    h, w = bb.preprocess.input_size
    _print(f"{bb.name}: input 3x{h}x{w}; {len(infos)} tappable layers ({len(shown)} shown; --all for every module)")
    prefix = max((i.prefix_tokens for i in infos.values()), default=0)
    if prefix:
        _print(f"token layers (N x T x D): the first {prefix} of T are class/register tokens; avg, max and avgmax "
               "pool the patch tokens only, cls takes the class token")
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


def cmd_datasets(args: argparse.Namespace) -> int:
    from .datasets import write_dataset

    summary = write_dataset(args.name, args.out, per_class=args.per_class)
    _print(f"wrote {summary.total} images to {args.out}: " +
           ", ".join(f"{s}={summary.split_total(s)}" for s in summary.counts))
    return 0


def _reporter() -> Any:
    """The progress reporter main() installed (a bar on a terminal, plain periodic lines otherwise)."""
    from . import progress

    return progress.current() or progress.Reporter()


class _Progress:
    """The one renderer of the API's progress events (extract, train, train-cnn / finetune): plan and
    epoch lines on stdout (stderr with --json, where stdout holds the JSON summary only), counts, rates
    and ETAs through the progress reporter (deepfeat.progress)."""

    def __init__(self, kind: str, quiet: bool = False, to_stderr: bool = False) -> None:
        self.kind = kind  # "extract" | "train" | "probe" | "cnn"
        self.quiet = quiet
        self.say = _print_error if to_stderr else _print
        self.task: Any = None
        self.failed = 0

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, f"_{self.kind}_{event['phase']}", None)
        if handler is not None:
            handler(event)

    def _start(self, desc: str, total: float | None, unit: str, transient: bool = False) -> None:
        self.close()
        if not self.quiet:
            self.task = _reporter().task(desc, total, unit, transient=transient)

    # extract
    def _extract_plan(self, event: dict[str, Any]) -> None:
        est = event["estimate"]
        layers = ", ".join(f"{s.name}[{s.pool}]={s.dims}" for s in event["layers"])
        self.say(f"layers: {layers}")
        self.say(f"job: {est['rows']:,} rows x {est['dims']:,} dims x {est['bytes_per_value']} B = "
                 f"{format_size(est['bytes'])} on {event['device']} with {event.get('runtime', 'torch')} "
                 f"{event['precision']}"
                 f"; {event['already_done']:,} already done, {event['excluded']:,} excluded at discovery")
        self._start("extract", event["pending"], "img")

    def _extract_batch(self, event: dict[str, Any]) -> None:
        self.failed += event["failed"]
        if self.task is not None:
            self.task.update(event["done"], failed=self.failed)

    # train
    def _train_scan(self, event: dict[str, Any]) -> None:
        layers = ", ".join(f"{s.name}[{s.pool}]={s.dims}" for s in event["layers"])
        self.say(f"layers: {layers} ({event['dims']:,} dims)")
        self.say(f"rows: {event['n_train']:,} training, {event['n_val']:,} validation ({event['val_source']}); "
                 f"{len(event['classes'])} classes; solver: {event['solver']}"
                 + (f" ({event['solver_reason']})" if event.get("solver_reason") else ""))

    def _train_resume(self, event: dict[str, Any]) -> None:
        if not self.quiet:
            self.say(f"resuming after epoch {event['epoch']} of {event['epochs']} from {event['path']}")

    def _train_stats(self, event: dict[str, Any]) -> None:
        if not self.quiet:
            self.say(f"feature statistics: {event['rows']:,} rows in {event['seconds']:.1f} s")

    def _train_epoch(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        val = ("" if event["val_loss"] is None else
               f", val loss {event['val_loss']:.4f}, val accuracy {event['val_accuracy']:.4f}")
        self.say(f"epoch {event['epoch']}/{event['epochs']}: train loss {event['train_loss']:.4f}{val} "
                 f"({event['seconds']:.1f} s){' *' if event.get('best') else ''}")

    def _train_early_stop(self, event: dict[str, Any]) -> None:
        self.say(f"early stopping after epoch {event['epoch']} of {event['epochs']}: no better validation loss "
                 f"for {event['patience']} epochs; keeping epoch {event['best_epoch']}")

    # probe
    def _probe_plan(self, event: dict[str, Any]) -> None:
        self.say(f"probe: {event['candidates']} candidates from {event['layers']} layers ({event['dims']:,} dims); "
                 f"rows: {event['n_train']:,} training, {event['n_val']:,} validation ({event['val_source']}), "
                 f"test split: {event['test_split'] or 'none'}; memory budget {format_size(event['memory_budget'])}")
        self._start("probe", event["epochs"], "epochs")

    def _probe_epoch(self, event: dict[str, Any]) -> None:
        if self.task is not None:
            self.task.update(1, training=event["active"], best_val=f"{event['best']:.3f}")

    # train-cnn / finetune
    def _cnn_start(self, event: dict[str, Any]) -> None:
        self.say(f"{event['kind']}: {event['n_train']:,} training / {event['n_val']:,} validation images "
                 f"({event['val_source']}), {len(event['classes'])} classes, input {event['input_size']}, "
                 f"{event['trainable']:,} of {event['params']:,} parameters trained, "
                 f"{'cached in memory' if event['cached'] else 'streamed from disk'}, "
                 f"{event['device']} ({event['precision']})")
        if event["start_epoch"]:
            self.say(f"resuming after epoch {event['start_epoch']} of {event['epochs']}")
        self.say(f"{'epoch':>5} {'train loss':>11} {'valid loss':>11} {'train/valid':>12} {'valid acc':>10} "
                 f"{'duration':>9}")

    def _cnn_batch(self, event: dict[str, Any]) -> None:
        if self.task is None:
            self._start(f"epoch {event['epoch']}/{event['epochs']}", event["steps"], "batch", transient=True)
        if self.task is not None:
            self.task.update(1, loss=f"{event['loss']:.4f}")

    def _cnn_epoch(self, event: dict[str, Any]) -> None:
        self.close()
        ratio = event["train_valid_ratio"]
        self.say(f"{event['epoch']:>5} {event['train_loss']:>11.4f} {event['valid_loss']:>11.4f} "
                 f"{(f'{ratio:.3f}' if ratio is not None else '-'):>12} {event['valid_accuracy']:>10.4f} "
                 f"{event['seconds']:>8.1f}s")

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None


def _add_runtime_args(p: argparse.ArgumentParser, auto_help: str = "auto: the fastest installed runtime "
                      "that runs the model here (on a resume: the store's own)") -> None:
    """``--runtime`` / ``--precision``: validated by the API (deepfeat.runtimes.resolve_runtime)."""
    p.add_argument("--runtime", default="auto",
                   help=f"auto | openvino | onnxruntime | torch (default: auto; {auto_help})")
    p.add_argument("--precision", default="auto",
                   help="auto | fp32 | bf16 | fp16 (default: auto, the fastest precision that agrees with torch "
                        "fp32; bf16 only on CPUs that compute it natively)")


def cmd_extract(args: argparse.Namespace) -> int:
    from .engines import engine_from_arguments
    from .extraction import extract

    progress = _Progress("extract", args.quiet, to_stderr=args.json)
    try:
        s = extract(_source_of(args), args.out, model=args.model, layers=args.layers, pool=args.pool, dtype=args.dtype,
                    weights=args.weights, input_size=args.input_size, crop_pct=args.crop_pct,
                    batch_size=args.batch_size, workers=args.workers, device=args.device,
                    runtime=args.runtime, precision=args.precision, part_size=args.part_size,
                    part_seconds=args.part_seconds or None,
                    overwrite=args.overwrite,
                    ignore_free_space=args.ignore_free_space,
                    engine=engine_from_arguments(args), progress=progress, views=args.views, augment=args.augment,
                    views_splits=args.views_splits, augment_seed=args.augment_seed)
    finally:
        progress.close()
    say = progress.say
    say(f"done in {s.seconds:.1f} s ({s.images_per_second:.1f} img/s): "
        f"{s.embedded_now:,} embedded and {s.failed_now:,} failed this run; "
        f"store holds {s.embedded_total:,} embedded, {s.failed_total:,} failed, {s.excluded:,} excluded; "
        f"{s.rows_total:,} rows, {format_size(s.bytes_on_disk)} in {args.out}")
    if s.failures_by_reason:
        say("failures by reason: " + ", ".join(f"{k}={v}" for k, v in s.failures_by_reason.items())
            + f"  (details: deepfeat info {args.out} --failures)")
    if s.vanished_since:
        say(f"note: {s.vanished_since} stored inputs are no longer in the source")
    for note in s.notes:
        say(f"note: {note}")
    status = 0 if s.embedded_total else 1
    if status:
        say(_nothing_embedded(s, args.source, args.out))
    if args.json:
        _print_json_summary("extract", status, {**dataclasses.asdict(s), "images_per_second": s.images_per_second,
                                                "accounted": s.accounted})
    return status


def _print_json_summary(command: str, status: int, summary: dict[str, Any]) -> None:
    """``--json``: the run's summary as one JSON object on stdout (every other line went to stderr)."""
    _print(json.dumps({"command": command, "exit_status": status, **summary}, default=str, sort_keys=True))


def _nothing_embedded(s: Any, source: str, out: str) -> str:
    """The final line of an extract run that embedded nothing (exit status 1)."""
    if s.discovered:
        return f"nothing embedded: all {s.discovered:,} inputs failed (see the failures above); exit status 1"
    if s.excluded:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(s.excluded_by_reason.items()))
        return (f"nothing embedded: {source} holds no usable image file ({s.excluded:,} entries excluded at "
                f"discovery: {reasons}; details: deepfeat info {out} --failures); exit status 1")
    return f"nothing embedded: {source} holds no image files; exit status 1"


def cmd_info(args: argparse.Namespace) -> int:
    from .store.info import format_info, store_info, verify_store

    try:
        info = store_info(args.store)
    except StoreError:
        if not args.verify:
            raise
        info = None  # the store cannot be summarised; verify says which check fails
    if info is not None:
        _print(json.dumps(info.to_dict(), indent=1, default=str) if args.json
               else format_info(info, failures=args.failures))
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

    preds = classify_images(args.model, args.inputs, top_k=args.top_k, runtime=args.runtime,
                            precision=args.precision)
    bad = 0
    for p in preds:
        if p.error:
            bad += 1
            _print(f"{p.path}\tERROR\t{p.error}")
        else:
            _print(f"{p.path}\t" + "\t".join(f"{lbl} ({prob:.3f})" for lbl, prob in zip(p.labels, p.probabilities)))
    return 0 if bad < len(preds) or not preds else 1


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    class_weight = None if args.class_weight in (None, "", "none") else args.class_weight
    progress = _Progress("train", args.quiet, to_stderr=args.json)
    try:
        r = train(args.store, layers=args.layers, head=args.head, solver=args.solver, hidden=args.hidden,
                  epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, alpha=args.alpha,
                  val_fraction=args.val_fraction, patience=args.patience or None, class_weight=class_weight,
                  memory_budget=args.memory_budget, seed=args.seed, device=args.device, out=args.out,
                  overwrite=args.overwrite, resume=not args.no_resume, progress=progress)
    except KeyboardInterrupt:
        _print_error("interrupted: no bundle was written (it is written atomically at the end); rerun the same "
                     "command to continue (a streaming run resumes from its last complete epoch)")
        return 130
    finally:
        progress.close()
    v = r.validation
    val = (f"validation accuracy {v['accuracy']:.4f} on {v['n']:,} rows ({v['source']})" if v.get("n")
           else "no validation rows")
    stopped = (f"; stopped early after epoch {r.history[-1]['epoch']} of {args.epochs}, kept epoch {r.best_epoch}"
               if r.history and r.history[-1].get("stopped_early") else "")
    progress.say(f"done in {r.seconds:.1f} s ({r.solver}, {r.head_kind}): {val}{stopped}; saved {r.bundle_path}")
    if args.json:
        _print_json_summary("train", 0, {
            "seconds": r.seconds, "solver": r.solver, "head": r.head_kind, "classes": r.classes,
            "layers": [s.name for s in r.layers], "n_train": r.n_train, "n_val": r.n_val,
            "validation": r.validation, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
            "stopped_early": bool(r.history and r.history[-1].get("stopped_early")), "bundle": r.bundle_path})
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analysis.report import analyze

    s = analyze(args.store, args.out, split=args.split or None, layers=args.layers or None, bins=args.bins,
                alpha=args.alpha, top_k=args.top_k, sample_rows=args.sample_rows, batch_size=args.batch_size)
    noisiest = max(s["layers"], key=lambda r: r["noise"])
    _print(f"done in {s['seconds']:.1f} s: {s['features']:,} features x {len(s['classes'])} classes on {s['rows']:,} "
           f"rows; noise {s['noise_overall']:.3f} overall (max {noisiest['noise']:.3f} in {noisiest['layer']}); "
           f"report {s['report']}")
    return 0


def cmd_fne(args: argparse.Namespace) -> int:
    from .analysis.fne import full_network_embedding

    s = full_network_embedding(args.store, args.out, thresholds=args.thresholds, layers=args.layers or None,
                               stats_split=args.stats_split or None, overwrite=args.overwrite,
                               batch_size=args.batch_size)
    total = max(1, sum(s.value_counts.values()))
    shares = ", ".join(f"{k:+d}: {v / total:.3f}" for k, v in s.value_counts.items()) if s.value_counts else "-"
    _print(f"done in {s.seconds:.1f} s: {s.rows:,} rows x {s.dims:,} int8 dims ({len(s.layers)} layers, "
           f"{s.zero_variance} zero-variance features; statistics from {s.stats_rows:,} rows); "
           f"{s.parts_written} parts written, {s.parts_skipped} kept; values {shares}; store {s.out}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from .probing import probe

    progress = _Progress("probe", args.quiet)
    try:
        r = probe(args.store, args.out, layers=args.layers, groups=args.groups, head=args.head, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, alpha=args.alpha, val_fraction=args.val_fraction,
                  patience=args.patience or None, memory_budget=args.memory_budget, test_split=args.test_split or None,
                  thresholds=args.thresholds, seed=args.seed, progress=progress)
    finally:
        progress.close()
    _print(r.table())
    _print("\n" + r.advice)
    wrote = f"; wrote {', '.join(r.files.values())}" if r.files else ""
    _print(f"done in {r.seconds:.1f} s: {len(r.rows)} candidates, best {r.best['name']}{wrote}")
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

    preds = predict_images(args.model, args.inputs, top_k=3 if args.top_k is None else args.top_k,
                           batch_size=args.batch_size,
                           weights=args.weights, device=args.device, runtime=args.runtime,
                           precision=args.precision)
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

        preds = classify_images(args.model, args.inputs, top_k=args.top_k, runtime=args.runtime,
                                precision=args.precision)
        write_predictions(preds, args.out)
        bad = sum(p.error is not None for p in preds)
        _print(f"wrote {len(preds):,} predictions to {args.out} ({bad:,} could not be classified)")
        return 0 if bad < len(preds) or not preds else 1
    return cmd_predict(args)


def _print_cnn_result(r: Any) -> None:
    m = r.metrics
    test = f", test accuracy {m['test_accuracy']:.4f}" if "test_accuracy" in m else ""
    note = " (already trained: nothing to do)" if r.already_complete else ""
    _print(f"done in {r.seconds:.1f} s{note}: valid accuracy {m['valid_accuracy']:.4f} ({m['valid_source']}){test}; "
           f"model directory {r.out} (use it as --model {r.out})")
    if r.skipped:
        _print(f"{len(r.skipped):,} images could not be decoded and were left out")


def _cnn_common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                schedule=args.schedule, augment=args.augment, input_size=args.input_size,
                val_fraction=args.val_fraction, seed=args.seed, device=args.device, amp=not args.no_amp,
                workers=args.workers, memory_budget=args.memory_budget, resume=not args.no_resume,
                overwrite=args.overwrite, keep_checkpoint=args.keep_checkpoint)


def cmd_train_cnn(args: argparse.Namespace) -> int:
    from .cnn import train_cnn

    progress = _Progress("cnn", args.quiet)
    try:
        r = train_cnn(args.source, args.out, arch=args.arch, channels=args.channels, progress=progress,
                      **_cnn_common_kwargs(args))
    finally:
        progress.close()
    _print_cnn_result(r)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from .cnn import finetune

    progress = _Progress("cnn", args.quiet)
    try:
        r = finetune(args.source, args.out, model=args.model, weights=args.weights, freeze=args.freeze,
                     body_lr_mult=args.body_lr_mult, crop_pct=args.crop_pct, progress=progress,
                     **_cnn_common_kwargs(args))
    finally:
        progress.close()
    _print_cnn_result(r)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .viz import plots

    if args.what == "filters":
        res = plots.plot_filters(args.model, args.layer, args.out, max_filters=args.max_filters,
                                 max_channels=args.max_channels)
    elif args.what == "activations":
        res = plots.plot_activations(args.model, args.image, args.layer, args.out, max_maps=args.max_maps)
    elif args.what == "embedding":
        res = plots.plot_embedding(args.store, args.layer, args.out, method=args.method, split=args.split,
                                   max_points=args.max_points, seed=args.seed)
    else:
        res = plots.plot_history(args.model, args.out)
    _print(f"wrote {res.path} ({res.size[0]}x{res.size[1]} px, {res.panels} panel{'s' if res.panels != 1 else ''}): "
           f"{res.title}")
    return 0


# ----------------------------------------------------------------------------- parser
def _add_source_args(p: argparse.ArgumentParser) -> None:
    """The source positional and the source options (see :mod:`deepfeat.sources`)."""
    p.add_argument("source", help="image folder, CSV/TXT list file, WebDataset .tar shards (path, glob or "
                                  "'data/{00000..00099}.tar'), Parquet file(s), or hf:PATH (a saved Hugging Face "
                                  "dataset)")
    p.add_argument("--split", default=None,
                   help="split of inputs that name none (hf: the one split to read; default: all)")
    p.add_argument("--image-field", "--image-column", dest="image_field", default=None,
                   help="shards: image member extension (default jpg/png/webp...); Parquet/hf: image column")
    p.add_argument("--label-field", "--label-column", dest="label_field", default=None,
                   help="shards: label member (e.g. cls, txt) or JSON key (default: the .cls member); "
                        "Parquet/hf: label column (default: 'label')")
    p.add_argument("--split-field", "--split-column", dest="split_field", default=None,
                   help="shards: split member or JSON key (default: the shard's folder name when it is "
                        "train/val/test); Parquet: split column")
    p.add_argument("--id-field", "--id-column", dest="id_field", default=None,
                   help="Parquet/hf: a column of unique ids (default: file and row number)")


def _source_of(args: argparse.Namespace) -> Any:
    from .sources import SOURCE_OPTIONS, open_source

    return open_source(args.source, **{k: getattr(args, k, None) for k in SOURCE_OPTIONS})


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default=None,
                   help="local weights file (.safetensors or state dict), or 'random'; default: the pretrained "
                        "weights (bundled, cached, or downloaded into the HF / torch hub cache on first use)")
    _add_offline_arg(p)
    p.add_argument("--input-size", type=int, default=None, help="override the model's input size (square)")


def _add_offline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--offline", action="store_true", default=None,
                   help="never touch the network: pretrained weights must be bundled or cached (as HF_HUB_OFFLINE=1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepfeat", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--config", default=None,
                        help="YAML file of option defaults (names as the long options, '-' or '_'). A top-level "
                             "key applies to every command with that option; a section named after a command, "
                             "e.g. 'train: {alpha: 1e-4}' or 'analyze: {alpha: 0.01, out: analysis/}', applies to "
                             "that command only and wins over top-level keys ('plot' sections may nest "
                             "'embedding:' etc.). Flags on the command line win over both. A key no command "
                             "takes is an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list backbones and where their weights are: bundled, cached or download")
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
    _add_source_args(p)
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--model", default="efficientnet_lite0")
    _add_model_args(p)
    p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")
    p.add_argument("--layers", default="pre_logits", help="comma-separated names or shortcuts (see 'layers')")
    p.add_argument("--pool", default="avg", help="none|avg|max|avgmax; ViT token layers also cls|cls+avg (avg then "
                                                 "leaves out class/register tokens); per layer as 'avg,blocks.4=none'")
    p.add_argument("--dtype", default="float32", choices=["float16", "float32"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None,
                   help="decode processes (default: spare cores; with --engine ray: per Ray worker, default 0)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_runtime_args(p)
    p.add_argument("--part-size", type=int, default=None, help="inputs per committed part (default: ~256 MiB)")
    p.add_argument("--part-seconds", type=float, default=30.0,
                   help="also commit a part once it has been open this long, so Ctrl-C loses at most about that "
                        "much work (default: 30; 0: by size only; the Ray engine commits by size)")
    p.add_argument("--views", type=int, default=0, help="augmented views per image, besides the original (view 0)")
    p.add_argument("--augment", default=None,
                   help="augmentation spec for the views, e.g. 'flip,crop=0.8,rotate=15,color=0.2' (default flip,crop=0.8)")
    p.add_argument("--views-splits", default="train", help="splits that get augmented views (default: train)")
    p.add_argument("--augment-seed", type=int, default=0)
    add_engine_arguments(p)  # --engine and each engine's own flags (--address, --ray-workers, ...)
    p.add_argument("--overwrite", action="store_true", help="delete an existing store with another config")
    p.add_argument("--ignore-free-space", action="store_true",
                   help="start even when the job's estimated size exceeds the free space on the output's filesystem "
                        "(otherwise refused with exit status 4)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print the final summary as one JSON object on stdout (every other line goes to stderr)")
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

    p = sub.add_parser("analyze", help="per-feature discriminative statistics per class; HTML report + tables")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="report folder (report.html, report.md, CSV/Parquet, PNG)")
    p.add_argument("--split", default="train", help="split to analyse ('' = every row)")
    p.add_argument("--layers", default=None, help="stored layers to analyse (default: all)")
    p.add_argument("--bins", type=int, default=64, help="histogram bins per feature (approximation; see docs)")
    p.add_argument("--alpha", type=float, default=0.05, help="Benjamini-Hochberg false discovery rate")
    p.add_argument("--top-k", dest="top_k", type=int, default=10, help="top features listed per class")
    p.add_argument("--sample-rows", dest="sample_rows", type=int, default=2048,
                   help="reservoir sample the bin edges come from (rows, default 2048; memory: rows x features "
                        "in the store's dtype)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=2048,
                   help="most rows per batch (default 2048); a batch is also capped at 32 MiB as float64")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("fne", help="full-network embedding: standardise + ternarise a store into a new int8 store")
    p.add_argument("store")
    p.add_argument("--out", required=True, help="new store directory (rerun to resume)")
    p.add_argument("--thresholds", default="-0.25,0.15", help="lo,hi on standardised values (default -0.25,0.15)")
    # let "--thresholds -0.25,0.15" parse: argparse otherwise takes "-0.25,0.15" for an option
    p._negative_number_matcher = re.compile(r"^-\d*\.?\d+(,-?\d*\.?\d+)*$")  # type: ignore[attr-defined]
    p.add_argument("--layers", default=None, help="stored layers to embed (default: all)")
    p.add_argument("--stats-split", dest="stats_split", default="train",
                   help="split giving the mean/std ('' = every row)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=4096,
                   help="most rows per batch (default 4096); a batch is also capped at 32 MiB as float64")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_fne)

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
    p.add_argument("--memory-budget", default="1GiB",
                   help="memory for feature rows, with a unit: 512MiB, 2GiB (decides --solver auto; default 1GiB)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    p.add_argument("--no-resume", action="store_true",
                   help="start over even if OUT.ckpt holds a checkpoint of an interrupted run")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle OUT (otherwise refused)")
    p.add_argument("-q", "--quiet", action="store_true", help="no per-epoch lines and no progress bar")
    p.add_argument("--json", action="store_true",
                   help="print the final summary as one JSON object on stdout (every other line goes to stderr)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("probe", help="which layer? a quick linear head per layer (and stage, all layers, FNE), "
                                     "one pass over the store per epoch; table, CSV/JSON, plot, report.html")
    p.add_argument("store")
    p.add_argument("--out", default=None, help="folder for probe.csv, probe.json, probe.png, report.html")
    p.add_argument("--layers", default=None, help="stored layers to probe (default: all)")
    p.add_argument("--groups", default="stages,all,fne",
                   help="extra candidates: stages, all (all layers standardised), fne; 'none' for none")
    p.add_argument("--head", default="logreg", help="logreg | svm | mlp (the streaming head of 'train')")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3, cosine decay)")
    p.add_argument("--alpha", type=float, default=1e-4, help="L2 penalty")
    p.add_argument("--val-fraction", type=float, default=0.1, help="training ids held out when there is no val split")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience in epochs (0: off)")
    p.add_argument("--test-split", default="test", help="split scored at the end ('' for none)")
    p.add_argument("--thresholds", default="-0.25,0.15", help="FNE thresholds lo,hi on standardised values")
    p._negative_number_matcher = re.compile(r"^-\d*\.?\d+(,-?\d*\.?\d+)*$")  # type: ignore[attr-defined]
    p.add_argument("--memory-budget", default="1GiB", help="memory for feature rows, with a unit: 512MiB, 2GiB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_probe)

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
    p.add_argument("--out", default=None,
                   help="write predictions to a .csv or .json file, or an .html gallery (thumbnails + top-k)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weights", default=None, help="bundle only: backbone weights file if not at the recorded path")
    _add_offline_arg(p)
    p.add_argument("--device", default="cpu", help="bundle only: cpu | cuda | auto")
    _add_runtime_args(p, auto_help="auto: the bundle's own runtime and precision when they run here")
    p.set_defaults(func=cmd_predict_any)

    for name, helptext in (("train-cnn", "train a small ConvNet from scratch on a labelled image folder"),
                           ("finetune", "fine-tune a pretrained backbone on a labelled image folder")):
        p = sub.add_parser(name, help=helptext + " (writes a model directory usable as --model)")
        p.add_argument("source", help="image folder (split/class/* or class/*) or list file with labels")
        p.add_argument("--out", required=True, help="model directory to write (resumes if it holds a checkpoint)")
        if name == "train-cnn":
            p.add_argument("--arch", default="small", help="small (the seed's layout) | small_bn | medium")
            p.add_argument("--channels", type=int, default=None, choices=[1, 3],
                           help="input channels (default: 1 when every image is gray)")
            p.add_argument("--epochs", type=int, default=10)
            p.add_argument("--batch-size", type=int, default=64)
            p.add_argument("--weight-decay", type=float, default=0.0)
            p.add_argument("--augment", default="flip,crop=0.9,rotate=10",
                           help="flip, vflip, crop, rotate, translate, color, grayscale (with =value); 'none' for off")
            p.add_argument("--input-size", type=int, default=None,
                           help="square input side (default: the first image's shorter side, 16..64)")
            p.set_defaults(func=cmd_train_cnn)
        else:
            p.add_argument("--model", default="efficientnet_lite0", help="any backbone name 'deepfeat models' lists")
            p.add_argument("--weights", default=None,
                           help="local weights file (default: the pretrained weights, downloaded on first use)")
            _add_offline_arg(p)
            p.add_argument("--freeze", type=int, default=0,
                           help="freeze the first N stages (see 'deepfeat layers'); -1 freezes the whole body")
            p.add_argument("--body-lr-mult", type=float, default=0.1, help="body learning rate = lr x this")
            p.add_argument("--epochs", type=int, default=5)
            p.add_argument("--batch-size", type=int, default=32)
            p.add_argument("--weight-decay", type=float, default=1e-4)
            p.add_argument("--augment", default="flip,crop=0.8",
                           help="flip, vflip, crop, rotate, translate, color, grayscale (with =value); 'none' for off")
            p.add_argument("--input-size", type=int, default=None, help="override the model's input size (square)")
            p.add_argument("--crop-pct", type=float, default=None, help="override the centre-crop fraction")
            p.set_defaults(func=cmd_finetune)
        p.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (of the new head when fine-tuning)")
        p.add_argument("--schedule", default="cosine", choices=["cosine", "constant"])
        p.add_argument("--val-fraction", type=float, default=0.1,
                       help="training images held out for validation when the source has no val/test split")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--no-amp", action="store_true", help="no mixed precision on the GPU")
        p.add_argument("--workers", type=int, default=None, help="decode processes (default: spare cores)")
        p.add_argument("--memory-budget", default="2GiB", help="decoded images are cached in memory below this")
        p.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
        p.add_argument("--overwrite", action="store_true", help="replace a model trained with another configuration")
        p.add_argument("--keep-checkpoint", action="store_true", help="keep the last checkpoint after training")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar (the epoch table stays)")

    p = sub.add_parser("plot", help="plots: filters, activations, embedding, history (PNG)")
    plot_sub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    q = plot_sub.add_parser("filters", help="a conv layer's filters (RGB tiles for a first layer)")
    q.add_argument("model", help="model directory or backbone name")
    q.add_argument("--layer", default=None,
                   help="conv layer (or a block holding one); default: the model's first convolution")
    q.add_argument("--out", required=True, help="PNG file")
    q.add_argument("--max-filters", type=int, default=64)
    q.add_argument("--max-channels", type=int, default=16, help="input channels shown per filter (deeper layers)")
    q.set_defaults(func=cmd_plot)
    q = plot_sub.add_parser("activations", help="one image's activations: bar plot (vector) or map grid (conv)")
    q.add_argument("model", help="model directory or backbone name")
    q.add_argument("image", help="image file")
    q.add_argument("--layer", default="pre_logits")
    q.add_argument("--out", required=True, help="PNG file")
    q.add_argument("--max-maps", type=int, default=64)
    q.set_defaults(func=cmd_plot)
    q = plot_sub.add_parser("embedding", help="2-D PCA or t-SNE of a stored layer, coloured by class")
    q.add_argument("store", help="feature store directory")
    q.add_argument("--layer", default=None, help="stored layer (default: the only one)")
    q.add_argument("--method", default="pca", choices=["pca", "tsne"])
    q.add_argument("--split", default=None)
    q.add_argument("--max-points", type=int, default=5000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", required=True, help="PNG file")
    q.set_defaults(func=cmd_plot)
    q = plot_sub.add_parser("history", help="loss and accuracy curves of a trained model directory")
    q.add_argument("model", help="model directory")
    q.add_argument("--out", required=True, help="PNG file")
    q.set_defaults(func=cmd_plot)
    _finish_parser(parser)
    return parser


# ----------------------------------------------------------------------------- help and defaults
#: the API function each command calls: its signature gives the options' defaults (deepfeat.apidefaults)
_API_OF = {
    "extract": ("deepfeat.extraction", "extract"), "train": ("deepfeat.training", "train"),
    "export": ("deepfeat.store.export", "export_store"), "analyze": ("deepfeat.analysis.report", "analyze"),
    "fne": ("deepfeat.analysis.fne", "full_network_embedding"), "evaluate": ("deepfeat.evaluation", "evaluate"),
    "predict": ("deepfeat.predict", "predict_images"), "train-cnn": ("deepfeat.cnn.training", "train_cnn"),
    "finetune": ("deepfeat.cnn.training", "finetune"), "layers": ("deepfeat.models.registry", "load_backbone"),
    "datasets": ("deepfeat.datasets", "write_dataset"), "probe": ("deepfeat.probe", "probe"),
}
#: help of the options declared without one: (command, dest) first, then dest alone
_OPTION_HELP = {
    ("extract", "batch_size"): "images per forward pass",
    ("predict", "batch_size"): "images per forward pass",
    ("evaluate", "batch_size"): "rows scored per batch",
    ("train", "batch_size"): "rows per optimiser step",
    ("probe", "batch_size"): "rows per optimiser step",
    ("train-cnn", "batch_size"): "images per optimiser step",
    ("finetune", "batch_size"): "images per optimiser step",
    ("train", "epochs"): "most passes over the training rows (early stopping may end sooner; --solver stream)",
    ("probe", "epochs"): "most passes over the training rows (early stopping may end sooner)",
    ("train-cnn", "epochs"): "passes over the training images",
    ("finetune", "epochs"): "passes over the training images",
    ("export", "out"): "a folder for npy (one .npy per layer + rows.parquet), else a file",
    ("export", "overwrite"): "replace an existing OUT (otherwise refused)",
    ("fne", "overwrite"): "replace an existing OUT store made with other settings",
    ("datasets", "out"): "folder to write the images into (split/class/*.png)",
    ("plot", "layer"): "layer to show (see 'deepfeat layers MODEL')",
    ("plot", "split"): "plot only this split (default: every row)",
    "model": "backbone: a name 'deepfeat models' lists, timm:NAME, torchvision:NAME, a TorchScript file, or a "
             "model directory from train-cnn / finetune",
    "json": "print JSON instead of a table",
    "name": "dataset to write, e.g. fashion-mnist",
    "store": "feature store directory (from 'deepfeat extract')",
    "bundle": "model bundle from 'deepfeat train' (.dfm)",
    "dtype": "stored feature type (float16 halves the store)",
    "device": "cpu | cuda | auto (auto: cuda when available)",
    "augment_seed": "seed of the views' random augmentations",
    "format": "output format",
    "layers": "stored layers, comma-separated (default: all)",
    "split": "only this split (default: every row)",
    "seed": "random seed (shuffling, initial weights, hold-out)",
    "weight_decay": "AdamW weight decay",
    "schedule": "learning-rate schedule over the epochs",
    "max_filters": "most filters shown",
    "max_maps": "most activation maps shown",
    "method": "2-D projection",
    "max_points": "most points plotted (a random sample beyond)",
}


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter plus ``(default: X)`` after every option whose help does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS or "default" in text.lower()
                or "%(default)" in text or (not action.option_strings and action.nargs not in ("?", "*"))):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def _finish_parser(parser: argparse.ArgumentParser, command: str = "") -> None:
    """Every (sub)parser: the defaults of the API function it calls, a help line for every option, and
    the formatter that shows defaults."""
    from .apidefaults import api_defaults

    parser.formatter_class = _HelpFormatter
    module_function = _API_OF.get(command)
    api = api_defaults(*module_function) if module_function else {}
    top = command.split(" ")[0]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sp in a.choices.items():
                if id(sp) not in seen:
                    seen.add(id(sp))
                    _finish_parser(sp, f"{command} {name}".strip())
            continue
        if a.dest in api and a.default is not None and a.option_strings:
            value = api[a.dest]
            if isinstance(value, (tuple, list)) and isinstance(a.default, str):
                value = ",".join(map(str, value))  # --top-k 1,3 <- top_k=(1, 3)
            if type(value) is type(a.default):  # "1GiB" (CLI) vs 1 << 30 (API) are left alone
                a.default = value
                parser.set_defaults(**{a.dest: value})
        if not a.help and a.dest not in ("help", "version"):
            a.help = _OPTION_HELP.get((top, a.dest)) or _OPTION_HELP.get(a.dest)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` (name -> parser), or {}."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _config_value(action: argparse.Action, value: Any, key: str, where: str) -> Any:
    """A YAML value checked and converted like the option's command-line value."""
    flag = "/".join(action.option_strings)
    bad = f"The config file's {where} key {key!r} ({flag})"
    if action.nargs == 0:  # store_true / store_false / count
        if isinstance(action.const, bool):
            if not isinstance(value, bool):
                raise UsageError(f"{bad} must be true or false; got {value!r} instead.")
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UsageError(f"{bad} must be an integer >= 0; got {value!r} instead.")
        return value
    if isinstance(value, (list, tuple)) and action.type in (None, str) and action.nargs is None:
        value = ",".join(str(v) for v in value)  # layers: [a, b] -> "a,b"
    if isinstance(value, (dict, list, tuple)):
        raise UsageError(f"{bad} must be a single value; got {value!r} instead.")
    if action.type is None and isinstance(value, bool):
        raise UsageError(f"{bad} must be a string; got {value!r} instead.")
    if action.type is None and isinstance(value, (int, float)):
        value = str(value)  # as on the command line: layers: -1 -> "-1", top-k: 5 -> "5"
    if value is not None and action.type is not None:
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            name = getattr(action.type, "__name__", "valid")
            raise UsageError(f"{bad} must be a{'n' if name[:1] in 'aeiou' else ''} {name} value; "
                             f"got {value!r} instead.") from None
    if value is not None and action.choices is not None and value not in action.choices:
        raise UsageError(f"{bad} must be one of {', '.join(map(str, action.choices))}; got {value!r} instead.")
    return value


def _configure(parser: argparse.ArgumentParser, inherited: dict[str, tuple[Any, str]], section: dict[Any, Any],
               where: str) -> set[tuple[str, str]]:
    """Set the config defaults of ``parser`` and its subcommands; returns the (scope, key) pairs applied."""
    subs = _subcommands(parser)
    own: dict[str, Any] = {}
    nested: dict[str, dict[Any, Any]] = {}
    for k, v in section.items():
        name = str(k)
        if name in subs and isinstance(v, dict):  # a section ('layers' is a command and an option too)
            nested[name] = v
        else:
            own[name.replace("-", "_")] = v
    scope = where or "top-level"
    effective = {**inherited, **{k: (v, scope) for k, v in own.items()}}
    options = {a.dest: a for a in parser._actions
               if a.option_strings and a.dest not in ("help", "version", "config")}
    applied: set[tuple[str, str]] = set()
    defaults = {}
    for k, (v, origin) in effective.items():
        action = options.get(k)
        if action is None:
            continue
        defaults[k] = _config_value(action, v, k, origin)
        action.required = False  # e.g. --out: the config file gives it
        applied.add((origin, k))
    parser.set_defaults(**defaults)
    seen: set[int] = set()
    for name, sp in subs.items():
        if id(sp) in seen:  # an alias
            continue
        seen.add(id(sp))
        applied |= _configure(sp, effective, nested.get(name, {}), f"{where}.{name}" if where else name)
    unused = sorted(k for k in own if (scope, k) not in applied)
    for k in unused:
        if k in subs:
            raise UsageError(f"The config file's section {k!r} must be a mapping of option: value; "
                             f"got {section.get(k)!r} instead.")
    if unused:
        what = "any command" if not where else f"'deepfeat {where.replace('.', ' ')}'"
        raise UsageError(f"The config file sets {', '.join(map(repr, unused))} in its {scope} "
                         f"{'keys' if not where else 'section'}, which is not an option of {what}.")
    return applied


def _apply_config(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """``--config FILE`` (YAML, safe_load) sets option defaults; flags on the command line override it.

    Top-level keys apply to every command that has an option of that name (``--top-k`` as
    ``top_k`` or ``top-k``); a section named after a command (``train: {alpha: 1e-4}``,
    ``analyze: {alpha: 0.01}``) applies to that command only and overrides the top-level keys;
    sections nest for subcommands of subcommands (``plot: {embedding: {method: tsne}}``). A key
    that names a command is a section when its value is a mapping, else an option (``layers``). Values
    are checked like command-line values; a key that no command (or not the section's command)
    takes is an error, as is a section that is not a mapping.
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    from .configfile import load_config_file

    data = load_config_file(known.config)  # safe types, bounded size and alias expansion
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UsageError(f"The config file {known.config!r} must hold a mapping of option: value.")
    _configure(parser, {}, data, "")


def main(argv: Sequence[str] | None = None) -> int:
    program = argv is None  # run as the program (not called from Python): see the finally clause
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        _apply_config(parser, argv)
        args = parser.parse_args(argv)
        level = logging.WARNING - 10 * min(args.verbose, 2)
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
        return _run(args)
    except UsageError as exc:
        _print_error(f"error: {_cli_message(str(exc), parser, argv)}")
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
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except OSError as exc:
        if exc.errno not in _DISK_FULL_ERRNOS:
            raise
        _print_error(f"environment error: {exc}. The disk is full (or a file size limit was hit): free space and "
                     "rerun the same command.")
        return 4
    finally:
        if program:  # the command is over: a late Ctrl-C must not turn its exit status into a signal death
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _forget_interrupt()


def _forget_interrupt() -> None:
    """Keep exit status 130 after an interrupt that deepfeat handled.

    CPython (3.11) remembers a ``KeyboardInterrupt`` that left code run through ``PyRun_*`` -- as
    native extensions run Python snippets -- and at exit kills itself with SIGINT, even though the
    exception was caught further up and ``main`` returned 130. Running a trivial string through
    ``PyRun_SimpleString`` clears that flag.
    """
    try:
        import ctypes

        ctypes.pythonapi.PyRun_SimpleString(b"pass")
    except Exception:  # noqa: BLE001 - not CPython: nothing to clear
        pass


def _print_error(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC))


def _run(args: argparse.Namespace) -> int:
    """Run the command with the one progress reporter installed (deepfeat.progress): a bar when stderr
    is a terminal, plain periodic lines otherwise, nothing with -q."""
    from .progress import Reporter

    reporter = Reporter("off" if getattr(args, "quiet", False) else "auto")
    from .models.hub import offline_mode

    with reporter.installed(), offline_mode(getattr(args, "offline", None)):
        return int(args.func(args) or 0)


def _option_names(parser: argparse.ArgumentParser, argv: Sequence[str]) -> dict[str, str]:
    """Python parameter name -> what the user types, for the (sub)command ``argv`` runs:
    ``batch_size`` -> ``--batch-size``, a positional ``store`` -> ``STORE``."""
    names: dict[str, str] = {}
    current: argparse.ArgumentParser | None = parser
    rest = [a for a in argv if not a.startswith("-")]
    while current is not None:
        for a in current._actions:
            if a.dest in (argparse.SUPPRESS, "help", "func"):
                continue
            if a.option_strings:
                names.setdefault(a.dest, max(a.option_strings, key=len))
            elif not isinstance(a, argparse._SubParsersAction):
                names.setdefault(a.dest, str(a.metavar or a.dest).upper())
        subs = _subcommands(current)
        current = None
        while rest and subs:
            word = rest.pop(0)
            if word in subs:
                current = subs[word]
                break
    return names


def _cli_message(message: str, parser: argparse.ArgumentParser, argv: Sequence[str]) -> str:
    """A UsageError's message with the API's parameter names replaced by the command line's options.

    The API names parameters (``The 'batch_size' parameter of train``, ``overwrite=True``,
    ``choose one with 'layer'``); on the command line those read ``the option --batch-size``,
    ``--overwrite``, ``with --layer``, and ``None`` (not typeable) drops out of the alternatives.
    """
    names = _option_names(parser, argv)

    def option(m: re.Match[str]) -> str:
        flag = names.get(m.group(2))
        if flag is None:
            return m.group(0)
        if not m.group(1):
            return flag
        return f"{m.group(1)}{'option' if flag.startswith('-') else 'argument'} {flag}"

    def assignment(m: re.Match[str]) -> str:
        flag = names.get(m.group(1))
        if flag is None or not flag.startswith("-"):
            return m.group(0)
        value = m.group(2)
        return flag if value == "True" else f"{flag} {value.strip(chr(39))}"

    out = re.sub(r"\b(The |the )?'(\w+)' parameter(?: of [\w.]+)?(?: \(--[\w-]+\))?", option, message)
    out = re.sub(r"\b([a-z_]+)=(True|'[^']*'|-?\d[\w.]*)(?: \(--[\w-]+\))?", assignment, out)
    out = re.sub(r"\bwith '(\w+)'", lambda m: f"with {names[m.group(1)]}" if m.group(1) in names else m.group(0), out)
    if out != message:
        out = re.sub(r"\bNone or |,? or None\b", "", out)
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

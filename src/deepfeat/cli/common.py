"""What the command modules share: printing, the progress renderer, the argument groups several commands
take (source, model, runtime, offline), the help formatter and the per-parser finishing step that takes
option defaults from the Python API's signatures (:mod:`deepfeat.apidefaults`, which never imports torch).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..units import format_size, size_text

#: how the output names where train-cnn / finetune validate
VALIDATION_SOURCES = {
    "val": "the val split",
    "held-out": "held out of train by id hash, not the test split",
    "test": "the test split, as asked: early stopping tunes on it",
}
#: the metavar of a size option (``--memory-budget 2GiB``): its default is the API's, written with a unit
SIZE = "SIZE"


def _print(*args: Any) -> None:
    print(*args, flush=True)


def _print_error(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _print_json_summary(command: str, status: int, summary: dict[str, Any]) -> None:
    """``--json``: the run's summary as one JSON object on stdout (every other line went to stderr)."""
    _print(json.dumps({"command": command, "exit_status": status, **summary}, default=str, sort_keys=True))


def _reporter() -> Any:
    """The progress reporter main() installed (a bar on a terminal, plain periodic lines otherwise)."""
    from .. import progress

    return progress.current() or progress.Reporter()


class EventRenderer:
    """The one renderer of the API's progress events (extract, train, train-cnn / finetune): plan and
    epoch lines on stdout (stderr with --json, where stdout holds the JSON summary only), counts, rates
    and ETAs through the progress reporter (deepfeat.progress)."""

    def __init__(self, kind: str, quiet: bool = False, to_stderr: bool = False) -> None:
        self.kind = kind  # "extract" | "train" | "probe" | "cnn"
        self.quiet = quiet
        self.say = _print_error if to_stderr else _print
        self.task: Any = None
        self.failed = 0
        self.started = time.monotonic()
        self.planned: float | None = None  #: when the plan event came: the model and runtime are ready

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
        self.planned = time.monotonic()
        est = event["estimate"]
        layers = ", ".join(f"{s.name}[{s.pool}]={s.dims}" for s in event["layers"])
        self.say(f"layers: {layers}")
        self.say(
            f"job: {est['rows']:,} rows x {est['dims']:,} dims x {est['bytes_per_value']} B = "
            f"{format_size(est['bytes'])} on {event['device']} with {event.get('runtime', 'torch')} "
            f"{event['precision']}"
            f"; {event['already_done']:,} already done, {event['excluded']:,} excluded at discovery"
        )
        if event.get("agreement"):
            from ..agreement import describe_agreement

            self.say(f"precision guard: {describe_agreement({'agreement': event['agreement']})}")
        self._start("extract", event["pending"], "img")

    def _extract_guard(self, event: dict[str, Any]) -> None:
        if not self.quiet:
            self.say(
                f"precision guard: measuring {event['precision']} against torch fp32 on {event['images']} "
                "of the job's images"
            )

    def _extract_batch(self, event: dict[str, Any]) -> None:
        self.failed += event["failed"]
        if self.task is not None:
            self.task.update(event["done"], failed=self.failed)

    def setup_seconds(self) -> float | None:
        """Seconds from the start to the plan (loading the model, building or converting the runtime)."""
        return None if self.planned is None else self.planned - self.started

    # train
    def _train_scan(self, event: dict[str, Any]) -> None:
        layers = ", ".join(f"{s.name}[{s.pool}]={s.dims}" for s in event["layers"])
        self.say(f"layers: {layers} ({event['dims']:,} dims)")
        self.say(
            f"rows: {event['n_train']:,} training, {event['n_val']:,} validation ({event['val_source']}); "
            f"{len(event['classes'])} classes; solver: {event['solver']}"
            + (f" ({event['solver_reason']})" if event.get("solver_reason") else "")
        )

    def _train_resume(self, event: dict[str, Any]) -> None:
        if not self.quiet:
            self.say(f"resuming after epoch {event['epoch']} of {event['epochs']} from {event['path']}")

    def _train_stats(self, event: dict[str, Any]) -> None:
        if not self.quiet:
            self.say(f"feature statistics: {event['rows']:,} rows in {event['seconds']:.1f} s")

    def _train_epoch(self, event: dict[str, Any]) -> None:
        if self.quiet:
            return
        val = (
            ""
            if event["val_loss"] is None
            else f", val loss {event['val_loss']:.4f}, val accuracy {event['val_accuracy']:.4f}"
        )
        self.say(
            f"epoch {event['epoch']}/{event['epochs']}: train loss {event['train_loss']:.4f}{val} "
            f"({event['seconds']:.1f} s){' *' if event.get('best') else ''}"
        )

    def _train_early_stop(self, event: dict[str, Any]) -> None:
        self.say(
            f"early stopping after epoch {event['epoch']} of {event['epochs']}: no better validation loss "
            f"for {event['patience']} epochs; keeping epoch {event['best_epoch']}"
        )

    # probe
    def _probe_plan(self, event: dict[str, Any]) -> None:
        self.say(
            f"probe: {event['candidates']} candidates from {event['layers']} layers ({event['dims']:,} dims); "
            f"rows: {event['n_train']:,} training, {event['n_val']:,} validation ({event['val_source']}), "
            f"test split: {event['test_split'] or 'none'}; memory budget {format_size(event['memory_budget'])}"
        )
        self._start("probe", event["epochs"], "epochs")

    def _probe_epoch(self, event: dict[str, Any]) -> None:
        if self.task is not None:
            self.task.update(1, training=event["active"], best_val=f"{event['best']:.3f}")

    # train-cnn / finetune
    def _cnn_start(self, event: dict[str, Any]) -> None:
        self.say(
            f"{event['kind']}: {event['n_train']:,} training / {event['n_val']:,} validation images "
            f"({VALIDATION_SOURCES.get(event['val_source'], event['val_source'])}), "
            f"{len(event['classes'])} classes, input {event['input_size']}, "
            f"{event['trainable']:,} of {event['params']:,} parameters trained, "
            f"{'cached in memory' if event['cached'] else 'streamed from disk'}, "
            f"{event['device']} ({event['precision']})"
        )
        if event["start_epoch"]:
            self.say(f"resuming after epoch {event['start_epoch']} of {event['epochs']}")
        self.say(f"{'epoch':>5} {'train loss':>11} {'valid loss':>11} {'train/valid':>12} {'valid acc':>10} {'duration':>9}")

    def _cnn_batch(self, event: dict[str, Any]) -> None:
        if self.task is None:
            self._start(f"epoch {event['epoch']}/{event['epochs']}", event["steps"], "batch", transient=True)
        if self.task is not None:
            self.task.update(1, loss=f"{event['loss']:.4f}")

    def _cnn_epoch(self, event: dict[str, Any]) -> None:
        self.close()
        ratio = event.get("train_val_ratio")
        self.say(
            f"{event['epoch']:>5} {event['train_loss']:>11.4f} {event['val_loss']:>11.4f} "
            f"{(f'{ratio:.3f}' if ratio is not None else '-'):>12} {event['val_accuracy']:>10.4f} "
            f"{event['seconds']:>8.1f}s{' *' if event.get('best') else ''}"
        )

    _cnn_early_stop = _train_early_stop

    def close(self) -> None:
        if self.task is not None:
            self.task.close()
            self.task = None


def _add_runtime_args(
    p: argparse.ArgumentParser,
    auto_help: str = "auto: the fastest installed runtime that runs the model here (on a resume: the store's own)",
) -> None:
    """``--runtime`` / ``--precision``: validated by the API (deepfeat.runtimes.resolve_runtime)."""
    p.add_argument("--runtime", default="auto", help=f"auto | openvino | onnxruntime | torch (default: auto; {auto_help})")
    p.add_argument(
        "--precision",
        default="auto",
        help="auto | fp32 | bf16 | fp16 | int8 (default: auto, the fastest precision that agrees with torch "
        "fp32; bf16 only on CPUs that compute it natively, and in extract only after the precision "
        "guard measured it on the job's images; int8: openvino, extract only, quantised on a "
        "seeded sample of 300 of the job's images, never picked by auto)",
    )


def _add_source_args(p: argparse.ArgumentParser) -> None:
    """The source positional and the source options (see :mod:`deepfeat.sources`)."""
    p.add_argument(
        "source",
        help="image folder, CSV/TXT list file, WebDataset .tar shards (path, glob or "
        "'data/{00000..00099}.tar'), Parquet file(s), or hf:PATH (a saved Hugging Face "
        "dataset)",
    )
    p.add_argument("--split", default=None, help="split of inputs that name none (hf: the one split to read; default: all)")
    p.add_argument(
        "--image-field",
        "--image-column",
        dest="image_field",
        default=None,
        help="shards: image member extension (default jpg/png/webp...); Parquet/hf: image column",
    )
    p.add_argument(
        "--label-field",
        "--label-column",
        dest="label_field",
        default=None,
        help="shards: label member (e.g. cls, txt) or JSON key (default: the .cls member); "
        "Parquet/hf: label column (default: 'label')",
    )
    p.add_argument(
        "--split-field",
        "--split-column",
        dest="split_field",
        default=None,
        help="shards: split member or JSON key (default: the shard's folder name when it is "
        "train/val/test); Parquet: split column",
    )
    p.add_argument(
        "--id-field",
        "--id-column",
        dest="id_field",
        default=None,
        help="Parquet/hf: a column of unique ids (default: file and row number)",
    )
    p.add_argument(
        "--symlinks-inside-root",
        action="store_true",
        default=None,
        help="folders: refuse symlinks to files that resolve outside the source folder (excluded as "
        "symlink_outside_root); by default they are followed wherever they point, as find -L does",
    )


def _source_of(args: argparse.Namespace) -> Any:
    from ..sources import SOURCE_OPTIONS, open_source

    return open_source(args.source, **{k: getattr(args, k, None) for k in SOURCE_OPTIONS})


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default=None,
        help="local weights file (.safetensors or state dict), or 'random'; default: the pretrained "
        "weights (bundled, cached, or downloaded into the HF / torch hub cache on first use)",
    )
    _add_offline_arg(p)
    p.add_argument("--input-size", type=int, default=None, help="override the model's input size (square)")


def _add_offline_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--offline",
        action="store_true",
        default=None,
        help="never touch the network: pretrained weights must be bundled or cached (as HF_HUB_OFFLINE=1)",
    )


# ----------------------------------------------------------------------------- parsers, help and defaults
class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` that remembers what was declared on it, through argparse's
    public methods only (no ``_actions`` walking): :attr:`arguments` holds every Action
    ``add_argument`` returned, in order (``--help`` included), :attr:`commands` every subcommand
    parser ``add_subparsers().add_parser`` returned (name -> parser; subparsers are of this class too,
    argparse's documented default for ``parser_class``). The help formatter, the API defaults, the
    ``--config`` layer and the error messages read these."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: list[argparse.Action] = []
        self.commands: dict[str, CommandParser] = {}
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        add_parser, commands = action.add_parser, self.commands

        def add(name: str, **kw: Any) -> CommandParser:
            sp = add_parser(name, **kw)
            for n in (name, *kw.get("aliases", ())):
                commands[n] = sp
            return sp

        action.add_parser = add
        return action

    @property
    def options(self) -> dict[str, argparse.Action]:
        """dest -> Action of every optional argument (``--batch-size`` -> ``batch_size``)."""
        return {a.dest: a for a in self.arguments if a.option_strings}


#: help of the options declared without one, by dest (a command module's OPTION_HELP wins)
OPTION_HELP = {
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
        if (
            default is None
            or default is False
            or default == argparse.SUPPRESS
            or "default" in text.lower()
            or "%(default)" in text
            or (not action.option_strings and action.nargs not in ("?", "*"))
        ):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else "%(default)s"
        return f"{text} (default: {shown})" if text else f"default: {shown}"


def finish_parser(
    parser: CommandParser, command: str, api_of: dict[str, tuple[str, str]], option_help: dict[str, dict[str, str]]
) -> None:
    """Every (sub)parser: the defaults of the API function it calls (``api_of[command]``, read by
    :func:`deepfeat.apidefaults.api_defaults` from the source, without importing it), a help line for
    every option, and the formatter that shows defaults."""
    from ..apidefaults import api_defaults

    parser.formatter_class = _HelpFormatter
    module_function = api_of.get(command)
    api = api_defaults(*module_function) if module_function else {}
    top = command.split(" ")[0]
    seen: set[int] = set()
    for name, sp in parser.commands.items():
        if id(sp) not in seen:
            seen.add(id(sp))
            finish_parser(sp, f"{command} {name}".strip(), api_of, option_help)
    for a in parser.arguments:
        if a.dest in api and (a.default is not None or a.metavar == SIZE) and a.option_strings:
            value = api[a.dest]
            if isinstance(value, (tuple, list)) and isinstance(a.default, str):
                value = ",".join(map(str, value))  # --top-k 1,3 <- top_k=(1, 3)
            if a.metavar == SIZE and type(value) is int:
                value = size_text(value)  # --memory-budget 1GiB <- memory_budget=1 << 30
            if a.default is None or type(value) is type(a.default):
                a.default = value
                parser.set_defaults(**{a.dest: value})
        if not a.help and a.dest not in ("help", "version"):
            a.help = option_help.get(top, {}).get(a.dest) or OPTION_HELP.get(a.dest)


#: ``--thresholds -0.25,0.15`` parses as a value: argparse otherwise takes "-0.25,0.15" for an option
NEGATIVE_NUMBERS = r"^-\d*\.?\d+(,-?\d*\.?\d+)*$"

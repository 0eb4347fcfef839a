"""The ``deepfeat`` command line: a thin shell over the Python API (same verbs, same names).

Exit status: 0 success (bad images are in the ledger, not errors); 1 the run completed but no
input could be embedded; 2 bad arguments; 3 store problem (locked, other config, corrupt);
4 environment fault (disk full, I/O error); 130 interrupted (the part in progress is discarded).

One module per command (or family of commands) in this package, each with ``add_parser(subparsers)``
and ``run(args) -> int`` plus ``API`` (command -> the API function whose signature gives the options'
defaults, read by :mod:`deepfeat.apidefaults` without importing it) and ``OPTION_HELP``; shared
argument groups, printing and the progress renderer in :mod:`deepfeat.cli.common`; ``--config`` in
:mod:`deepfeat.cli.config`. This module builds the parser from :data:`COMMANDS`, maps errors to exit
statuses and rewrites the API's parameter names in usage errors to the command line's flags. No module
here imports torch at import time (``deepfeat --help``, ``models`` and ``info`` never load it).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
from collections.abc import Sequence
from types import ModuleType

from .._version import __version__
from ..errors import EnvironmentFault, StoreError, UsageError
from ..registry import Registry
from ..store.fsutil import WRITE_ERRNOS, write_error_hint
from . import (
    analyze,
    cnn,
    datasets,
    duplicates,
    evaluate,
    export,
    export_model,
    extract,
    index,
    info,
    layers,
    models,
    plot,
    predict,
    probe,
    search,
    train,
)
from .common import CommandParser, _print_error, finish_parser
from .config import _apply_config

__all__ = ["COMMANDS", "build_parser", "main", "register_command"]

#: the command modules, in the order ``deepfeat --help`` lists their commands
COMMANDS: Registry[ModuleType] = Registry("command")
for _module in (
    models,
    layers,
    datasets,
    extract,
    info,
    export,
    analyze,
    train,
    probe,
    evaluate,
    predict,
    export_model,
    duplicates,
    index,
    search,
    cnn,
    plot,
):
    COMMANDS.register(_module, name=_module.__name__.rpartition(".")[2])
#: add a command module (``add_parser``, ``run``, ``API``, ``OPTION_HELP``): ``register_command(module, name=...)``
register_command = COMMANDS.register


def build_parser() -> CommandParser:
    parser = CommandParser(prog="deepfeat", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"deepfeat {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument(
        "--config",
        default=None,
        help="YAML file of option defaults (names as the long options, '-' or '_'). A top-level "
        "key applies to every command with that option; a section named after a command, "
        "e.g. 'train: {alpha: 1e-4}' or 'analyze: {alpha: 0.01, out: analysis/}', applies to "
        "that command only and wins over top-level keys ('plot' sections may nest "
        "'embedding:' etc.). Flags on the command line win over both. A key no command "
        "takes is an error",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    api_of: dict[str, tuple[str, str]] = {}
    option_help: dict[str, dict[str, str]] = {}
    for command in COMMANDS.values():
        command.add_parser(sub)
        api_of.update(command.API)
        option_help.update(command.OPTION_HELP)
    finish_parser(parser, "", api_of, option_help)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    program = argv is None  # run as the program (not called from Python): see the finally clause
    argv = list(sys.argv[1:] if argv is None else argv)
    command: str | None = None
    try:
        parser = build_parser()
        _apply_config(parser, argv)
        args = parser.parse_args(argv)
        command = args.command
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
        _print_error(f"interrupted: {interrupt_message(command)}")
        return 130
    except FileNotFoundError as exc:
        _print_error(f"error: {exc}")
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        sys.stderr.close()
        return 0
    except OSError as exc:  # a write the environment refused that no library seam turned into an EnvironmentFault
        if exc.errno not in WRITE_ERRNOS:
            raise
        _print_error(f"environment error: {exc}.{write_error_hint(exc)}")
        return 4
    finally:
        if program:  # the command is over: a late Ctrl-C must not turn its exit status into a signal death
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            _forget_interrupt()
            pool = sys.modules.get("deepfeat.data.decode_pool")
            if pool is not None:  # exit after every helper process of the decode workers, not before
                pool.stop_resource_tracker()


#: what an interrupted command left and what a rerun does, by command (the others start over)
_INTERRUPTED = {
    "extract": "the part in progress was discarded; rerun the same command to resume",
    "fne": "the part in progress was discarded; rerun the same command to resume",
    "train": "nothing was written; rerunning the same command continues from the last complete epoch when it "
    "kept a checkpoint (--out with the streaming solver), otherwise it starts over",
    "train-cnn": "rerun the same command to continue from the last complete epoch (its checkpoint in --out)",
    "finetune": "rerun the same command to continue from the last complete epoch (its checkpoint in --out)",
    "models": "nothing was changed",
    "layers": "nothing was changed",
    "info": "nothing was changed",
}


def interrupt_message(command: str | None) -> str:
    """The line after ``interrupted:`` for ``command``: whether a rerun resumes or starts over."""
    if command is None:
        return "nothing was done"
    return _INTERRUPTED.get(command, "nothing partial was left; rerun the same command to start over (it does not resume)")


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


def _run(args: argparse.Namespace) -> int:
    """Run the command with the one progress reporter installed (deepfeat.progress): a bar when stderr
    is a terminal, plain periodic lines otherwise, nothing with -q."""
    from ..interrupts import import_held
    from ..progress import Reporter

    api = next((m.API[args.command] for m in COMMANDS.values() if args.command in m.API), None)
    if api is not None:  # the command's library module (torch and friends) with Ctrl-C held while it loads
        import_held(api[0])
    reporter = Reporter("off" if getattr(args, "quiet", False) else "auto")
    from ..models.hub import offline_mode

    with reporter.installed(), offline_mode(getattr(args, "offline", None)):
        return int(args.func(args) or 0)


def _option_names(parser: CommandParser, argv: Sequence[str]) -> dict[str, str]:
    """Python parameter name -> what the user types, for the (sub)command ``argv`` runs:
    ``batch_size`` -> ``--batch-size``, a positional ``store`` -> ``STORE``."""
    names: dict[str, str] = {}
    current: CommandParser | None = parser
    rest = [a for a in argv if not a.startswith("-")]
    while current is not None:
        for a in current.arguments:
            if a.dest in (argparse.SUPPRESS, "help", "func"):
                continue
            if a.option_strings:
                names.setdefault(a.dest, max(a.option_strings, key=len))
            else:
                names.setdefault(a.dest, str(a.metavar or a.dest).upper())
        subs = current.commands
        current = None
        while rest and subs:
            word = rest.pop(0)
            if word in subs:
                current = subs[word]
                break
    return names


def _cli_message(message: str, parser: CommandParser, argv: Sequence[str]) -> str:
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

"""``--config FILE``: option defaults from a YAML file, on argparse's documented ``set_defaults``.

The mechanism: the file is read safely (:func:`deepfeat.configfile.load_config_file`); then, for the
top-level parser and every subcommand parser in turn (:attr:`CommandParser.commands`), every key in
scope is checked to be a known option's ``dest`` of that parser (:attr:`CommandParser.options`, the
Actions ``add_argument`` returned), its value is checked and converted like the command-line value
(the Action's ``type``, ``choices``, ``nargs``), and the validated values are installed with
``parser.set_defaults(**validated)``. argparse gives precedence to flags on the command line over
``set_defaults`` (documented), so flags win over the file. An option the file gives is no longer
required (``action.required = False``, e.g. ``--out``). Nothing reads argparse's private state.

Scopes: top-level keys apply to every command that has an option of that name (``--top-k`` as
``top_k`` or ``top-k``); a section named after a command (``train: {alpha: 1e-4}``) applies to that
command only and wins over the top-level keys; sections nest for subcommands of subcommands
(``plot: {embedding: {method: tsne}}``). A key that names a command is a section when its value is a
mapping, else an option (``layers``). A key that no command (or not the section's command) takes is
an error, as is a section that is not a mapping.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..errors import UsageError
from .common import CommandParser


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
            raise UsageError(
                f"{bad} must be a{'n' if name[:1] in 'aeiou' else ''} {name} value; got {value!r} instead."
            ) from None
    if value is not None and action.choices is not None and value not in action.choices:
        raise UsageError(f"{bad} must be one of {', '.join(map(str, action.choices))}; got {value!r} instead.")
    return value


def _configure(
    parser: CommandParser, inherited: dict[str, tuple[Any, str]], section: dict[Any, Any], where: str
) -> set[tuple[str, str]]:
    """Set the config defaults of ``parser`` and its subcommands; returns the (scope, key) pairs applied."""
    subs = parser.commands
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
    options = {d: a for d, a in parser.options.items() if d not in ("help", "version", "config")}
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
            raise UsageError(
                f"The config file's section {k!r} must be a mapping of option: value; got {section.get(k)!r} instead."
            )
    if unused:
        what = "any command" if not where else f"'deepfeat {where.replace('.', ' ')}'"
        raise UsageError(
            f"The config file sets {', '.join(map(repr, unused))} in its {scope} "
            f"{'keys' if not where else 'section'}, which is not an option of {what}."
        )
    return applied


def _apply_config(parser: CommandParser, argv: Sequence[str]) -> None:
    """``--config FILE`` (YAML, safe_load) sets option defaults; flags on the command line override it
    (the mechanism and the scopes: this module's docstring)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if not known.config:
        return
    from ..configfile import load_config_file

    data = load_config_file(known.config)  # safe types, bounded size and alias expansion
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise UsageError(f"The config file {known.config!r} must hold a mapping of option: value.")
    _configure(parser, {}, data, "")

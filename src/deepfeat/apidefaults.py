"""The Python API's parameter defaults, read from the source without importing it.

The command line's options take their defaults from here (``deepfeat.cli``), so that ``--help``
shows the API's own defaults and the two cannot drift apart, while ``deepfeat --help`` still never
imports torch (importing ``deepfeat.training`` would). Only literal defaults and module-level
constants bound to literals are resolved (``epochs: int = 20``, ``memory_budget = DEFAULT_MEMORY_BUDGET``).

Example:
    >>> api_defaults("deepfeat.training", "train")["epochs"]
    20
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from typing import Any

_UNRESOLVED = object()


def _literal(node: ast.AST, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        return constants.get(node.id, _UNRESOLVED)
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.LShift, ast.Mult)):  # 1 << 30, 256 * 1024
        left, right = _literal(node.left, constants), _literal(node.right, constants)
        if type(left) is int and type(right) is int and 0 <= right <= 64:
            return left << right if isinstance(node.op, ast.LShift) else left * right
        return _UNRESOLVED
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _UNRESOLVED


@functools.lru_cache(maxsize=None)
def _module_tree(module: str) -> ast.Module | None:
    # the file of a deepfeat module, found without importing its packages (deepfeat.cnn imports torch)
    parts = module.split(".")
    if parts[0] != "deepfeat":
        return None
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), *parts[1:])
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return ast.parse(f.read(), path)
    return None


@functools.lru_cache(maxsize=None)
def _constants(module: str) -> dict[str, Any]:
    """The module's names bound to literals, its own and those it imports from other deepfeat modules
    (``from .training import DEFAULT_MEMORY_BUDGET``)."""
    tree = _module_tree(module)
    constants: dict[str, Any] = {}
    for node in tree.body if tree is not None else ():
        if isinstance(node, ast.ImportFrom) and node.level and module != "deepfeat":
            package = module if _is_package(module) else module.rpartition(".")[0]
            source = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            if source != module:
                imported = _constants(source)
                for alias in node.names:
                    if alias.name in imported:
                        constants[alias.asname or alias.name] = imported[alias.name]
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            value = _literal(node.value, constants)
            if value is not _UNRESOLVED:
                constants[node.targets[0].id] = value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            value = _literal(node.value, constants)
            if value is not _UNRESOLVED:
                constants[node.target.id] = value
    return constants


def _is_package(module: str) -> bool:
    base = os.path.join(os.path.dirname(os.path.abspath(__file__)), *module.split(".")[1:])
    return os.path.isfile(os.path.join(base, "__init__.py"))


def api_constant(module: str, name: str) -> Any:
    """A module-level constant of ``module`` bound to a literal (choices such as ``SCHEDULES``), read
    without importing it.

    Example:
        >>> api_constant("deepfeat.cnn.training", "SCHEDULES")
        ('cosine', 'constant')
    """
    constants = _constants(module)
    if name not in constants:
        raise KeyError(f"{module} has no literal constant {name!r}")
    return constants[name]


@functools.lru_cache(maxsize=None)
def api_defaults(module: str, function: str) -> dict[str, Any]:
    """``{parameter: default}`` of ``module.function`` for the defaults that are literals (or constants)."""
    tree = _module_tree(module)
    if tree is None:
        return {}
    constants = _constants(module)
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function), None)
    if func is None:
        return {}
    a = func.args
    out: dict[str, Any] = {}
    positional = a.posonlyargs + a.args
    for arg, default in zip(positional[len(positional) - len(a.defaults) :], a.defaults):
        value = _literal(default, constants)
        if value is not _UNRESOLVED:
            out[arg.arg] = value
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        if default is not None:
            value = _literal(default, constants)
            if value is not _UNRESOLVED:
                out[arg.arg] = value
    return out

"""Reading a ``--config`` YAML file without trusting it: safe types only, bounded size and expansion.

``yaml.safe_load`` builds no objects but plain data, yet a small file can still describe an
enormous document: anchors and aliases (``&a`` / ``*a``) let each level repeat the previous
one ("billion laughs"), and walking or printing the result would then take forever. Here the
document is composed first (aliases stay shared nodes), its expanded size is counted without
expanding it, and only a document of at most :data:`MAX_NODES` values is constructed.

Example:
    >>> load_config_file("train.yaml")          # doctest: +SKIP
    {'train': {'alpha': 0.0001}}
"""

from __future__ import annotations

import os
from typing import Any

from .errors import UsageError

#: Largest config file read.
MAX_BYTES = 1 << 20
#: Largest number of values a config document may hold once every alias is expanded.
MAX_NODES = 100_000


def _expanded_size(root: Any, path: str) -> int:
    """Number of values in the document rooted at ``root`` with every alias expanded (not built)."""
    import yaml

    sizes: dict[int, int] = {}
    active: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            active.discard(key)
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = list(node.value)
            total = 1 + sum(sizes[id(c)] for c in children)
            sizes[key] = min(total, MAX_NODES + 1)
            continue
        if key in sizes:
            continue
        if key in active:
            raise UsageError(
                f"The config file {path!r} refers to itself through an alias; a config is a plain mapping of option: value."
            )
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        active.add(key)
        stack.append((node, True))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def load_config_file(path: str | os.PathLike) -> Any:
    """The data of a YAML config file (safe types only), refused when larger than the limits.

    Raises :class:`~deepfeat.errors.UsageError` for a missing, oversized, invalid, recursive
    or alias-bomb file.
    """
    import yaml

    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"The config file {path!r} cannot be read ({exc.strerror or exc}).") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"The config file {path!r} is larger than {MAX_BYTES >> 20} MiB.")
    loader = yaml.SafeLoader(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, path)
        if size > MAX_NODES:
            raise UsageError(
                f"The config file {path!r} expands to more than {MAX_NODES:,} values through its "
                "anchors and aliases; refusing to load it."
            )
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UsageError(f"The config file {path!r} is not valid YAML: {exc}") from None
    finally:
        loader.dispose()

"""The one registry idiom of deepfeat's extension points.

Sources, engines, runtimes, heads, backbone sources and CLI commands are each a :class:`Registry`: a
dict from name to entry, in the order lookups ask them, filled by its ``register`` (a decorator for
classes). Registering a name again replaces that entry in place; ``before=`` puts a new one ahead of
another (the first backbone source or input source that claims a name wins).

Example:
    >>> SHAPES = Registry("shape", key="kind")
    >>> @SHAPES.register
    ... class Square:
    ...     kind = "square"
    >>> class Circle:
    ...     kind = "circle"
    >>> _ = SHAPES.register(Circle, before="square")
    >>> list(SHAPES)
    ['circle', 'square']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class Registry(dict[str, T]):
    """Name -> entry of one extension point, in the order lookups ask them.

    Args:
        what: what an entry is ("runtime", "source"...), for messages.
        key: the attribute that names an entry when ``register`` is not given a name.
        entries: the built-in entries, in order.
    """

    def __init__(self, what: str, key: str = "name", entries: Iterable[T] = ()) -> None:
        super().__init__()
        self.what, self.key = what, key
        for entry in entries:
            self.register(entry)

    def register(self, entry: T, *, name: str | None = None, before: str | None = None) -> T:
        """Add ``entry`` under ``name`` (default: its ``key`` attribute) and return it (a class decorator).

        A name already registered is replaced in place; ``before`` names the entry a new one is asked before.
        """
        name = name if name is not None else getattr(entry, self.key)
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.what} needs a non-empty string {self.key!r}; got {name!r}.")
        if before is None or before not in self or name in self:
            self[name] = entry
            return entry
        items = list(self.items())
        self.clear()
        for key, value in items:
            if key == before:
                self[name] = entry
            self[key] = value
        return entry

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self)})"

    def __reduce__(self) -> Any:  # a copy or a pickled registry is a registry again
        return (Registry, (self.what, self.key), None, None, iter(self.items()))


__all__ = ["Registry"]

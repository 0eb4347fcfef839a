"""One checker for the parameters of the public API, and one wording of its errors.

Every public entry point validates its arguments up front, before it touches a store, a model or a
file, and every refusal reads the same way: which parameter, of which function, what it must be,
what it got. The command line shows the message as it is (exit status 2, no traceback).

Example:
    >>> check_int(3, "epochs", minimum=1, where="train")
    3
    >>> check_number(0.1, "val_fraction", minimum=0, maximum=1, max_open=True)
    0.1
    >>> check_choice("svm", "head", ("logreg", "svm"))
    'svm'
    >>> try:
    ...     check_int(0, "epochs", minimum=1, where="train")
    ... except UsageError as exc:
    ...     print(exc)
    The 'epochs' parameter of train must be an int >= 1; got 0 instead.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any, TypeVar

from .errors import UsageError

__all__ = ["param_error", "check_int", "check_number", "check_choice", "is_int"]

T = TypeVar("T")


def param_error(name: str, expected: str, got: Any, where: str | None = None) -> UsageError:
    """The error for parameter ``name`` (of function ``where``) that is not ``expected``."""
    of = f" of {where}" if where else ""
    return UsageError(f"The {name!r} parameter{of} must be {expected}; got {got!r} instead.")


def is_int(value: Any) -> bool:
    """An integer, numpy's included, but not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    where: str | None = None,
    optional: bool = False,
) -> Any:
    """``value`` as an int within ``[minimum, maximum]`` (None passes when ``optional``)."""
    if value is None and optional:
        return None
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise param_error(name, _described("an int", minimum, maximum, False, False, optional), value, where)
    return int(value)


def check_number(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    min_open: bool = False,
    max_open: bool = False,
    where: str | None = None,
    optional: bool = False,
) -> Any:
    """``value`` as a float within the bounds (``*_open``: the bound itself is excluded; no NaN)."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
    if ok and minimum is not None:
        ok = value > minimum if min_open else value >= minimum
    if ok and maximum is not None:
        ok = value < maximum if max_open else value <= maximum
    if not ok:
        raise param_error(name, _described("a float", minimum, maximum, min_open, max_open, optional), value, where)
    return float(value)


def check_choice(value: T, name: str, choices: Iterable[Any], *, where: str | None = None) -> T:
    """``value`` when it is one of ``choices`` (a registry's keys, a tuple of names)."""
    options = list(choices)
    if value not in options:
        raise param_error(name, "one of " + ", ".join(repr(c) for c in options), value, where)
    return value


def _described(kind: str, minimum: Any, maximum: Any, min_open: bool, max_open: bool, optional: bool) -> str:
    if minimum is not None and maximum is not None:
        text = f"{kind} in {'(' if min_open else '['}{minimum}, {maximum}{')' if max_open else ']'}"
    elif minimum is not None:
        text = f"{kind} {'>' if min_open else '>='} {minimum}"
    elif maximum is not None:
        text = f"{kind} {'<' if max_open else '<='} {maximum}"
    else:
        text = kind
    return f"None or {text}" if optional else text

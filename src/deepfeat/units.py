"""Sizes in bytes: one parser for every ``memory_budget``-like argument, one formatter.

Units: ``KiB``/``MiB``/``GiB``/``TiB`` and the bare ``K``/``M``/``G``/``T`` are powers of 1024;
``KB``/``MB``/``GB``/``TB`` are powers of 1000 (SI). A plain number (``1073741824``, ``"1e9"``)
is bytes. A string without a unit between 1 and 1 MiB (``"10"``, ``"512"``: a command-line
``--memory-budget 512``) is refused as ambiguous -- nobody means 512 bytes -- with a message
asking for a unit; ``"0"`` and ints from Python stay bytes.

Example:
    >>> parse_size("512MiB"), parse_size("2GB"), parse_size("1.5K")
    (536870912, 2000000000, 1536)
    >>> format_size(1536)
    '1.5 KiB'
"""

from __future__ import annotations

import numbers
import re

from .errors import UsageError

_AMBIGUOUS_BELOW = 1 << 20  #: unit-less size strings below this many bytes are refused
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*(?:([kmgt])(i?)(b?))?\s*(b?)\s*", re.IGNORECASE)


def parse_size(value: int | float | str, what: str = "memory_budget", *, minimum: int = 1) -> int:
    """Bytes from an int, a float or a string such as ``2GiB``, ``512MB``, ``1e9``.

    Raises :class:`~deepfeat.errors.UsageError` naming ``what`` for anything else or for a
    size below ``minimum`` bytes.
    """
    unitless = False
    if isinstance(value, bool):
        n = None
    elif isinstance(value, numbers.Real):
        n = int(value)
    else:
        m = _SIZE.fullmatch(str(value))
        if not m or (m.group(2) is None and (m.group(3) or m.group(4))):
            n = None
        else:
            unit = (m.group(2) or "").lower()
            unitless = not unit and not m.group(5)
            decimal = bool(unit) and not m.group(3) and bool(m.group(4))
            n = int(float(m.group(1)) * (1000 if decimal else 1024) ** " kmgt".index(unit or " "))
    if n is None:
        raise UsageError(
            f"The '{what}' parameter must be a size such as 2GiB, 512MB or a number of bytes; got {value!r} instead."
        )
    if unitless and 0 < n < _AMBIGUOUS_BELOW:
        number = str(value).strip()
        raise UsageError(
            f"The '{what}' parameter {number!r} has no unit, and a size without a unit is bytes; "
            f"{number} bytes is surely not meant. Write the unit: {number}MiB or {number}GiB "
            "(or 1MiB and more as plain bytes)."
        )
    if n < minimum:
        raise UsageError(f"The '{what}' parameter must be >= {minimum} bytes; got {value!r} instead.")
    return n


def count_or_size(value: int | str, what: str, where: str | None = None) -> int | str:
    """A count (an int, or a string of digits) or a size with a unit (``"8MiB"``, returned as given after
    checking it): options such as ``part_size`` that take "how many inputs" or "how many bytes of them".

    Raises :class:`~deepfeat.errors.UsageError` naming ``what`` (and the function ``where``) for anything else.
    """
    name = f"'{what}' parameter" + (f" of {where}" if where else "")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        count = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        count = int(value.strip())
    elif isinstance(value, str):
        m = _SIZE.fullmatch(value)
        if not m or not m.group(2):
            raise UsageError(
                f"The {name} must be a number of inputs (e.g. 512) or a size with a unit "
                f"(e.g. 64MiB); got {value!r} instead."
            )
        parse_size(value, what)
        return value.strip()
    else:
        raise UsageError(
            f"The {name} must be a number of inputs (e.g. 512) or a size with a unit (e.g. 64MiB); got {value!r} instead."
        )
    if count < 1:
        raise UsageError(f"The {name} must be >= 1; got {value!r} instead.")
    return count


def size_text(n: int) -> str:
    """A size as :func:`parse_size` reads it back exactly, in the largest binary unit that divides it.

    Example:
        >>> size_text(1 << 30), size_text(3 << 19), size_text(1000)
        ('1GiB', '1536KiB', '1000')
    """
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return str(n)


def format_size(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``; whole bytes below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

"""One size parser for every memory budget: binary and SI units, clear errors."""

from __future__ import annotations

import pytest

from deepfeat.errors import UsageError
from deepfeat.units import format_size, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1GiB", 1 << 30),
        ("2G", 2 << 30),
        ("512MiB", 512 << 20),
        ("512MB", 512_000_000),
        ("1.5k", 1536),
        ("1e9", 10**9),
        (" 3 mib ", 3 << 20),
        ("4194304", 4 << 20),
        (4096, 4096),
        (1e6, 10**6),
        ("10 B", 10),
    ],
)
def test_sizes_parse_to_bytes(text, expected) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "lots", "MB", "2iB", "-1", True, None, "1 GiBs"])
def test_bad_sizes_name_the_parameter(bad) -> None:
    with pytest.raises(UsageError, match="'memory_budget' parameter must be a size"):
        parse_size(bad)


def test_minimum_is_enforced_with_the_parameter_name() -> None:
    with pytest.raises(UsageError, match=r"'cache' parameter must be >= 1 bytes; got 0"):
        parse_size(0, "cache")
    assert parse_size("0", "cache", minimum=0) == 0


@pytest.mark.parametrize("bare", ["10", "4096", " 512 ", "1048575"])
def test_a_small_size_without_a_unit_is_refused_as_ambiguous(bare) -> None:
    with pytest.raises(UsageError, match=f"'{bare.strip()}' has no unit.*{bare.strip()}MiB or {bare.strip()}GiB"):
        parse_size(bare)


def test_format_size() -> None:
    assert [format_size(n) for n in (0, 1023, 1536, 5 << 20, 3 << 40)] == ["0 B", "1023 B", "1.5 KiB", "5.0 MiB", "3.0 TiB"]

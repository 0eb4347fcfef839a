"""A bundle's header without the bundle: whether a file is a deepfeat bundle, and its JSON document.

Standard library only, so that ``history``, ``info`` and the CLI can read a bundle's metadata (its
classes, history, runtime and agreement) without importing numpy, torch or scikit-learn;
:mod:`deepfeat.bundle` loads the tensors.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

FORMAT_NAME = "deepfeat-bundle"
FORMAT_VERSION = 1
META_KEY = "deepfeat"
SUFFIX = ".dfm"
#: Largest safetensors JSON header a bundle may have (real ones hold a few hundred kB at most).
_MAX_HEADER = 16 << 20


class _NotABundle(Exception):
    """The file is not a deepfeat bundle at all (``damaged`` says whether it looked like one)."""

    def __init__(self, reason: str, damaged: bool) -> None:
        super().__init__(reason)
        self.damaged = damaged


def _parse_header(path: str | os.PathLike) -> dict[str, Any]:
    """The deepfeat document in a bundle's safetensors header; :class:`_NotABundle` saying why not.

    The header's length is checked against :data:`_MAX_HEADER` and against the file's size
    before anything is read, so a hostile length allocates nothing.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise _NotABundle("the file is shorter than a safetensors header", False)
            n = struct.unpack("<Q", head)[0]
            if n > _MAX_HEADER:
                raise _NotABundle(f"its header claims {n:,} bytes (the limit is {_MAX_HEADER >> 20} MiB)", n <= size)
            if not 2 <= n <= size - 8:
                raise _NotABundle(f"its header claims {n:,} bytes of a {size:,}-byte file", False)
            raw = f.read(n)
    except OSError as exc:
        raise _NotABundle(f"it cannot be read ({exc.strerror or exc})", False) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise _NotABundle(f"its header is not valid JSON ({type(exc).__name__})", raw[:1] == b"{") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get(META_KEY), str):
        raise _NotABundle("its header has no deepfeat metadata", False)
    try:
        doc = json.loads(meta[META_KEY])
    except (ValueError, RecursionError) as exc:
        raise _NotABundle(f"its deepfeat metadata is not valid JSON ({type(exc).__name__})", True) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise _NotABundle(f"its metadata is not a {FORMAT_NAME!r} document", False)
    return doc


def read_header(path: str | os.PathLike) -> dict[str, Any] | None:
    """The bundle's JSON metadata, or None when ``path`` is not a deepfeat bundle (never raises on content)."""
    try:
        return _parse_header(path)
    except _NotABundle:
        return None


def is_bundle(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file whose safetensors header says it is a deepfeat bundle."""
    return os.path.isfile(path) and read_header(path) is not None


__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "META_KEY", "SUFFIX", "is_bundle", "read_header"]

"""What a store (or bundle) says about itself is checked before anything is opened because of it.

Stores and bundles are made to be shared, so their own files are untrusted input. This module
is the one place where the names they contain are checked before they become paths, and where
their JSON documents are checked for types, counts and sizes (see docs/SECURITY.md):

* a part name is the writer's zero-padded number (:func:`deepfeat.store.layout.part_name`);
* a file in a part is ``rows.parquet``, ``ledger.parquet`` or ``<layer key>.npy`` for a layer
  key of the store's metadata, and a layer key is what :func:`~deepfeat.store.layout.layer_key`
  makes (letters, digits, ``_ . -``; no separator, never ``.`` or ``..``);
* every path is resolved (symbolic links included) and must lie inside the store, and must be
  a regular file -- a FIFO or device named like a store file is refused, never opened;
* JSON documents are read only up to a size limit; counts are non-negative integers that agree
  with each other, and a feature file's recorded size agrees with its rows x dims x itemsize.

Anything else is a :class:`~deepfeat.errors.StoreError` naming the bad entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import StoreError
from . import layout

#: Part names: the writer's zero-padded sequence numbers (``00000000``, ``00000001``...).
PART_NAME_RE = re.compile(r"[0-9]{8,12}")
#: Layer keys: what ``layout.layer_key`` produces (no path separator, no leading/trailing dot).
LAYER_KEY_RE = re.compile(r"[A-Za-z0-9_-](?:[A-Za-z0-9_.-]{0,245}[A-Za-z0-9_-])?")  # key + ".npy" <= 251 bytes
#: Other file names a store's metadata may point to (the FNE statistics), relative to the store.
PLAIN_FILE_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,198}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
#: Feature dtypes a store may declare.
STORE_DTYPES = ("float16", "float32", "int8")
#: Largest ``deepfeat-store.json`` / ``manifest.json`` read.
MAX_METADATA_BYTES = 16 << 20
MAX_MANIFEST_BYTES = 512 << 20
#: Largest ``manifest.log`` (the commit log) read.
MAX_LOG_BYTES = 512 << 20
#: The token that ties a commit log's lines to one version of ``manifest.json``.
LOG_TOKEN_RE = re.compile(r"[0-9a-f]{16,64}")
#: Bytes an ``.npy`` header may take before the data (numpy itself refuses headers over 10,000 bytes).
MAX_NPY_HEADER = 1 << 16
#: Upper bound of any count in a manifest (2^48: far beyond any real store) and of a file's size.
MAX_COUNT = 1 << 48
MAX_BYTES = 1 << 62
#: Longest layer name, class name or label accepted from a shared file.
MAX_NAME_CHARS = 1000


class UnsafePathError(StoreError):
    """A name or link of a store would make deepfeat read outside the store, or read a non-file."""


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _count(v: Any, where: str, limit: int = MAX_COUNT) -> int:
    if not _is_int(v) or not 0 <= int(v) <= limit:
        raise StoreError(f"{where} must be a non-negative integer; got {_show(v)}.")
    return int(v)


def _show(v: Any, limit: int = 80) -> str:
    """A short, printable repr of an untrusted value (long strings are cut, big containers counted)."""
    if isinstance(v, (list, dict)) and len(v) > 16:
        return f"a {'list' if isinstance(v, list) else 'JSON object'} of {len(v):,} entries"
    if isinstance(v, str) and len(v) > limit:
        return f"{v[:limit]!r}... ({len(v):,} characters)"
    text = repr(v)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


# ------------------------------------------------------------------------------- names
def is_part_name(name: Any) -> bool:
    return isinstance(name, str) and PART_NAME_RE.fullmatch(name) is not None


def is_layer_key(key: Any) -> bool:
    return isinstance(key, str) and LAYER_KEY_RE.fullmatch(key) is not None


def check_label(value: Any, where: str) -> str:
    """A class name or label from a shared file: a string of at most 1000 printable characters.

    Control characters (newline, tab, NUL, escape...) are refused so that a name stays one
    cell of a CSV/TSV line and one line of a report; ``/`` and ``..`` are allowed: names are
    data, never paths.
    """
    if not isinstance(value, str):
        raise StoreError(f"{where} must be a string; got {_show(value)}.")
    if not value or len(value) > MAX_NAME_CHARS:
        raise StoreError(f"{where} must have 1 to {MAX_NAME_CHARS} characters; got {len(value):,}.")
    bad = next((ch for ch in value if unicodedata.category(ch) == "Cc"), None)
    if bad is not None:
        raise StoreError(f"{where} contains the control character {bad!r}: {_show(value)}.")
    return value


# ------------------------------------------------------------------------------- paths
def member(root: str, *names: str, what: str | None = None) -> str:
    """``root/names...`` once it is known to stay inside ``root`` and to be a regular file (or absent).

    The path is resolved with every symbolic link; a link (of the file or of a folder on the
    way) that leads outside ``root`` is refused, as is anything that is not a regular file (a
    FIFO would block the reader forever). A missing file is returned as is: callers say what
    is missing in their own words.
    """
    path = os.path.join(root, *names)
    label = what or "/".join(names)
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise UnsafePathError(
            f"{label} resolves to {real}, outside the store {root!r} (a symbolic link?); "
            "deepfeat reads nothing outside the store."
        )
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise StoreError(f"{label} cannot be examined ({exc.strerror or exc}).") from None
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{label} is not a regular file; refusing to read it.")
    return path


def read_json_file(path: str, limit: int, what: str) -> Any:
    """A JSON document of at most ``limit`` bytes, or a :class:`StoreError` saying what is wrong with it."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            # read(n) reserves n bytes up front: ask only for what the file holds (and one byte more)
            data = f.read(min(size, limit) + 1)
    except OSError as exc:
        raise StoreError(f"{what} cannot be read ({exc.strerror or exc}).") from None
    if len(data) > limit:
        raise StoreError(f"{what} is larger than {limit >> 20} MiB; refusing to parse it.")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreError(f"{what} is not valid JSON ({exc}).") from None
    except RecursionError:
        raise StoreError(f"{what} nests too deeply to be a deepfeat document.") from None


def read_store_json(store_dir: str, name: str) -> Any:
    """The store's metadata or manifest document, read inside the store and within its size limit."""
    path = member(store_dir, name)
    limit = MAX_MANIFEST_BYTES if name == layout.MANIFEST_FILE else MAX_METADATA_BYTES
    return read_json_file(path, limit, name)


# ------------------------------------------------------------------------------- documents
def check_layers(layers: Any, where: str) -> list[dict[str, Any]]:
    """A list of layer descriptions (name, key, shape, pool, dims) with safe, unique keys."""
    if not isinstance(layers, list) or not layers:
        raise StoreError(f"{where} must be a non-empty list of layers; got {_show(layers)}.")
    out: list[dict[str, Any]] = []
    keys: set[str] = set()
    for i, d in enumerate(layers):
        at = f"{where}[{i}]"
        if not isinstance(d, dict):
            raise StoreError(f"{at} must be an object; got {_show(d)}.")
        missing = [k for k in ("name", "key", "shape", "pool", "dims") if k not in d]
        if missing:
            raise StoreError(f"{at} lacks {', '.join(missing)}.")
        name, key, shape, pool = d["name"], d["key"], d["shape"], d["pool"]
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise StoreError(
                f"{at}: the layer name must be a string of 1 to {MAX_NAME_CHARS} characters; got {_show(name)}."
            )
        if not is_layer_key(key):
            raise UnsafePathError(
                f"{at}: the file key {_show(key)} of layer {_show(name)} is not a layer key "
                "(letters, digits, '_', '.', '-'; no path separator)."
            )
        if key in keys:
            raise StoreError(f"{at}: the file key {key!r} is used by two layers.")
        keys.add(key)
        if not isinstance(pool, str) or len(pool) > 100:
            raise StoreError(f"{at}: pool must be a short string; got {_show(pool)}.")
        if not isinstance(shape, list) or len(shape) > 8 or not all(_is_int(v) and 0 < v <= MAX_COUNT for v in shape):
            raise StoreError(f"{at}: shape must be a list of positive integers; got {_show(shape)}.")
        dims = d["dims"]
        if not _is_int(dims) or not 0 < dims < 1 << 40:
            raise StoreError(f"{at}: dims must be a positive integer; got {_show(dims)}.")
        out.append(d)
    return out


def _check_document(doc: Any, where: str) -> None:
    """A store JSON document is an object of deepfeat's store format."""
    if not isinstance(doc, dict):
        raise StoreError(f"{where} must hold a JSON object; got {type(doc).__name__}.")
    fmt = doc.get("format", layout.FORMAT_NAME)
    if fmt != layout.FORMAT_NAME:
        raise StoreError(f"{where}: format {_show(fmt)} is not {layout.FORMAT_NAME!r}.")


def check_metadata(meta: Any) -> dict[str, Any]:
    """The store metadata document (``deepfeat-store.json``): format, layers, dtype, FNE file name."""
    where = layout.METADATA_FILE
    _check_document(meta, where)
    version = meta.get("format_version", layout.FORMAT_VERSION)
    if not _is_int(version) or version > layout.FORMAT_VERSION:
        raise StoreError(
            f"{where}: format_version {_show(version)}; this deepfeat reads up to {layout.FORMAT_VERSION}. Upgrade deepfeat."
        )
    if "layers" not in meta or "dtype" not in meta:
        raise StoreError(f"{where} lacks {' and '.join(k for k in ('layers', 'dtype') if k not in meta)}.")
    check_layers(meta["layers"], f"{where}: layers")
    if meta["dtype"] not in STORE_DTYPES:
        raise StoreError(f"{where}: dtype {_show(meta['dtype'])} is not one of {', '.join(STORE_DTYPES)}.")
    for key in ("model", "config", "preprocess"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise StoreError(f"{where}: {key} must be an object; got {_show(meta[key])}.")
    fne = meta.get("fne")
    if fne is not None:
        if not isinstance(fne, dict):
            raise StoreError(f"{where}: fne must be an object; got {_show(fne)}.")
        name = fne.get("stats_file")
        if not isinstance(name, str) or PLAIN_FILE_RE.fullmatch(name) is None:
            raise UnsafePathError(f"{where}: fne.stats_file {_show(name)} is not a plain file name inside the store.")
        if "source_layers" in fne:
            check_layers(fne["source_layers"], f"{where}: fne.source_layers")
    checked: dict[str, Any] = meta
    return checked


@functools.lru_cache(maxsize=8)
def _file_names_cached(keys: tuple[str, ...]) -> frozenset[str]:
    return frozenset([layout.ROWS_FILE, layout.LEDGER_FILE, *(f"{k}.npy" for k in keys)])


def _file_names(layers: Mapping[str, int] | None) -> frozenset[str]:
    """Every file name a part may hold (without layers: the two tables; .npy names are then checked one by one)."""
    return _file_names_cached(tuple(layers) if layers is not None else ())


def part_files(rows: int, layer_keys: Iterable[str]) -> list[str]:
    """The files of a part with ``rows`` rows: the ledger; with rows also the row table and one array per layer."""
    return [layout.LEDGER_FILE] + ([layout.ROWS_FILE] + [f"{k}.npy" for k in layer_keys] if rows else [])


def check_part(
    d: Any, index: int, layers: Mapping[str, int] | None = None, itemsize: int | None = None, doc: str = layout.MANIFEST_FILE
) -> dict[str, Any]:
    """One manifest entry: a part name, consistent counts, and exactly the files such a part has.

    ``layers`` ({layer key: dims}) and ``itemsize`` (bytes per value) come from the store's
    metadata; with them every feature file's recorded size must be its rows x dims x itemsize
    plus an ``.npy`` header, which ties the row count to the bytes checked on disk. ``doc`` names
    the document the entry comes from in messages (a line of the commit log names itself).
    """
    where = f"{doc}: parts[{index}]" if doc == layout.MANIFEST_FILE else doc
    if not isinstance(d, dict):
        raise StoreError(f"{where} must be an object; got {_show(d)}.")
    missing = [k for k in ("name", "rows", "items", "embedded", "failed", "files") if k not in d]
    if missing:
        raise StoreError(f"{where} lacks {', '.join(missing)}.")
    name = d["name"]
    if not is_part_name(name):
        raise UnsafePathError(
            f"{where}: {_show(name)} is not a part name (the writer's zero-padded number, "
            "e.g. '00000003'); refusing to open it."
        )
    where = f"{doc}: part {name}"
    rows, items = _count(d["rows"], f"{where}: rows"), _count(d["items"], f"{where}: items")
    embedded, failed = _count(d["embedded"], f"{where}: embedded"), _count(d["failed"], f"{where}: failed")
    if embedded + failed != items:
        raise StoreError(f"{where}: {embedded} embedded + {failed} failed != {items} items.")
    if (rows == 0) != (embedded == 0):
        raise StoreError(f"{where}: {rows} rows for {embedded} embedded inputs.")
    splits = d.get("splits", {})
    if not isinstance(splits, dict) or not all(isinstance(k, str) for k in splits):
        raise StoreError(f"{where}: splits must be an object of split: rows; got {_show(splits)}.")
    if sum(_count(v, f"{where}: splits[{k!r}]") for k, v in splits.items()) != rows:
        raise StoreError(f"{where}: the rows per split {_show(splits)} do not add up to {rows} rows.")
    files = d["files"]
    if not isinstance(files, dict):
        raise StoreError(f"{where}: files must be an object; got {_show(files)}.")
    allowed = _file_names(layers)
    for fname, entry in files.items():
        if fname not in allowed and (
            layers is not None or not (isinstance(fname, str) and fname.endswith(".npy") and is_layer_key(fname[:-4]))
        ):
            raise UnsafePathError(
                f"{where}: {_show(fname)} is not a file of a part of this store "
                f"({layout.ROWS_FILE}, {layout.LEDGER_FILE} or <layer key>.npy)."
            )
        # the common case is checked without building a message: manifests can list 10^5 files
        if type(entry) is not dict:
            raise StoreError(f"{where}: files[{fname!r}] must be an object; got {_show(entry)}.")
        size, digest = entry.get("bytes"), entry.get("sha256")
        if type(size) is not int or not 0 <= size <= MAX_BYTES:
            _count(size, f"{where}: {fname}: bytes", MAX_BYTES)
        if type(digest) is not str or _SHA256_RE.fullmatch(digest) is None:
            raise StoreError(f"{where}: {fname}: sha256 must be 64 hex digits; got {_show(digest)}.")
    if layers is not None:
        expected = part_files(rows, layers)
        wanted = set(expected)
        absent = [f for f in expected if f not in files]
        extra = [f for f in files if f not in wanted]
        if absent or extra:
            raise StoreError(
                f"{where}: the files {sorted(files)} are not those of a part with {rows} rows (expected {expected})."
            )
        if itemsize is not None:
            for key, dims in layers.items():
                fname = f"{key}.npy"
                if fname in files:
                    data = rows * dims * itemsize
                    extra_bytes = int(files[fname]["bytes"]) - data
                    if not 0 < extra_bytes <= MAX_NPY_HEADER:
                        raise StoreError(
                            f"{where}: {fname} is recorded as {files[fname]['bytes']:,} bytes, which "
                            f"does not hold {rows:,} rows x {dims:,} dims of {itemsize}-byte values."
                        )
    return d


def check_manifest(doc: Any, layers: Mapping[str, int] | None = None, itemsize: int | None = None) -> list[dict[str, Any]]:
    """The manifest document: its format and every part (see :func:`check_part`); names are unique."""
    where = layout.MANIFEST_FILE
    _check_document(doc, where)
    parts = doc.get("parts")
    if not isinstance(parts, list):
        raise StoreError(f"{where}: parts must be a list; got {_show(parts)}.")
    token = doc.get("log")
    if token is not None and (not isinstance(token, str) or LOG_TOKEN_RE.fullmatch(token) is None):
        raise StoreError(f"{where}: log must be the commit log's token (16 to 64 hex digits); got {_show(token)}.")
    seen: set[str] = set()
    for i, d in enumerate(parts):
        check_part(d, i, layers, itemsize)
        if d["name"] in seen:
            raise StoreError(f"{where}: part {d['name']} is listed twice.")
        seen.add(d["name"])
    return parts


# ------------------------------------------------------------------------------- the commit log
_LOG_LINE_RE = re.compile(rb"([0-9a-f]{16}) (\{.*\})")


def log_line_digest(body: bytes) -> str:
    """The checksum that opens a commit-log line: the first 16 hex digits of the sha256 of the JSON after it."""
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass
class CommitLog:
    """What :func:`check_commit_log` found in ``manifest.log``."""

    parts: list[dict[str, Any]]  #: checked part entries of the manifest's generation, in commit order
    intact_bytes: int  #: length of the prefix made of whole, checksummed lines
    torn: str | None  #: why the last line was ignored (an append cut short by a crash), or None
    stale: int  #: lines of an earlier manifest.json, which already holds them (ignored)


def read_commit_log(store_dir: str) -> bytes | None:
    """The bytes of the store's commit log (inside the store, a regular file, within its size limit), or None."""
    path = member(store_dir, layout.COMMIT_LOG_FILE)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, MAX_LOG_BYTES) + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{layout.COMMIT_LOG_FILE} cannot be read ({exc.strerror or exc}).") from None
    if len(data) > MAX_LOG_BYTES:
        raise StoreError(f"{layout.COMMIT_LOG_FILE} is larger than {MAX_LOG_BYTES >> 20} MiB; refusing to parse it.")
    return data


def _log_line(line: bytes) -> tuple[dict[str, Any] | None, str | None, bool]:
    """(document, problem, whether a crash could have caused the problem) of one line of the commit log."""
    m = _LOG_LINE_RE.fullmatch(line)
    if m is None:
        return None, "is not '<checksum> <JSON object>'", True
    if log_line_digest(m.group(2)) != m.group(1).decode("ascii"):
        return None, "fails its checksum", True
    try:
        doc = json.loads(m.group(2).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, "is not valid JSON", False
    if not isinstance(doc, dict) or not isinstance(doc.get("log"), str) or "part" not in doc:
        return None, 'is not an object {"log": token, "part": {...}}', False
    return doc, None, False


def check_commit_log(
    data: bytes,
    token: str | None,
    committed: Iterable[str],
    layers: Mapping[str, int] | None = None,
    itemsize: int | None = None,
) -> CommitLog:
    """The commit log: lines ``<16 hex digits> <JSON>\\n``, the JSON ``{"log": token, "part": {...}}``.

    The digits are :func:`log_line_digest` of the JSON. Only the last line can be damaged by a
    crash (an append cut short: no newline, or bytes that fail the checksum); it is reported in
    ``torn`` and ignored. Any other damaged line -- or a whole line whose JSON is not a log entry
    -- means the file was modified, and is a :class:`StoreError`. A line whose token is not
    ``token`` (the one ``manifest.json`` records) was folded into an earlier manifest.json that
    already lists its part (a crash between rewriting the manifest and removing the log) and is
    ignored. A line of the manifest's token is a part entry checked like one of the manifest
    (:func:`check_part`); a part committed twice (``committed``: the manifest's names) is an error.
    """
    where = layout.COMMIT_LOG_FILE
    lines = data.split(b"\n")
    tail = lines.pop()  # the bytes after the last newline: an append cut short when not empty
    seen = set(committed)
    parts: list[dict[str, Any]] = []
    intact = stale = 0
    torn: str | None = None
    for i, line in enumerate(lines):
        doc, problem, tearable = _log_line(line)
        if problem is not None:
            if tearable and i == len(lines) - 1 and not tail:
                torn = f"line {i + 1} {problem}"
                break
            raise StoreError(
                f"{where}: line {i + 1} {problem}. A crash can only damage the last line of the commit log, so "
                "the file was modified or the disk damaged it. Restore the store from a copy, or delete "
                f"{where} to keep the parts listed in {layout.MANIFEST_FILE} (a resume redoes the others)."
            )
        assert doc is not None
        if doc["log"] != token:
            stale += 1
        else:
            at = f"{where} line {i + 1}"
            part = check_part(doc["part"], len(parts), layers, itemsize, doc=at)
            if part["name"] in seen:
                raise StoreError(f"{at}: part {part['name']} is committed twice.")
            seen.add(part["name"])
            parts.append(part)
        intact += len(line) + 1
    if tail and torn is None:
        torn = f"line {len(lines) + 1} is incomplete ({len(tail)} bytes without a newline)"
    return CommitLog(parts, intact, torn, stale)

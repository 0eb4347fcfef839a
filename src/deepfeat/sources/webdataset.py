"""WebDataset ``.tar`` shards (as img2dataset and ``webdataset.TarWriter`` write them).

A sample is the run of consecutive members sharing a key (the member name up to the first dot
of its base name): ``000123.jpg`` + ``000123.cls`` + ``000123.json``. Its id is the stable hash
of ``<shard path relative to the shards' folder>/<key>``; its image is the first member with an
image extension (``jpg``, ``jpeg``, ``png``, ``webp``, ... or ``image_field``); its label comes
from ``label_field`` (a member extension such as ``cls`` or ``txt``, else a key of the sample's
``json`` member; default: the ``cls`` member when there is one); its split from ``split_field``
the same way, else from the shard's folder name when that is a split name (``data/train/0.tar``),
else ``split``.

Discovery reads only tar headers and the small label members, never an image; the result is
cached per shard (path, size, mtime and options) under ``~/.cache/deepfeat/shard-index``, so a
resume does not read finished shards again. Workers then read each image with one ``pread`` at
its offset (see :mod:`deepfeat.data.read`).

A shard that is not a tar, a sample without an image, a key repeated in one shard and the samples
of a truncated shard beyond the cut are exclusions with reasons (``unreadable_shard``,
``no_image``, ``duplicate``, ``truncated_shard``); the good samples of a truncated shard are kept.
Compressed shards (``.tar.gz``) are refused with a message: an image cannot be read at an offset
inside a compressed stream.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import tarfile
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from ..cachedir import cache_dir
from ..data import remote
from ..errors import UsageError
from ..store.fsutil import atomic_write_json
from .base import register_source
from .items import IMAGE_EXTENSIONS, SPLIT_NAMES, Discovery, ExcludedItem, SourceItem, normalize_split
from .table import Container, TableBuilder

log = logging.getLogger(__name__)

__all__ = ["WebDatasetSource", "expand_braces", "scan_shard"]

_INDEX_VERSION = 2  # 2: a header cut short is a truncated_shard exclusion
_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp") + tuple(
    sorted(e[1:] for e in IMAGE_EXTENSIONS if e[1:] not in ("jpg", "jpeg", "png", "webp"))
)
_BRACE = re.compile(r"\{([^{}]*)\}")
_MAX_LABEL_BYTES = 1 << 16
_COMPRESSED = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..123}`` numeric ranges (zero padding kept), in order.

    Example:
        >>> expand_braces("s-{00..02}.tar")
        ['s-00.tar', 's-01.tar', 's-02.tar']
        >>> expand_braces("{train,test}/{0..1}.tar")
        ['train/0.tar', 'train/1.tar', 'test/0.tar', 'test/1.tar']
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo:
            raise UsageError(f"The range {{{body}}} in {pattern!r} counts down; write it low..high.")
        if hi - lo > 10_000_000:
            raise UsageError(f"The range {{{body}}} in {pattern!r} names more than 10 million shards.")
        width = len(rng.group(1)) if rng.group(1).startswith("0") else 0
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    else:
        choices = body.split(",")
    return [x for c in choices for x in expand_braces(head + c + tail)]


def _is_shard_name(name: str) -> bool:
    return name.lower().endswith(".tar")


def _folder_shards(folder: str) -> list[str] | None:
    """The ``*.tar`` files of a folder that holds shards and no images or subfolders; else None."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return None
    shards = [e.path for e in entries if _is_shard_name(e.name) and not e.name.startswith(".")]
    if not shards:
        return None
    for e in entries:
        if e.name.startswith("."):
            continue
        if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
            return None
        try:
            if e.is_dir(follow_symlinks=False):
                return None
        except OSError:
            return None
    return sorted(shards, key=os.fsencode)


def resolve_shards(spec: str) -> tuple[list[str], list[str]]:
    """(shard paths in order, paths named literally that do not exist) for a path/glob/brace spec.

    A URL (``s3://lake/{000..099}.tar``, ``gs://.../*.tar``) gives object URLs (see :mod:`deepfeat.data.remote`).
    """
    if remote.is_url(spec):
        return remote.expand(expand_braces(spec))
    if os.path.isdir(spec):
        return _folder_shards(spec) or [], []
    found: list[str] = []
    missing: list[str] = []
    for pattern in expand_braces(spec):
        if glob.has_magic(pattern):
            found.extend(sorted(glob.glob(pattern), key=os.fsencode))
        elif os.path.exists(pattern):
            found.append(pattern)
        else:
            missing.append(pattern)
    seen: set[str] = set()
    unique = []
    for p in found:
        a = os.path.abspath(p)
        if a not in seen:
            seen.add(a)
            unique.append(a)
    return unique, [os.path.abspath(p) for p in missing]


def _split_key(name: str) -> tuple[str, str]:
    """(key, lower-case extension) of a member name, the WebDataset way."""
    folder, base = os.path.split(name)
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def _text(read: Callable[[int, int], bytes], offset: int, size: int) -> str | None:
    if size > _MAX_LABEL_BYTES:
        return None
    data = read(offset, size)
    return data.decode("utf-8", errors="replace").strip() or None


def _field(
    sample: dict[str, tuple[int, int]], read: Callable[[int, int], bytes], name: str | None, cache: dict[str, Any]
) -> str | None:
    """A sample's value for ``name``: the text of the member ``<key>.<name>``, else the JSON key."""
    if name is None:
        return None
    low = name.lower()
    if low in sample:
        return _text(read, *sample[low])
    if "json" in sample:
        if "json" not in cache:
            raw = _text(read, *sample["json"])
            try:
                cache["json"] = json.loads(raw) if raw else {}
            except ValueError:
                cache["json"] = {}
        doc = cache["json"]
        value = doc.get(name) if isinstance(doc, dict) else None
        if value is not None and not isinstance(value, (dict, list)):
            return str(value).strip() or None
    return None


def scan_shard(
    path: str, *, label_field: str | None = None, split_field: str | None = None, image_field: str | None = None
) -> dict[str, Any]:
    """Read a shard's headers (and label members): its samples and exclusions.

    Returns ``{"samples": [[key, member, offset, size, label, split], ...], "excluded": [[where,
    reason, message], ...]}`` in tar order; plain JSON, as cached.

    Example:
        >>> scan_shard("shards/000000.tar")["samples"][0]  # doctest: +SKIP
        ['000000', '000000.jpg', 1536, 2210, '3', None]
    """
    samples: list[list[Any]] = []
    excluded: list[list[str]] = []
    # An object in a bucket is read front to back once (remote.RemoteError propagates to cached_scan); its
    # label members are kept as they pass, so that reading a label costs no request of its own.
    fh = remote.open_object(path) if remote.is_url(path) else None
    texts: dict[int, bytes] = {}
    text_exts = {e.lower() for e in ("cls", "json", label_field, split_field) if e}
    try:
        size = int(remote.info(path)["size"]) if fh is not None else os.path.getsize(path)
        tf = tarfile.open(path if fh is None else None, mode="r:", fileobj=fh)
    except (tarfile.TarError, OSError) as exc:
        if fh is not None:
            fh.close()
        return {"samples": [], "excluded": [[path, "unreadable_shard", f"not a readable tar file: {exc}"]]}
    runs: list[tuple[str, dict[str, tuple[int, int]], dict[str, str]]] = []
    cut = ""
    with tf:
        while True:
            try:
                member = tf.next()
            except (tarfile.TarError, EOFError, OSError) as exc:
                cut = f"the shard is cut or corrupt after {len(runs)} samples: {exc}"
                break
            if member is None:
                break
            if not member.isfile():
                continue
            key, ext = _split_key(member.name)
            if member.offset_data + member.size > size:
                cut = f"the shard ends inside member {member.name!r}"
                _mark_cut(runs, key, member.name)
                break
            if not runs or runs[-1][0] != key:
                runs.append((key, {}, {}))
            runs[-1][1][ext] = (member.offset_data, member.size)
            runs[-1][2][ext] = member.name
            if fh is not None and ext in text_exts and member.size <= _MAX_LABEL_BYTES:
                fh.seek(member.offset_data)
                texts[member.offset_data] = fh.read(member.size)
        end = tf.offset  # where tarfile stopped: the end-of-archive blocks, or a header it could not read
    seen: set[str] = set()
    if fh is None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

        def read(offset: int, n: int) -> bytes:
            return os.pread(fd, n, offset)
    else:

        def read(offset: int, n: int) -> bytes:
            if offset in texts:
                return texts[offset][:n]
            fh.seek(offset)
            return bytes(fh.read(n))

    try:
        if not cut:  # tarfile ends quietly at a header cut short (or garbled): what follows must be zeros
            name = _unread_header(read, end, size)
            if name is not None:
                cut = f"the shard ends inside the header of member {name or '(name cut)'!r} at byte {end}"
                _mark_cut(runs, _split_key(name or "(name cut)")[0], name or "(name cut)")
        for key, members, names in runs:
            where = f"{path}#{key}"
            if "__cut__" in names:
                excluded.append([where, "truncated_shard", cut])
                continue
            if key in seen:
                excluded.append([where, "duplicate", f"the key {key!r} appears twice in the shard"])
                continue
            seen.add(key)
            exts = [image_field.lower()] if image_field else _IMAGE_EXTS
            found = next((e for e in exts if e in members), None)
            if found is None:
                have = ", ".join(sorted(members)) or "none"
                wanted = "." + image_field if image_field else "jpg, png, webp, ..."
                excluded.append([where, "no_image", f"no image member ({wanted}); members: {have}"])
                continue
            cache: dict[str, Any] = {}
            label = _field(members, read, label_field or ("cls" if "cls" in members else None), cache)
            split = normalize_split(_field(members, read, split_field, cache))
            offset, nbytes = members[found]
            samples.append([key, names[found], offset, nbytes, label, split])
    finally:
        if fh is None:
            os.close(fd)
        else:
            fh.close()
    if cut and not any(e[1] == "truncated_shard" for e in excluded):
        excluded.append([f"{path}#<after {runs[-1][0] if runs else 'start'}>", "truncated_shard", cut])
    return {"samples": samples, "excluded": excluded}


def _mark_cut(runs: list[tuple[str, dict[str, tuple[int, int]], dict[str, str]]], key: str, name: str) -> None:
    """The sample of the member ``name`` that the shard's end cuts is a ``truncated_shard`` exclusion, with
    the members it had before the cut (never embedded without them: a lost ``.cls`` is a lost label)."""
    if runs and runs[-1][0] == key:
        runs[-1][2]["__cut__"] = name
    else:
        runs.append((key, {}, {"__cut__": name}))


def _unread_header(read: Callable[[int, int], bytes], offset: int, size: int) -> str | None:
    """None when the shard holds only zero blocks after ``offset`` (a proper end); else the name the
    header cut there begins with ("" when even the name is cut or unreadable)."""
    rest = read(offset, min(max(size - offset, 0), 1 << 16))
    if not rest.strip(b"\0"):
        return None
    raw = rest[:100]
    if b"\0" not in raw and len(rest) < 100:
        return ""
    name = raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    prefix = rest[345:500].split(b"\0", 1)[0].decode("utf-8", errors="replace") if len(rest) >= 500 else ""
    return f"{prefix}/{name}" if prefix and name else name


def _index_path(path: str, version: list[Any], options: tuple[Any, ...]) -> str:
    key = json.dumps([_INDEX_VERSION, path, *version, *options])
    return cache_dir("shard-index", hashlib.sha256(key.encode()).hexdigest()[:32] + ".json")


def cached_scan(path: str, **options: str | None) -> dict[str, Any]:
    """:func:`scan_shard`, from the index cache when the shard has not changed since it was scanned.

    A local shard is the same while its size and mtime are; an object in a bucket while its ETag /
    version / generation and size are. An object that cannot be read (after the retries) is an
    exclusion (``missing`` or ``unreadable_shard``), not cached.
    """
    opts = (options.get("label_field"), options.get("split_field"), options.get("image_field"))
    try:
        if remote.is_url(path):
            version = remote.stamp(remote.info(path))
        else:
            st = os.stat(path)
            version = [st.st_size, st.st_mtime_ns]
    except remote.RemoteError as exc:
        return {
            "samples": [],
            "excluded": [[path, "missing" if exc.reason == "missing" else "unreadable_shard", exc.message]],
        }
    except OSError as exc:
        return {"samples": [], "excluded": [[path, "unreadable_shard", f"cannot stat the shard: {exc.strerror}"]]}
    index = _index_path(path, version, opts)
    try:
        with open(index, encoding="utf-8") as fh:
            doc = json.load(fh)
        if isinstance(doc, dict) and isinstance(doc.get("samples"), list) and isinstance(doc.get("excluded"), list):
            return doc
    except (OSError, ValueError):
        pass
    try:
        doc = scan_shard(path, **options)
    except remote.RemoteError as exc:
        return {
            "samples": [],
            "excluded": [[path, "missing" if exc.reason == "missing" else "unreadable_shard", exc.message]],
        }
    try:
        os.makedirs(os.path.dirname(index), exist_ok=True)
        atomic_write_json(index, doc)
    except OSError as exc:  # a read-only cache costs a rescan next time, nothing else
        log.debug("cannot cache the index of %s: %s", path, exc)
    return doc


class TarRows(Container):
    """The samples of one shard: ``text`` is the image member, ``a``/``b`` its offset and size."""

    def __init__(self, shard: str, rel: str) -> None:
        self.shard, self.rel, self.group = shard, rel, shard

    def item(
        self, iid: str, label: str | None, split: str | None, size: int, a: int, b: int, text: str | None, text2: str | None
    ) -> SourceItem:
        assert text is not None
        return SourceItem(
            id=iid,
            path=f"{self.shard}#{text}",
            relpath=f"{self.rel}/{_split_key(text)[0]}",
            label=label,
            split=split,
            size=size,
            ref=("tar", self.shard, a, b),
            group=self.shard,
        )


@register_source
class WebDatasetSource:
    """WebDataset shards: a ``.tar`` path, a glob, ``{000..099}`` brace notation, or a folder of shards.

    Example:
        >>> d = WebDatasetSource("data/{00000..00009}.tar", label_field="cls").discover()  # doctest: +SKIP
    """

    kind: ClassVar[str] = "webdataset"
    OPTIONS: ClassVar[tuple[str, ...]] = ("label_field", "split_field", "image_field", "split")

    def __init__(
        self,
        spec: str,
        label_field: str | None = None,
        split_field: str | None = None,
        image_field: str | None = None,
        split: str | None = None,
    ) -> None:
        lowered = spec.lower()
        if lowered.endswith(_COMPRESSED):
            raise UsageError(
                f"{spec!r} names compressed shards; deepfeat reads each image at its offset in the "
                "tar, which a compressed stream does not allow. Write uncompressed .tar shards "
                "(img2dataset and webdataset.TarWriter do by default) or decompress them first."
            )
        self.spec = spec
        self.options = {"label_field": label_field, "split_field": split_field, "image_field": image_field}
        self.split = normalize_split(split)

    @classmethod
    def claims(cls, spec: str) -> bool:
        low = spec.lower()
        if low.endswith(".tar") or low.endswith(_COMPRESSED):
            return True
        return os.path.isdir(spec) and _folder_shards(spec) is not None

    def _shard_split(self, shard: str) -> str | None:
        parent = os.path.basename(os.path.dirname(shard))
        return normalize_split(parent) if parent.lower() in SPLIT_NAMES else self.split

    def discover(self, *, skip_dirs: Iterable[str | os.PathLike[str]] = ()) -> Discovery:
        shards, missing = resolve_shards(self.spec)
        if not shards and not missing:
            raise UsageError(f"No .tar shard matches {self.spec!r}.")
        if remote.is_url(self.spec):
            root = remote.common_root(shards or missing)
        else:
            root = (
                os.path.commonpath([os.path.dirname(s) for s in shards])
                if shards
                else os.path.dirname(os.path.abspath(missing[0]))
            )
        items = TableBuilder()
        excluded = [ExcludedItem(m, "missing", "no such shard") for m in missing]
        for shard in shards:
            rel = remote.relpath(shard, root) if remote.is_url(shard) else os.path.relpath(shard, root).replace(os.sep, "/")
            doc = cached_scan(shard, **self.options)
            default_split = self._shard_split(shard)
            c = items.container(TarRows(shard, rel))
            for key, member, offset, size, label, split in doc["samples"]:
                items.add(
                    c,
                    f"{rel}/{key}",
                    label=label,
                    split=split or default_split,
                    size=int(size),
                    a=int(offset),
                    b=int(size),
                    text=member,
                )
            excluded.extend(ExcludedItem(where, reason, message) for where, reason, message in doc["excluded"])
        table = items.build()
        log.info("discovered %d samples in %d shards (%d excluded) under %s", len(table), len(shards), len(excluded), root)
        return Discovery(root=root, layout=self.kind, items=table, excluded=excluded)

    def __repr__(self) -> str:
        return f"WebDatasetSource({self.spec!r})"

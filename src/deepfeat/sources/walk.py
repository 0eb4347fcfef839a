"""The folder and list-file walker: a folder or a list file as a deterministic list of input items.

Supported sources (the layout is detected, see :func:`walk`):

* ``split_class`` -- ``root/<split>/<class>/...`` when every top-level folder is a split name
  (``train``, ``val``/``valid``/``validation``, ``test``; compared case-insensitively, recorded
  lower-case with ``valid``/``validation`` -> ``val``).
* ``class`` -- ``root/<class>/...``; files below a class folder at any depth get that label
  (like torchvision's ``ImageFolder``).
* ``flat`` -- a folder of images, label ``None``.

A *mixed* folder (images beside the class or split folders, e.g. ``F/*.jpg`` + ``F/thumbs/x.jpg``)
is not an error and drops nothing: the images above the class level are embedded without a label
(and without a split when they sit above the split folders); :attr:`Discovery.notes` says so, and
the run prints it. ``skip_dirs`` (the store being written, when ``--out`` lies inside the source)
are never entered and never make a folder look like a class.
* ``list`` -- a ``.csv`` or ``.txt`` file of ``path[,label[,split]]`` rows, parsed with the
  :mod:`csv` module (quote paths that hold commas or newlines). An optional header row naming
  the columns (``path,label,split`` in any order) is recognised; blank lines and lines starting
  with ``#`` are skipped; relative paths are resolved against the list file's folder.

Discovery never opens a file: it only uses ``scandir``/``lstat``/``stat``, so a FIFO can never
block it, and it never follows a symlink to a directory (so symlink loops cannot trap it). A symlink
to a file is followed wherever it points (as torchvision's ``ImageFolder`` and ``find -L`` do: a
split built with ``ln -s`` embeds every image); the item keeps the link's path (its id and relpath)
and is read, so hashed, through the link. ``symlinks_inside_root=True`` refuses links that resolve
outside the source folder (``symlink_outside_root``).
Everything that is not used is an :class:`~deepfeat.sources.items.ExcludedItem` with a reason
(:data:`~deepfeat.sources.items.EXCLUSION_REASONS`, listed in :mod:`deepfeat.sources.items`).

Paths are ``str`` decoded with :func:`os.fsdecode` (surrogateescape), so names that are not
valid UTF-8 survive: ``os.fsencode(item.path)`` gives back the original bytes. Items are sorted
by the bytes of their relative path. Labels and splits are data, never used to build paths.
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import os
import stat
from typing import Iterable, Iterator, Sequence

from ..errors import EnvironmentFault, UsageError
from .items import IMAGE_EXTENSIONS, LIST_EXTENSIONS, SPLIT_NAMES, Discovery, ExcludedItem, normalize_split
from .table import FileRows, TableBuilder

logger = logging.getLogger(__name__)

__all__ = ["walk"]

_LIST_COLUMNS = ("path", "label", "split")


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _stat_error(path: str, exc: OSError, *, via_symlink: bool) -> tuple[str, str]:
    """(reason, message) for an entry that could not be stat'ed; environment faults raise."""
    code = exc.errno
    what = exc.strerror or str(exc)
    if code in (errno.ENOENT, errno.ENOTDIR):
        return ("broken_symlink" if via_symlink else "missing"), f"{what}"
    if code == errno.ELOOP:
        return "symlink_loop", f"too many levels of symbolic links ({what})"
    if code in (errno.EACCES, errno.EPERM, errno.ENAMETOOLONG):
        return "unreadable", what
    raise EnvironmentFault(f"cannot stat {path!r}: {what} (errno {code})") from exc


class _Walker:
    """Collects items and exclusions for one folder source."""

    def __init__(
        self,
        root: str,
        default_split: str | None,
        skip_dirs: frozenset[str] = frozenset(),
        symlinks_inside_root: bool = False,
    ) -> None:
        self.root = root
        self.symlinks_inside_root = symlinks_inside_root  #: refuse file links that resolve outside the root
        self.real_root = os.path.realpath(root)
        self.default_split = default_split
        self.skip_dirs = skip_dirs  #: realpaths of folders that are never inputs (the output store)
        self.items = TableBuilder()
        self.files = self.items.container(FileRows(root))
        self.excluded: list[ExcludedItem] = []
        self.unlabeled: dict[str, int] = {}  #: where -> files above the class level, embedded unlabeled
        self._seen_dirs: set[tuple[int, int]] = set()

    def exclude(self, path: str, reason: str, message: str) -> None:
        self.excluded.append(ExcludedItem(path=path, reason=reason, message=message))

    def scan(self, path: str) -> list[os.DirEntry[str]]:
        """Entries of a folder sorted by name bytes; an unreadable folder is excluded."""
        try:
            st = os.stat(path)
            key = (st.st_dev, st.st_ino)
            if key in self._seen_dirs:  # bind-mount loops; directory symlinks are never followed
                self.exclude(path, "not_regular_file", "folder already visited (mount loop)")
                return []
            self._seen_dirs.add(key)
            with os.scandir(path) as it:
                entries = list(it)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self.exclude(path, "unreadable_dir", f"cannot list folder: {exc.strerror or exc}")
                return []
            raise EnvironmentFault(f"cannot list folder {path!r}: {exc.strerror or exc} (errno {exc.errno})") from exc
        entries.sort(key=lambda e: os.fsencode(e.name))
        return entries

    def classify(self, entry: os.DirEntry[str]) -> tuple[str, os.stat_result | None]:
        """'dir', 'file' (with the stat to use), 'excluded' (already recorded) or 'skipped' (a skip_dirs folder)."""
        path = entry.path
        if entry.name.startswith("."):
            self.exclude(path, "hidden", "hidden name (starts with '.')")
            return "excluded", None
        try:
            lst = entry.stat(follow_symlinks=False)
        except OSError as exc:
            reason, message = _stat_error(path, exc, via_symlink=False)
            self.exclude(path, reason, message)  # "missing": deleted while we were listing
            return "excluded", None
        if stat.S_ISLNK(lst.st_mode):
            try:
                st = os.stat(path)
            except OSError as exc:
                reason, message = _stat_error(path, exc, via_symlink=True)
                self.exclude(path, reason, message)
                return "excluded", None
            if self.symlinks_inside_root:
                target = os.path.realpath(path)
                if not _inside(target, self.real_root):
                    self.exclude(
                        path,
                        "symlink_outside_root",
                        f"symlink resolves outside the source folder: {target!r} (refused by symlinks_inside_root)",
                    )
                    return "excluded", None
            if stat.S_ISDIR(st.st_mode):
                self.exclude(path, "not_regular_file", "symlink to a folder (folder symlinks are not followed)")
                return "excluded", None
        else:
            st = lst
            if stat.S_ISDIR(st.st_mode):
                if _is_image_name(entry.name):
                    self.exclude(path, "not_regular_file", "a folder named like an image file")
                    return "excluded", None
                if self.skip_dirs and os.path.realpath(path) in self.skip_dirs:
                    logger.info("not entering %s: it is the output being written", path)
                    return "skipped", None
                return "dir", None
        if not stat.S_ISREG(st.st_mode):
            self.exclude(path, "not_regular_file", f"not a regular file ({_kind(st.st_mode)})")
            return "excluded", None
        if not _is_image_name(entry.name):
            self.exclude(path, "not_image_extension", "extension is not an image extension")
            return "excluded", None
        return "file", st

    def add(self, path: str, st: os.stat_result, label: str | None, split: str | None) -> None:
        prefix = self.root if self.root.endswith(os.sep) else self.root + os.sep
        relpath = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, self.root)
        if os.sep != "/":
            relpath = relpath.replace(os.sep, "/")
        self.items.add(
            self.files,
            relpath,
            label=label,
            split=split if split is not None else self.default_split,
            size=st.st_size,
            text=relpath,
        )

    def walk_labelled(self, folder: str, label: str | None, split: str | None) -> None:
        """Every image below ``folder`` (recursively) gets ``label`` and ``split``."""
        for entry in self.scan(folder):
            kind, st = self.classify(entry)
            if kind == "dir":
                self.walk_labelled(entry.path, label, split)
            elif kind == "file":
                assert st is not None
                self.add(entry.path, st, label, split)

    def walk_classes(self, folder: str, split: str | None, where: str) -> None:
        """``folder/<class>/...``; files directly in ``folder`` are embedded with ``split`` and no label."""
        for entry in self.scan(folder):
            kind, st = self.classify(entry)
            if kind == "dir":
                self.walk_labelled(entry.path, entry.name, split)
            elif kind == "file":
                assert st is not None
                self.add(entry.path, st, None, split)
                self.unlabeled[where] = self.unlabeled.get(where, 0) + 1


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "special file"


def _detect_layout(root: str, entries: list[os.DirEntry[str]], skip_dirs: frozenset[str] = frozenset()) -> str:
    """``split_class``, ``class`` or ``flat`` from the root's own entries (never follows symlinks)."""
    class_dirs: list[str] = []
    for e in entries:
        if e.name.startswith(".") or _is_image_name(e.name):
            continue
        try:
            if e.is_dir(follow_symlinks=False) and os.path.realpath(e.path) not in skip_dirs:
                class_dirs.append(e.name)
        except OSError:
            continue
    if not class_dirs:
        return "flat"
    if all(name.lower() in SPLIT_NAMES for name in class_dirs):
        return "split_class"
    return "class"


def _discover_folder(
    root: str, default_split: str | None, skip_dirs: frozenset[str] = frozenset(), symlinks_inside_root: bool = False
) -> Discovery:
    walker = _Walker(root, default_split, skip_dirs, symlinks_inside_root)
    top = walker.scan(root)
    layout = _detect_layout(root, top, skip_dirs)
    folders: list[str] = []
    for entry in top:
        kind, st = walker.classify(entry)
        if kind == "file":
            assert st is not None
            walker.add(entry.path, st, None, None)
            if layout != "flat":
                walker.unlabeled["the source folder"] = walker.unlabeled.get("the source folder", 0) + 1
        elif kind == "dir":
            folders.append(entry.name)
            if layout == "split_class":
                walker.walk_classes(entry.path, normalize_split(entry.name), where=entry.name)
            elif layout == "class":
                walker.walk_labelled(entry.path, entry.name, None)
            # flat: _detect_layout found no such folder
    notes = [_mixed_note(where, n, layout, folders) for where, n in sorted(walker.unlabeled.items())]
    for note in notes:
        logger.warning("%s", note)
    return _finish(root, layout, walker.items, walker.excluded, notes)


def _mixed_note(where: str, n: int, layout: str, folders: Sequence[str]) -> str:
    """The warning for ``n`` images found above the class level of a mixed folder."""
    shown = ", ".join(folders[:5]) + (", ..." if len(folders) > 5 else "")
    beside = f"beside the {'split' if layout == 'split_class' and where == 'the source folder' else 'class'} folders"
    if where == "the source folder":
        beside += f" ({shown})"
        unsplit = " or split" if layout == "split_class" else ""
    else:
        where, unsplit = f"the split folder {where!r}", ""
    return (
        f"mixed layout: {n} image file{'s' if n != 1 else ''} directly in {where}, {beside}, "
        f"{'were' if n != 1 else 'was'} embedded without a label{unsplit}; move "
        f"{'them' if n != 1 else 'it'} into a class folder to label {'them' if n != 1 else 'it'}"
    )


def _finish(
    root: str, layout: str, items: TableBuilder, excluded: list[ExcludedItem], notes: list[str] | None = None
) -> Discovery:
    table = items.build(sort_by_text=True)  # by the bytes of the relative path
    excluded.sort(key=lambda x: (os.fsencode(x.path), x.reason))
    logger.info(
        "discovered %d items (%d excluded) in %s layout under %s", len(table), len(excluded), layout, os.fsdecode(root)
    )
    return Discovery(root=root, layout=layout, items=table, excluded=excluded, notes=list(notes or []))


_WIDE_BOMS = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


def _read_rows(list_path: str, data: bytes | None = None) -> Iterator[tuple[int, list[str]]]:
    """``(line number, fields)`` of a UTF-8 list file (a UTF-8 BOM is skipped); ``data``: its bytes, if read.

    Raises:
        UsageError: the file is UTF-16/32 (by its byte-order mark) or holds a NUL byte, which no
            path can contain (a UTF-16 file without a BOM shows this way too).
    """
    if data is None:
        with open(list_path, "rb") as raw:
            head = raw.read(4)
    else:
        head = data[:4]
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise UsageError(
                f"The list file {list_path!r} is {name} text; deepfeat reads list files as UTF-8. Save "
                "it as UTF-8 (e.g. iconv -f UTF-16 -t UTF-8) and rerun."
            )
    with (
        open(list_path, encoding="utf-8-sig", errors="surrogateescape", newline="")
        if data is None
        else io.StringIO(data.decode("utf-8-sig", errors="surrogateescape"), newline="")
    ) as fh:
        reader = csv.reader(fh)
        for row in reader:
            if any("\x00" in f for f in row):
                raise UsageError(
                    f"The list file {list_path!r} holds a NUL byte on line {reader.line_num}; a list "
                    "file is UTF-8 text of path[,label[,split]] rows (a UTF-16 file shows this way: "
                    "save it as UTF-8)."
                )
            yield reader.line_num, row


def list_fields(rows: Iterable[tuple[int, list[str]]]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, {column: field})`` of a list file's rows: blank and ``#`` rows skipped, a first row
    that names the columns (``path`` and any of ``label``, ``split``) taken as the header, else the
    columns are ``path,label,split`` in that order.

    Example:
        >>> list(list_fields([(1, ["split", "path"]), (2, ["val", "a.jpg"]), (3, ["# note"])]))
        [(2, {'split': 'val', 'path': 'a.jpg'})]
    """
    columns: tuple[str, ...] = _LIST_COLUMNS
    header_checked = False
    for line_no, row in rows:
        if not row or all(not f.strip() for f in row) or row[0].lstrip().startswith("#"):
            continue
        if not header_checked:
            header_checked = True
            names = tuple(f.strip().lower() for f in row)
            if "path" in names and set(names) <= set(_LIST_COLUMNS) and len(set(names)) == len(names):
                columns = names
                continue
        yield line_no, dict(zip(columns, row))


def _discover_list(list_path: str, default_split: str | None) -> Discovery:
    base = os.path.dirname(list_path)
    items = TableBuilder()
    files = items.container(FileRows(base))
    excluded: list[ExcludedItem] = []
    seen: dict[str, int] = {}
    try:
        rows = list(_read_rows(list_path))
    except UnicodeError as exc:  # pragma: no cover - surrogateescape makes this unreachable
        raise UsageError(f"cannot read list file {list_path!r}: {exc}") from exc
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOENT):
            raise UsageError(f"cannot read list file {list_path!r}: {exc.strerror or exc}") from exc
        raise EnvironmentFault(f"cannot read list file {list_path!r}: {exc.strerror or exc}") from exc
    except csv.Error as exc:
        raise UsageError(f"list file {list_path!r} is not valid CSV: {exc}") from exc
    for line_no, fields in list_fields(rows):
        written = fields.get("path", "")
        if not written.strip():
            excluded.append(ExcludedItem(f"{list_path}:{line_no}", "missing", "row has an empty path"))
            continue
        full = os.path.join(base, written)
        if not os.path.lexists(full) and written.strip() != written:
            written = written.strip()
            full = os.path.join(base, written)
        relpath = os.path.normpath(written)
        full = os.path.join(base, relpath)
        label = (fields.get("label") or "").strip() or None
        split = normalize_split(fields.get("split"))
        if relpath in seen:
            excluded.append(ExcludedItem(full, "duplicate", f"line {line_no} repeats the path of line {seen[relpath]}"))
            continue
        seen[relpath] = line_no
        try:
            lst = os.lstat(full)
        except OSError as exc:
            reason, message = _stat_error(full, exc, via_symlink=False)
            excluded.append(ExcludedItem(full, reason, f"line {line_no}: {message}"))
            continue
        st = lst
        if stat.S_ISLNK(lst.st_mode):
            try:
                st = os.stat(full)
            except OSError as exc:
                reason, message = _stat_error(full, exc, via_symlink=True)
                excluded.append(ExcludedItem(full, reason, f"line {line_no}: {message}"))
                continue
        if not stat.S_ISREG(st.st_mode):
            excluded.append(
                ExcludedItem(full, "not_regular_file", f"line {line_no}: not a regular file ({_kind(st.st_mode)})")
            )
            continue
        items.add(
            files, relpath, label=label, split=split if split is not None else default_split, size=st.st_size, text=relpath
        )
    return _finish(base, "list", items, excluded)


def walk(
    source: str | os.PathLike[str],
    *,
    default_split: str | None = None,
    skip_dirs: Iterable[str | os.PathLike[str]] = (),
    symlinks_inside_root: bool = False,
) -> Discovery:
    """Find every input of a folder or list file, in a deterministic order.

    Args:
        source: a folder (``split_class``, ``class`` or ``flat`` layout, detected) or a ``.csv`` /
            ``.txt`` list file of ``path[,label[,split]]`` rows.
        default_split: the split given to items whose layout or row names none.
        skip_dirs: folders that are never inputs (the output store when it lies inside ``source``).
        symlinks_inside_root: refuse symlinks to files outside ``source`` (``symlink_outside_root``);
            by default they are followed wherever they point. Folders only (list entries are explicit).

    Returns:
        A :class:`Discovery`; a folder without images gives one with no items (not an error).

    Raises:
        UsageError: ``source`` is empty, does not exist, or is a file that is not a list file.
        EnvironmentFault: an I/O error while listing.

    Example:
        >>> d = walk("photos/")  # doctest: +SKIP
        >>> d.layout, d.classes, d.items[0].label  # doctest: +SKIP
        ('class', ['cat', 'dog'], 'cat')
    """
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    src = os.fspath(source)
    if isinstance(src, bytes):
        src = os.fsdecode(src)
    if not src:
        raise UsageError("The 'source' parameter of walk must be a folder or a list file; got an empty path instead.")
    default_split = normalize_split(default_split)
    try:
        st = os.stat(src)
    except FileNotFoundError as exc:
        raise UsageError(f"The source {src!r} does not exist; pass an existing folder or .csv/.txt list file.") from exc
    except OSError as exc:
        raise UsageError(f"The source {src!r} cannot be read: {exc.strerror or exc}.") from exc
    path = os.path.abspath(src)
    if stat.S_ISDIR(st.st_mode):
        skip = frozenset(os.path.realpath(os.fsdecode(os.fspath(d))) for d in skip_dirs)
        return _discover_folder(path, default_split, skip, bool(symlinks_inside_root))
    if stat.S_ISREG(st.st_mode) and os.path.splitext(path)[1].lower() in LIST_EXTENSIONS:
        return _discover_list(path, default_split)
    raise UsageError(
        f"The source {src!r} is neither a folder nor a .csv/.txt list file; "
        "pass a folder of images or a list file of path[,label[,split]] rows."
    )

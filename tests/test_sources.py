"""Discovery: layouts, labels/splits, exclusions, odd names, determinism and id stability."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

import deepfeat.sources.walk as walker
from deepfeat.errors import UsageError
from deepfeat.sources.items import EXCLUSION_REASONS, Discovery, SourceItem, item_id
from deepfeat.sources.walk import walk

try:
    import badinputs as bi
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests import badinputs as bi


def _touch(path: Path, data: bytes | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data if data is not None else path.name.encode("utf-8", "surrogateescape") + b"-payload"
    path.write_bytes(data)
    return data


def _by_rel(d: Discovery) -> dict[str, SourceItem]:
    return {i.relpath: i for i in d.items}


def _reasons(d: Discovery) -> dict[str, str]:
    return {os.path.relpath(x.path, d.root): x.reason for x in d.excluded}


def _discover_with_timeout(path, **kw) -> Discovery:
    result: list[Discovery] = []
    worker = threading.Thread(target=lambda: result.append(walk(path, **kw)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "discover blocked"
    return result[0]


# ---------------------------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------------------------


def test_flat_layout(tmp_path):
    for name in ("b.jpg", "a.PNG", "c.jpeg"):
        _touch(tmp_path / name)
    d = walk(tmp_path)
    assert d.layout == "flat" and d.root == str(tmp_path)
    assert [i.relpath for i in d.items] == ["a.PNG", "b.jpg", "c.jpeg"]
    assert all(i.label is None and i.split is None for i in d.items)
    assert d.classes == [] and d.splits == []
    assert d.items[0].size == len(b"a.PNG-payload")
    assert walk(tmp_path, default_split="Validation").splits == ["val"]


def test_class_layout(tmp_path):
    _touch(tmp_path / "cat" / "1.jpg")
    _touch(tmp_path / "cat" / "nested" / "2.jpg")
    _touch(tmp_path / "dog" / "1.jpg")
    _touch(tmp_path / "stray.jpg")
    (tmp_path / "empty_class").mkdir()
    d = walk(str(tmp_path))
    assert d.layout == "class"
    items = _by_rel(d)
    assert set(items) == {"cat/1.jpg", "cat/nested/2.jpg", "dog/1.jpg", "stray.jpg"}
    assert items["cat/nested/2.jpg"].label == "cat" and items["dog/1.jpg"].label == "dog"
    assert d.classes == ["cat", "dog"]
    # a file beside the class folders is embedded without a label, never dropped (docs/DECISIONS.md)
    assert items["stray.jpg"].label is None and _reasons(d) == {}
    assert len(d.notes) == 1 and "mixed layout: 1 image file" in d.notes[0]


def test_split_class_layout(tmp_path):
    _touch(tmp_path / "train" / "cat" / "1.jpg")
    _touch(tmp_path / "train" / "dog" / "1.jpg")
    _touch(tmp_path / "Valid" / "cat" / "2.jpg")
    _touch(tmp_path / "validation" / "dog" / "2.jpg")
    _touch(tmp_path / "TEST" / "dog" / "3.jpg")
    _touch(tmp_path / "train" / "loose.jpg")
    _touch(tmp_path / "root.jpg")
    d = walk(tmp_path)
    assert d.layout == "split_class"
    items = _by_rel(d)
    assert {r: (i.split, i.label) for r, i in items.items()} == {
        "train/cat/1.jpg": ("train", "cat"),
        "train/dog/1.jpg": ("train", "dog"),
        "Valid/cat/2.jpg": ("val", "cat"),
        "validation/dog/2.jpg": ("val", "dog"),
        "TEST/dog/3.jpg": ("test", "dog"),
        "train/loose.jpg": ("train", None),  # beside the class folders: embedded unlabeled
        "root.jpg": (None, None),  # beside the split folders: no label, no split
    }
    assert d.splits == ["test", "train", "val"] and d.classes == ["cat", "dog"]
    assert _reasons(d) == {} and len(d.notes) == 2
    assert _by_rel(walk(tmp_path, default_split="train"))["root.jpg"].split == "train"


def test_list_file_csv(tmp_path):
    data = tmp_path / "data"
    _touch(data / "a.jpg")
    _touch(data / "b, with comma.jpg")
    _touch(data / "new\nline.jpg")
    elsewhere = _touch(tmp_path / "abs" / "c.jpg")
    lst = data / "list.csv"
    lst.write_text(
        "path,label,split\n"
        "# a comment\n"
        "\n"
        "a.jpg,cat,train\n"
        '"b, with comma.jpg", dog ,Validation\n'
        '"new\nline.jpg",,\n'
        f"{tmp_path / 'abs' / 'c.jpg'},cat\n"
        "missing.jpg,cat,test\n"
        "./a.jpg,cat,train\n",
        encoding="utf-8",
    )
    d = walk(lst, default_split="test")
    assert d.layout == "list" and d.root == str(data)
    items = _by_rel(d)
    assert items["a.jpg"].label == "cat" and items["a.jpg"].split == "train"
    assert (items["b, with comma.jpg"].label, items["b, with comma.jpg"].split) == ("dog", "val")
    assert (items["new\nline.jpg"].label, items["new\nline.jpg"].split) == (None, "test")
    c = items[str(tmp_path / "abs" / "c.jpg")]
    assert open(c.path, "rb").read() == elsewhere
    assert open(items["new\nline.jpg"].path, "rb").read() == b"new\nline.jpg-payload"
    assert sorted(x.reason for x in d.excluded) == ["duplicate", "missing"]
    assert d.items[0].id == item_id(d.items[0].relpath)


def test_list_file_txt_without_header_and_column_order(tmp_path):
    _touch(tmp_path / "img" / "x.jpg")
    _touch(tmp_path / "img" / "y.bin")  # list files are explicit: no extension filter
    (tmp_path / "img" / "sub").mkdir()
    (tmp_path / "list.txt").write_text("img/x.jpg\nimg/y.bin,dog\nimg/sub\n")
    d = walk(tmp_path / "list.txt")
    assert [(i.relpath, i.label) for i in d.items] == [("img/x.jpg", None), ("img/y.bin", "dog")]
    assert _reasons(d) == {"img/sub": "not_regular_file"}
    (tmp_path / "l2.csv").write_text("split,path\nvalid,img/x.jpg\n")
    (item,) = walk(tmp_path / "l2.csv").items
    assert (item.relpath, item.split, item.label) == ("img/x.jpg", "val", None)


def test_bad_sources_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        walk(tmp_path / "nope")
    with pytest.raises(UsageError, match="empty"):
        walk("")
    _touch(tmp_path / "x.jpg")
    with pytest.raises(UsageError, match="list file"):
        walk(tmp_path / "x.jpg")


def test_empty_folder_is_not_an_error(tmp_path):
    d = walk(tmp_path)
    assert d.items == [] and d.excluded == [] and d.layout == "flat"


# ---------------------------------------------------------------------------------------------
# exclusions
# ---------------------------------------------------------------------------------------------


def test_bad_inputs_folder_exclusions(tmp_path):
    root = tmp_path / "in"
    expected = bi.make_bad_inputs(root)
    d = _discover_with_timeout(root)  # contains a FIFO: must not block
    assert d.layout == "flat"
    got = {i.relpath: "embedded" for i in d.items}
    got.update({name: f"excluded:{reason}" for name, reason in _reasons(d).items()})
    want = {n: ("embedded" if o.startswith("failed:") else o) for n, o in expected.items()}
    assert got == want
    assert all(x.reason in EXCLUSION_REASONS and x.message for x in d.excluded)
    link = _by_rel(d)["inside_link.jpg"]
    assert link.path == str(root / "inside_link.jpg")
    assert open(link.path, "rb").read() == (root / "plain.jpg").read_bytes()
    inside = walk(root, symlinks_inside_root=True)  # the opt-in refusal of links leaving the folder
    assert _reasons(inside)["outside_link.jpg"] == "symlink_outside_root"
    assert "outside_link.jpg" not in _by_rel(inside) and "inside_link.jpg" in _by_rel(inside)


def test_symlinks_and_hidden(tmp_path):
    root = tmp_path / "root"
    _touch(root / "cat" / "1.jpg")
    os.symlink(root / "cat", root / "cat" / "loop")  # directory loop: never followed
    os.symlink(root, root / "dogs")  # symlink to a folder at the top
    os.symlink("2.jpg", root / "cat" / "self.jpg")
    os.symlink("self2.jpg", root / "cat" / "self2.jpg")
    _touch(root / ".git" / "objects" / "x.jpg")
    _touch(root / "cat" / ".DS_Store.jpg")
    d = _discover_with_timeout(root)
    assert d.layout == "class"
    assert [i.relpath for i in d.items] == ["cat/1.jpg"]
    assert _reasons(d) == {
        "cat/loop": "not_regular_file",
        "dogs": "not_regular_file",
        "cat/self.jpg": "broken_symlink",
        "cat/self2.jpg": "symlink_loop",
        ".git": "hidden",
        "cat/.DS_Store.jpg": "hidden",
    }


def test_unreadable_dir_is_excluded(tmp_path, monkeypatch):
    _touch(tmp_path / "cat" / "1.jpg")
    _touch(tmp_path / "dog" / "1.jpg")
    real = os.scandir

    def scandir(path):
        if os.fspath(path).endswith("dog"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(walker.os, "scandir", scandir)
    d = walk(tmp_path)
    assert [i.relpath for i in d.items] == ["cat/1.jpg"]
    assert _reasons(d) == {"dog": "unreadable_dir"}


# ---------------------------------------------------------------------------------------------
# odd names, determinism, ids
# ---------------------------------------------------------------------------------------------

ODD_NAMES = [
    b"caf\xe9.jpg",
    "new\nline.jpg".encode(),
    b"-dash.jpg",
    b"l" * 240 + b".jpg",
    b"A.jpg",
    b"a.jpg",
    "\u00e9t\u00e9.jpg".encode(),
    "e\u0301te\u0301.jpg".encode(),
    b"sp ace .jpg",
    "\u732b.JPG".encode(),
]


def test_odd_filenames_round_trip(tmp_path):
    root = os.fsencode(tmp_path)
    written = {}
    for i, name in enumerate(ODD_NAMES):
        payload = b"payload-%d" % i
        try:
            with open(os.path.join(root, name), "wb") as fh:
                fh.write(payload)
        except OSError:  # file system refuses the name
            continue
        written[name] = payload
    d = walk(tmp_path)
    assert len(d.items) == len(written) and len({i.id for i in d.items}) == len(written)
    for item in d.items:
        assert open(item.path, "rb").read() == written[os.fsencode(item.relpath)]
        assert os.fsencode(item.path) == os.path.join(root, os.fsencode(item.relpath))
        assert item.id == hashlib.blake2b(os.fsencode(item.relpath), digest_size=10).hexdigest()


def test_order_and_ids_are_deterministic_and_stable(tmp_path):
    for name in ("b.jpg", "B.jpg", "a.jpg", "\u00e9.jpg", "e\u0301.jpg", "1.jpg"):
        _touch(tmp_path / "cls" / name)
    _touch(tmp_path / "other" / "0.png")
    first = walk(tmp_path)
    second = walk(tmp_path)
    assert first == second
    keys = [os.fsencode(i.relpath) for i in first.items]
    assert keys == sorted(keys)
    _touch(tmp_path / "cls" / "0.jpg")  # adding a file changes no existing id
    third = walk(tmp_path)
    old = {i.relpath: i.id for i in first.items}
    new = {i.relpath: i.id for i in third.items}
    assert set(new) - set(old) == {"cls/0.jpg"}
    assert all(new[r] == old[r] for r in old)
    assert len(set(new.values())) == len(new)

"""The commit log (manifest.log) beside manifest.json: appends, compaction, crashes, hostile logs.

docs/STORE_FORMAT.md, "Commit protocol". The unit tests use part records that name files which
need not exist (the manifest's checks are on the records); the end-to-end tests extract 40 real
Fashion-MNIST images into 20 parts with the log in use, and kill writers with SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deepfeat
from deepfeat.errors import EnvironmentFault, StoreError
from deepfeat.store import layout, trust
from deepfeat.store.info import verify_store
from deepfeat.store.manifest import Manifest, PartRecord
from deepfeat.store.reader import open_store

LOG = layout.COMMIT_LOG_FILE


def record(i: int, rows: int = 4) -> PartRecord:
    """A part record with deterministic checksums (a ledger, a row table and one layer of 8 float16 dims)."""
    digest = lambda what: hashlib.sha256(f"{i}/{what}".encode()).hexdigest()  # noqa: E731
    files = {
        "ledger.parquet": {"sha256": digest("l"), "bytes": 1000 + i},
        "rows.parquet": {"sha256": digest("r"), "bytes": 2000 + i},
        "feat.npy": {"sha256": digest("f"), "bytes": rows * 8 * 2 + 128, "shape": [rows, 8], "dtype": "float16"},
    }
    return PartRecord(layout.part_name(i), rows, rows, rows, 0, files, {"train": rows})


def log_lines(store: Path) -> list[bytes]:
    path = store / LOG
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def dicts(parts: list[PartRecord]) -> list[dict]:
    return [p.to_dict() for p in parts]


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    """A store directory whose manifest lists 32 parts (written as earlier deepfeat did: no token)."""
    root = tmp_path / "store"
    (root / layout.PARTS_DIR).mkdir(parents=True)
    doc = {"format": layout.FORMAT_NAME, "format_version": 1, "parts": [record(i).to_dict() for i in range(32)]}
    (root / layout.MANIFEST_FILE).write_text(json.dumps(doc))
    return root


# ------------------------------------------------------------------------------- protocol
def test_commits_append_to_the_log_and_compact_at_one_sixteenth(store: Path) -> None:
    m = Manifest(str(store))
    assert [p.name for p in m.parts] == [layout.part_name(i) for i in range(32)] and not (store / LOG).exists()
    m.commit(record(32))  # an old manifest (no token) is rewritten first, never extended by a log
    doc = json.loads((store / layout.MANIFEST_FILE).read_text())
    assert len(doc["parts"]) == 33 and trust.LOG_TOKEN_RE.fullmatch(doc["log"]) and not (store / LOG).exists()
    for i in range(33, 35):  # 33 parts in manifest.json: the log may hold 33 // 16 = 2
        m.commit(record(i))
    assert len(log_lines(store)) == 2
    assert len(json.loads((store / layout.MANIFEST_FILE).read_text())["parts"]) == 33
    again = Manifest(str(store))
    assert dicts(again.parts) == dicts(m.parts) == [record(i).to_dict() for i in range(35)]
    m.commit(record(35))  # the third would exceed 1/16: manifest.json is rewritten, the log removed
    assert not (store / LOG).exists()
    assert [p["name"] for p in json.loads((store / layout.MANIFEST_FILE).read_text())["parts"]] == [
        layout.part_name(i) for i in range(36)
    ]
    with pytest.raises(StoreError, match="already committed"):
        m.commit(record(35))


def test_a_logged_line_is_one_checksummed_json_object(store: Path) -> None:
    m = Manifest(str(store))
    m.save()
    m.commit(record(32))
    line = log_lines(store)[0]
    digest, body = line.rstrip(b"\n").split(b" ", 1)
    assert digest.decode() == hashlib.sha256(body).hexdigest()[:16]
    doc = json.loads(body)
    assert doc == {"log": json.loads((store / layout.MANIFEST_FILE).read_text())["log"], "part": record(32).to_dict()}


def test_compact_folds_the_log_and_equal_stores_have_equal_manifests(store: Path, tmp_path: Path) -> None:
    m = Manifest(str(store))
    m.save()
    for i in range(32, 34):
        m.commit(record(i))
    assert (store / LOG).exists()
    m.compact()
    assert not (store / LOG).exists()
    # the same parts committed in one go give the same manifest.json, token included
    other = tmp_path / "other"
    other.mkdir()
    m2 = Manifest(str(other))
    m2.compact_ratio = 0  # the protocol of earlier versions: rewrite at every commit
    for i in range(34):
        m2.commit(record(i))
    assert (other / layout.MANIFEST_FILE).read_bytes() == (store / layout.MANIFEST_FILE).read_bytes()
    before = (store / layout.MANIFEST_FILE).stat().st_mtime_ns
    Manifest(str(store)).compact()  # nothing to fold: nothing written
    assert (store / layout.MANIFEST_FILE).stat().st_mtime_ns == before


# ------------------------------------------------------------------------------- crashes
def test_a_torn_last_line_is_ignored_and_rewritten_away(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = Manifest(str(store))
    m.save()
    for i in range(32, 34):
        m.commit(record(i))
    full = (store / LOG).read_bytes()
    second = log_lines(store)[1]
    for torn in (
        full[: -len(second) // 2],  # an append cut in the middle (no newline)
        full[: -len(second)] + b"\0" * len(second),  # the size grew, the data never landed
        full[:-9] + b"00000000\n",
    ):  # a whole line whose bytes are not those written
        (store / LOG).write_bytes(torn)
        with caplog.at_level(logging.WARNING, logger="deepfeat.store.manifest"):
            caplog.clear()
            again = Manifest(str(store))
        assert [p.name for p in again.parts] == [layout.part_name(i) for i in range(33)]
        assert "cut short by a crash" in caplog.text
    # the next writer does not append after the torn line: it rewrites manifest.json, removes the log
    again.commit(record(33))
    assert not (store / LOG).exists()
    assert dicts(Manifest(str(store)).parts) == [record(i).to_dict() for i in range(34)]


def test_a_crash_between_the_manifest_rewrite_and_the_log_removal(store: Path, monkeypatch) -> None:
    m = Manifest(str(store))
    m.save()
    for i in range(32, 34):
        m.commit(record(i))
    stale = (store / LOG).read_bytes()

    def die(path: str) -> None:
        raise KeyboardInterrupt("killed after the rename")

    monkeypatch.setattr(os, "unlink", die)
    with pytest.raises(KeyboardInterrupt):
        m.compact()
    monkeypatch.undo()
    assert (store / LOG).read_bytes() == stale  # the log survived; its lines carry the old token
    again = Manifest(str(store))
    assert dicts(again.parts) == [record(i).to_dict() for i in range(34)]  # each part once
    again.commit(record(34))  # stale lines are never appended to: rewritten away
    assert not (store / LOG).exists()
    assert [p.name for p in Manifest(str(store)).parts] == [layout.part_name(i) for i in range(35)]


def test_a_failed_append_leaves_the_store_as_before(store: Path, monkeypatch) -> None:
    m = Manifest(str(store))
    m.save()
    m.commit(record(32))
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(EnvironmentFault, match="disk is full"):
        m.commit(record(33))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert len(log_lines(store)) == 1  # the half-committed line was cut off again
    assert (
        [p.name for p in m.parts] == [p.name for p in Manifest(str(store)).parts] == [layout.part_name(i) for i in range(33)]
    )
    m.commit(record(33))
    assert [p.name for p in Manifest(str(store)).parts] == [layout.part_name(i) for i in range(34)]


COMMITTER = r"""
import sys
from deepfeat.store.manifest import Manifest
sys.path.insert(0, sys.argv[2])
from test_manifest_log import record
m = Manifest(sys.argv[1])
m.compact_ratio = 4
i = m.next_index()
while True:
    m.commit(record(i))
    print(i, flush=True)
    i += 1
"""


def test_kill9_while_committing_keeps_every_acknowledged_part(tmp_path: Path) -> None:
    """SIGKILL at random moments of a stream of commits (appends and rewrites): what was acknowledged stays."""
    root = tmp_path / "store"
    root.mkdir()
    rng = np.random.default_rng(3)
    acknowledged = -1
    for _ in range(4):
        p = subprocess.Popen(
            [sys.executable, "-c", COMMITTER, str(root), str(Path(__file__).parent)], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout is not None
        first = int(p.stdout.readline())
        time.sleep(float(rng.uniform(0.02, 0.3)))
        p.send_signal(signal.SIGKILL)
        out, _ = p.communicate()
        acknowledged = max([acknowledged, first, *(int(x) for x in out.split())])
        names = [p.name for p in Manifest(str(root)).parts]
        # every acknowledged commit is there, each part once and in order, nothing invented
        assert names == [layout.part_name(i) for i in range(len(names))]
        assert len(names) >= acknowledged + 1 and len(names) <= acknowledged + 2
        assert dicts(Manifest(str(root)).parts) == [record(i).to_dict() for i in range(len(names))]
    assert acknowledged >= 12  # the kills landed after some appends and rewrites


# ------------------------------------------------------------------------------- hostile logs
def _logged_store(store: Path, n: int = 3) -> Manifest:
    m = Manifest(str(store))
    m.compact_ratio = 8
    m.save()
    for i in range(32, 32 + n):
        m.commit(record(i))
    assert len(log_lines(store)) == n
    return m


def _rewrite_line(store: Path, index: int, doc: dict | bytes, checksum: bool = True) -> None:
    lines = log_lines(store)
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    digest = trust.log_line_digest(body) if checksum else "0" * 16
    lines[index] = f"{digest} ".encode() + body + b"\n"
    (store / LOG).write_bytes(b"".join(lines))


def _line(store: Path, index: int) -> dict:
    return json.loads(log_lines(store)[index].split(b" ", 1)[1])


@pytest.mark.parametrize(
    "damage, match",
    [
        ("flip", "line 2 fails its checksum.*so the file was modified"),
        ("not json", "line 1 is not valid JSON"),
        ("not an entry", "line 1 is not an object"),
        ("duplicate", "line 3: part 00000032 is committed twice"),
        ("bad counts", "line 2: part 00000033: 5 embedded \\+ 0 failed != 4 items"),
        ("path", "line 1: '../../etc' is not a part name"),
    ],
)
def test_a_damaged_or_forged_log_is_a_clear_store_error(store: Path, damage: str, match: str) -> None:
    _logged_store(store)
    if damage == "flip":
        data = bytearray((store / LOG).read_bytes())
        data[len(log_lines(store)[0]) + 40] ^= 1
        (store / LOG).write_bytes(bytes(data))
    elif damage == "not json":
        _rewrite_line(store, 0, b"{not json}")
    elif damage == "not an entry":
        _rewrite_line(store, 0, {"part": record(40).to_dict()})
    elif damage == "duplicate":
        _rewrite_line(store, 2, _line(store, 0))
    elif damage == "bad counts":
        doc = _line(store, 1)
        doc["part"]["embedded"] = 5
        _rewrite_line(store, 1, doc)
    else:
        doc = _line(store, 0)
        doc["part"]["name"] = "../../etc"
        _rewrite_line(store, 0, doc)
    with pytest.raises(StoreError, match=match):
        Manifest(str(store))


def test_log_lines_of_another_manifest_are_ignored_and_a_part_of_the_manifest_is_not_relogged(store: Path) -> None:
    _logged_store(store)
    doc = _line(store, 0)
    doc["log"] = "f" * 16  # a line of another manifest.json (e.g. from before the last rewrite)
    _rewrite_line(store, 0, doc)
    assert [p.name for p in Manifest(str(store)).parts][-2:] == ["00000033", "00000034"]
    assert len(Manifest(str(store)).parts) == 34
    doc = _line(store, 1)
    doc["part"]["name"] = "00000003"  # already in manifest.json
    _rewrite_line(store, 1, doc)
    with pytest.raises(StoreError, match="line 2: part 00000003 is committed twice"):
        Manifest(str(store))


def test_a_bad_token_a_symlinked_log_and_an_oversized_log_are_refused(store: Path, tmp_path: Path, monkeypatch) -> None:
    _logged_store(store)
    doc = json.loads((store / layout.MANIFEST_FILE).read_text())
    token = doc["log"]
    doc["log"] = "../x"
    (store / layout.MANIFEST_FILE).write_text(json.dumps(doc))
    with pytest.raises(StoreError, match="manifest.json: log must be the commit log's token"):
        Manifest(str(store))
    doc["log"] = token
    (store / layout.MANIFEST_FILE).write_text(json.dumps(doc))
    outside = tmp_path / "elsewhere.log"
    (store / LOG).rename(outside)
    (store / LOG).symlink_to(outside)
    with pytest.raises(trust.UnsafePathError, match="manifest.log resolves to .* outside the store"):
        Manifest(str(store))
    (store / LOG).unlink()
    os.mkfifo(store / LOG)
    with pytest.raises(trust.UnsafePathError, match="manifest.log is not a regular file"):
        Manifest(str(store))
    (store / LOG).unlink()
    outside.rename(store / LOG)
    monkeypatch.setattr(trust, "MAX_LOG_BYTES", 100)
    with pytest.raises(StoreError, match="manifest.log is larger than"):
        Manifest(str(store))


def test_an_old_store_with_a_stray_log_ignores_it(store: Path) -> None:
    """manifest.json without a token (earlier deepfeat, or rewritten by one): any log beside it is not read."""
    (store / LOG).write_bytes(b"garbage that is not a log\n")
    assert [p.name for p in Manifest(str(store)).parts] == [layout.part_name(i) for i in range(32)]
    m = Manifest(str(store))
    m.commit(record(32))
    assert not (store / LOG).exists() and len(Manifest(str(store)).parts) == 33


# ------------------------------------------------------------------------------- real stores
ARGS = dict(
    layers="pre_logits", pool="avg", dtype="float16", input_size=32, workers=0, batch_size=8, part_size=2, runtime="torch"
)


@pytest.fixture(scope="module")
def images(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 40 real Fashion-MNIST training images: 20 parts of 2."""
    import shutil

    root = tmp_path_factory.mktemp("log") / "images"
    shutil.copytree(fm_dir / "train", root / "train")
    return root


@pytest.fixture(scope="module")
def clean(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean extraction whose commits went through the log (ratio 2); at the end manifest.json lists all."""
    out = tmp_path_factory.mktemp("log") / "feats"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Manifest, "compact_ratio", 2)
        deepfeat.extract(images, out, **ARGS)
    assert not (out / LOG).exists() and len(json.loads((out / layout.MANIFEST_FILE).read_text())["parts"]) == 20
    return out


def _snapshot(out: Path) -> dict:
    store = open_store(out)
    return {
        (i, v): row
        for b in store.batches(batch_size=64)
        for i, v, row in zip(b.ids, b.meta.column("view").to_pylist(), b.concat())
    }


def test_readers_see_the_logged_parts_of_a_real_store(clean: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "feats"
    shutil.copytree(clean, copy)
    m = Manifest(str(copy))
    parts = list(m.parts)
    m.parts = parts[:16]
    m.save()
    m.compact_ratio = 4
    for p in parts[16:]:
        m.commit(p)
    assert len(log_lines(copy)) == 4
    assert len(json.loads((copy / layout.MANIFEST_FILE).read_text())["parts"]) == 16
    assert [p.name for p in open_store(copy).parts] == [p.name for p in parts]
    assert verify_store(copy) == []
    assert _snapshot(copy).keys() == _snapshot(clean).keys()
    _rewrite_line(copy, 1, b"{}", checksum=False)
    problems = verify_store(copy)
    assert len(problems) == 1 and problems[0].startswith("[manifest] manifest.log: line 2 fails its checksum")
    with pytest.raises(StoreError, match="manifest.log: line 2 fails its checksum"):
        open_store(copy)


CHILD = r"""
import sys, deepfeat
from deepfeat.store.manifest import Manifest
Manifest.compact_ratio = 2  # the log holds up to half as many parts as manifest.json: most kills land beside one
deepfeat.extract(sys.argv[1], sys.argv[2], layers="pre_logits", pool="avg", dtype="float16", input_size=32,
                 workers=0, batch_size=8, part_size=2, runtime="torch")
"""


@pytest.mark.slow  # ~15 s on an idle machine, a minute on the loaded 2-core VM; the log's kill -9 test
# above (a real process committing with Manifest, killed 4 times) runs in the default suite
def test_kill9_during_a_logged_extraction_then_resume_equals_a_clean_run(images: Path, clean: Path, tmp_path: Path) -> None:
    out = tmp_path / "feats"
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(images), str(out)])
    deadline = time.monotonic() + 120
    # kill once the log holds a part, past the first compactions
    while p.poll() is None and time.monotonic() < deadline:
        try:
            if len(Manifest(str(out)).parts) >= 9 and (out / LOG).exists():
                break
        except (StoreError, OSError):
            pass
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert (out / LOG).exists(), "the kill did not land while the log held parts"
    done = len(Manifest(str(out)).parts)
    assert 9 <= done < 20
    s = deepfeat.extract(images, out, **ARGS)
    assert s.already_done == 2 * done and s.parts_committed == 20 - done
    assert not (out / LOG).exists()
    a, b = _snapshot(out), _snapshot(clean)
    assert a.keys() == b.keys()
    for k, v in a.items():
        np.testing.assert_array_equal(v, b[k])
    assert (out / layout.MANIFEST_FILE).read_bytes() == (clean / layout.MANIFEST_FILE).read_bytes()

"""Faults from RELIABILITY.md: kill -9 (anywhere, and inside the commit window), SIGTERM, dead workers.

Each test first proves that its fault happened where it meant to (the process was alive and
mid-run, k committed parts with 0 < k < all, the uncommitted files of the killed part on
disk), then that the resume gives the store of one clean run. Faults are injected from the
test side (tests/faults.py); deepfeat carries no test hooks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import numpy as np
import pytest

import deepfeat
from deepfeat.store.manifest import Manifest

ARGS = [
    "--layers",
    "blocks.2,pre_logits",
    "--input-size",
    "32",
    "--batch-size",
    "4",
    "--part-size",
    "8",
    "--workers",
    "1",
    "-q",
]
N_IMAGES = 80  # fm_dir: 4 per class and split
N_PARTS = 10  # 80 images / --part-size 8 (each part closes at 8 inputs long before --part-seconds)


def cli(src: Path, out: Path, *extra: str, env: dict | None = None, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deepfeat.cli", "extract", str(src), "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, env=env or dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def committed(out: Path) -> list:
    """The committed part records (manifest.json and its commit log), [] while there is no store yet."""
    try:
        return Manifest(str(out)).parts
    except Exception:  # noqa: BLE001 - no store yet (or its metadata not yet written)
        return []


def committed_parts(out: Path) -> int:
    return len(committed(out))


def wait_for(cond, timeout: float = 120.0) -> None:
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise AssertionError("timed out waiting for the extraction to reach the point to interrupt")
        time.sleep(0.05)


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path)) if path.is_dir() else []


def snapshot(out: Path) -> dict:
    """{id: concatenated features}, the failed set, and invariants I2/I5/I6 checked on the way."""
    store = deepfeat.open_store(out)
    feats: dict[tuple[str, int], np.ndarray] = {}
    for b in store.batches(batch_size=50):
        for i, v, row in zip(b.ids, b.meta.column("view").to_pylist(), b.concat()):
            assert (i, v) not in feats, "I5: id embedded twice"
            feats[(i, v)] = row
    names = [p.name for p in store.parts]
    assert len(names) == len(set(names)), "I5: part listed twice"
    assert sorted(os.listdir(out / "parts")) == sorted(names), "I6: uncommitted part visible"
    assert listing(out / ".tmp") == [], "I6: temporary files left"
    ledger = store.ledger().to_pylist()
    failed = {r["id"] for r in ledger if r["status"] == "failed"}
    assert {r["id"] for r in ledger if r["status"] == "embedded"} == {i for i, _ in feats}
    return {"feats": feats, "failed": failed}


@pytest.fixture(scope="module")
def clean_run(fm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "feats"
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert committed_parts(out) == N_PARTS
    return snapshot(out)


def assert_same(a: dict, b: dict) -> None:
    assert a["feats"].keys() == b["feats"].keys() and a["failed"] == b["failed"]
    for k, v in a["feats"].items():
        np.testing.assert_array_equal(v, b["feats"][k])


def assert_kept(before: list, out: Path) -> None:
    """I7: the parts committed before a crash are still committed, unchanged (never redone)."""
    after = {p.name: p.files for p in committed(out)}
    for p in before:
        assert after.get(p.name) == p.files, f"part {p.name} was redone or changed by the resume"


def test_kill9_at_random_moments_then_resume_equals_clean_run(fm_dir, tmp_path, clean_run):
    out = tmp_path / "feats"
    rng = np.random.default_rng(7)
    for round_ in range(3):
        # each decode batch 0.15 s slower: even on a fast machine the run is still going when the kill lands
        p = cli(fm_dir, out, env=faults.env(slow_decode=0.15))
        target = round_ + 1
        wait_for(lambda: committed_parts(out) >= target or p.poll() is not None)
        time.sleep(float(rng.uniform(0, 0.4)))
        assert p.poll() is None, f"round {round_}: the run ended before the kill: {p.stderr.read().decode()}"
        p.send_signal(signal.SIGKILL)
        assert p.wait() == -signal.SIGKILL
        k = committed_parts(out)
        assert target <= k < N_PARTS, f"round {round_}: the kill did not land mid-run ({k} parts committed)"
    before = committed(out)
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert_same(snapshot(out), clean_run)
    assert_kept(before, out)
    assert committed_parts(out) == N_PARTS


@pytest.mark.parametrize("stage", ["before_rename", "before_manifest"])
def test_kill9_inside_the_commit_window(fm_dir, tmp_path, clean_run, stage):
    """kill -9 while the 3rd part is half committed: its files exist, 2 parts are committed."""
    out, marker = tmp_path / "feats", tmp_path / "in-the-window"
    env = faults.env(pause={"stage": stage, "after": 2, "seconds": 120, "marker": str(marker)})
    p = cli(fm_dir, out, env=env)
    wait_for(lambda: marker.exists() or p.poll() is not None)
    assert p.poll() is None, p.stderr.read().decode()
    p.send_signal(signal.SIGKILL)
    assert p.wait() == -signal.SIGKILL
    before = committed(out)
    assert [r.name for r in before] == ["00000000", "00000001"]
    if stage == "before_rename":  # every file of the part written under .tmp/, not yet in parts/
        (tmp,) = listing(out / ".tmp")
        assert tmp.startswith("00000002-") and {"ledger.parquet", "rows.parquet"} <= set(listing(out / ".tmp" / tmp))
        assert listing(out / "parts") == ["00000000", "00000001"]
    else:  # renamed into parts/, not in the manifest
        assert listing(out / "parts") == ["00000000", "00000001", "00000002"]
        assert listing(out / ".tmp") == []
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert_same(snapshot(out), clean_run)  # the half-committed part is gone and redone (I6)
    assert_kept(before, out)


def test_sigterm_is_graceful(fm_dir, tmp_path, clean_run):
    """SIGTERM while the 3rd part is being written: exit 130, that part rolled back, the lock released."""
    out, marker = tmp_path / "feats", tmp_path / "writing"
    env = faults.env(pause={"stage": "before_rename", "after": 2, "seconds": 120, "marker": str(marker)})
    p = cli(fm_dir, out, env=env)
    wait_for(lambda: marker.exists() or p.poll() is not None)
    assert p.poll() is None and len(listing(out / ".tmp")) == 1, p.stderr.read().decode()
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    err = p.stderr.read().decode()
    assert rc == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted:"), err
    assert committed_parts(out) == 2
    assert listing(out / ".tmp") == [], "the part in progress was not rolled back"
    assert listing(out / "parts") == ["00000000", "00000001"]
    from deepfeat.store.lock import StoreLock

    with StoreLock(str(out)):  # the lock was released
        pass
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0
    assert_same(snapshot(out), clean_run)


def test_decode_worker_killed_mid_batch(fm_dir, tmp_path):
    out = tmp_path / "feats"
    victim = sorted((fm_dir / "train" / "bag").iterdir())[1].name
    p = cli(fm_dir, out, env=faults.env(crash_on=victim))
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert "a decode worker died" in p.stderr.read().decode()  # the worker really died (and was replaced)
    ledger = deepfeat.open_store(out).ledger().to_pylist()
    failed = [r for r in ledger if r["status"] == "failed"]
    assert [(r["reason"], os.path.basename(r["path"])) for r in failed] == [("worker_crash", victim)]
    assert sum(r["status"] == "embedded" for r in ledger) == N_IMAGES - 1


def test_kill9_leaves_no_orphan_decode_workers(fm_dir, tmp_path):
    out = tmp_path / "feats"
    p = cli(fm_dir, out, "--workers", "2")
    wait_for(lambda: committed_parts(out) >= 1 or p.poll() is not None)
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert len(children) >= 2 and p.poll() is None, "expected the decode workers of a running extract"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 15
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [
            c for c in alive if os.path.exists(f"/proc/{c}") and "zombie" not in open(f"/proc/{c}/status").read().lower()
        ]
    assert not alive, f"orphaned workers still running: {alive}"

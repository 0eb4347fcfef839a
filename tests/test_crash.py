"""Faults from RELIABILITY.md: kill -9 (anywhere, and inside the commit window), SIGTERM, dead workers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import deepfeat

ARGS = ["--layers", "blocks.2,pre_logits", "--input-size", "32", "--batch-size", "4", "--part-size", "8",
        "--workers", "1", "-q"]


def cli(src: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deepfeat.cli", "extract", str(src), "--out", str(out), *ARGS, *extra]
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def committed_parts(out: Path) -> int:
    try:
        return len(json.loads((out / "manifest.json").read_text())["parts"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for(cond, timeout: float = 120.0) -> None:
    t = time.monotonic()
    while not cond():
        if time.monotonic() - t > timeout:
            raise AssertionError("timed out waiting for the extraction to reach the point to interrupt")
        time.sleep(0.05)


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
    ledger = store.ledger().to_pylist()
    failed = {r["id"] for r in ledger if r["status"] == "failed"}
    assert {r["id"] for r in ledger if r["status"] == "embedded"} == {i for i, _ in feats}
    return {"feats": feats, "failed": failed}


@pytest.fixture(scope="module")
def clean_run(fm_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "feats"
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    return snapshot(out)


def assert_same(a: dict, b: dict) -> None:
    assert a["feats"].keys() == b["feats"].keys() and a["failed"] == b["failed"]
    for k, v in a["feats"].items():
        np.testing.assert_array_equal(v, b["feats"][k])


def test_kill9_at_random_moments_then_resume_equals_clean_run(fm_dir, tmp_path, clean_run):
    out = tmp_path / "feats"
    rng = np.random.default_rng(7)
    for round_ in range(3):
        p = cli(fm_dir, out)
        target = round_ + 1
        wait_for(lambda: committed_parts(out) >= target or p.poll() is not None)
        time.sleep(float(rng.uniform(0, 0.4)))
        p.send_signal(signal.SIGKILL)
        p.wait()
    done_before = committed_parts(out)
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert_same(snapshot(out), clean_run)
    # I7 bounded rework: the resume redid at most the one part that was in flight.
    assert committed_parts(out) - done_before <= 10 - done_before


@pytest.mark.parametrize("stage", ["before_rename", "before_manifest"])
def test_kill9_inside_the_commit_window(fm_dir, tmp_path, clean_run, stage):
    out = tmp_path / "feats"
    p = cli(fm_dir, out, env={"DEEPFEAT_TEST_PAUSE": f"{stage}:60"})
    if stage == "before_rename":
        wait_for(lambda: (out / ".tmp").is_dir() and any(n.startswith("0") for n in os.listdir(out / ".tmp")))
    else:
        wait_for(lambda: (out / "parts").is_dir() and len(os.listdir(out / "parts")) > committed_parts(out))
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert committed_parts(out) == 0
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    assert_same(snapshot(out), clean_run)


def test_sigterm_is_graceful(fm_dir, tmp_path, clean_run):
    out = tmp_path / "feats"
    p = cli(fm_dir, out)
    wait_for(lambda: committed_parts(out) >= 1 or p.poll() is not None)
    p.send_signal(signal.SIGTERM)
    rc = p.wait(timeout=60)
    assert rc in (0, 130), p.stderr.read().decode()
    assert not os.listdir(out / ".tmp")
    from deepfeat.store.lock import StoreLock

    with StoreLock(str(out)):  # the lock was released
        pass
    p = cli(fm_dir, out)
    assert p.wait(timeout=300) == 0
    assert_same(snapshot(out), clean_run)


def test_decode_worker_killed_mid_batch(fm_dir, tmp_path):
    out = tmp_path / "feats"
    victim = sorted((fm_dir / "train" / "bag").iterdir())[1].name
    p = cli(fm_dir, out, env={"DEEPFEAT_TEST_CRASH_ON": victim})
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    ledger = deepfeat.open_store(out).ledger().to_pylist()
    failed = [r for r in ledger if r["status"] == "failed"]
    assert [(r["reason"], os.path.basename(r["path"])) for r in failed] == [("worker_crash", victim)]
    assert sum(r["status"] == "embedded" for r in ledger) == 79


def test_kill9_leaves_no_orphan_decode_workers(fm_dir, tmp_path):
    out = tmp_path / "feats"
    p = cli(fm_dir, out, "--workers", "2")
    wait_for(lambda: committed_parts(out) >= 1 or p.poll() is not None)
    children = subprocess.run(["pgrep", "-P", str(p.pid)], capture_output=True, text=True).stdout.split()
    assert children, "expected decode worker processes"
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 15
    alive = children
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [c for c in alive if os.path.exists(f"/proc/{c}") and "zombie" not in
                 open(f"/proc/{c}/status").read().lower()]
    assert not alive, f"orphaned workers still running: {alive}"

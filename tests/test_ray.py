"""The Ray engine on a real local Ray instance (2 CPUs): same store as a local run, resume across
engines, a worker killed mid-part, an unreachable cluster, Ray missing."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faults
import pytest
from test_crash import assert_kept, assert_same, committed, committed_parts, snapshot, wait_for

import deepfeat
from deepfeat.engines.assign import assign_parts, steal, workers_for
from deepfeat.errors import EnvironmentFault, UsageError

KW = dict(layers="blocks.2,pre_logits", input_size=32, batch_size=4, part_size=12, device="cpu")
CLI_ARGS = ["--layers", "blocks.2,pre_logits", "--input-size", "32", "--batch-size", "4", "--part-size", "12", "-q"]


# ------------------------------------------------------------------ the pure assignment function
def test_assign_parts_round_robin_covers_every_part_once():
    assert assign_parts(7, 3) == [[0, 3, 6], [1, 4], [2, 5]]
    assert assign_parts(2, 4) == [[0], [1], [], []]
    assert assign_parts(0, 2) == [[], []]
    for n, w in [(1, 1), (10, 3), (100, 7)]:
        queues = assign_parts(n, w)
        assert queues == assign_parts(n, w)  # deterministic
        assert sorted(p for q in queues for p in q) == list(range(n))
        assert max(map(len, queues)) - min(map(len, queues)) <= 1
    with pytest.raises(UsageError):
        assign_parts(3, 0)


def test_steal_takes_the_tail_of_the_longest_queue():
    assert steal([[], [1, 4, 7], [2, 5]]) == (1, 7)
    assert steal([[], [3], [4]]) is None  # a single queued part stays with its worker
    assert steal([[0, 2], [1, 3]]) == (0, 2)


def test_workers_for():
    assert workers_for(n_parts=10, capacity=4) == 4
    assert workers_for(n_parts=2, capacity=4) == 2
    assert workers_for(n_parts=10, capacity=4, requested=3) == 3
    with pytest.raises(UsageError, match="room for 4"):
        workers_for(10, 4, requested=5)
    with pytest.raises(UsageError, match="no room"):
        workers_for(10, 0)


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def src(fm_dir, tmp_path_factory) -> Path:
    """80 Fashion-MNIST images plus 2 bad files (truncated PNG, HTML saved as .jpg)."""
    root = tmp_path_factory.mktemp("raysrc") / "fm"
    shutil.copytree(fm_dir, root)
    good = sorted((root / "train" / "bag").iterdir())[0].read_bytes()
    (root / "train" / "bag" / "zz_truncated.png").write_bytes(good[: len(good) // 2])
    (root / "test" / "bag" / "zz_html.jpg").write_bytes(b"<html>not an image</html>")
    return root


@contextlib.contextmanager
def torch_threads(n: int):
    """Bitwise equality on CPU needs the same intra-op thread count as the Ray workers (1 CPU each)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def local_ref(src, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "feats"
    with torch_threads(1):
        s = deepfeat.extract(src, out, workers=0, **KW)
    assert (s.embedded_total, s.failed_total) == (80, 2)
    return {"out": out, "manifest": manifest(out), "snap": snapshot(out), "reasons": s.failures_by_reason}


def ray_extract(src, out, address=None, **kw):
    from deepfeat.engines.builtin import RayEngine

    return deepfeat.extract(src, out, engine=RayEngine(address=address, workers=2), **{**KW, **kw})


def dying_worker(die: dict[str, str] | None = None, crash_on: str | None = None) -> type:
    """A PartWorker that dies where the test says; defined here, so Ray pickles it by value into its workers.

    ``die``: part name -> ``batch`` (the worker dies computing the part's 2nd batch, its 1st one done) or
    ``written`` (after writing the part, before returning its record), on the part's first attempt only.
    ``crash_on``: the process decoding an input whose path contains it dies, as with a codec that segfaults
    (in the worker itself, and in the decode processes it spawns for a retry: tests/faults.py).
    """
    from deepfeat.engines.ray_engine import PartWorker

    die = dict(die or {})
    child_env = {k: v for k, v in faults.env(crash_on=crash_on).items() if k in (faults.ENV, "PYTHONPATH")}

    class DyingPartWorker(PartWorker):
        def process(self, out, name, items, batches, attempt):  # type: ignore[no-untyped-def]
            if crash_on:
                import sys

                os.environ.update(child_env)  # decode processes spawned from now on crash on it too
                sys.path[:0] = [p for p in child_env["PYTHONPATH"].split(os.pathsep) if p not in sys.path]
                import faults as injected

                injected.crash_on(crash_on)  # and so does this process, decoding in place (decode_workers=0)
            stage = die.get(name) if attempt == 0 else None
            computer = self.computer
            if stage == "batch":
                calls = []

                def dies_on_the_second_batch(pixels):  # type: ignore[no-untyped-def]
                    calls.append(len(pixels))
                    if len(calls) == 2:
                        os._exit(77)
                    return computer(pixels)

                self.computer = dies_on_the_second_batch
            try:
                record = super().process(out, name, items, batches, attempt)
            finally:
                self.computer = computer
            if stage == "written":
                assert os.path.isdir(os.path.join(out, "parts", name))
                os._exit(77)
            return record

    return DyingPartWorker


# ------------------------------------------------------------------ the store
def test_ray_store_equals_local_store(ray_cluster, src, local_ref, tmp_path):
    out = tmp_path / "feats"
    events = []
    s = ray_extract(src, out, progress=events.append)
    assert (s.embedded_now, s.failed_now, s.parts_committed) == (80, 2, 7)
    assert s.failures_by_reason == local_ref["reasons"] == {"truncated": 1, "unidentified": 1}
    # Same part names, rows, ledgers and checksums of every file: features are bit-identical.
    assert manifest(out) == local_ref["manifest"]
    assert_same(snapshot(out), local_ref["snap"])
    assert sum(e["done"] for e in events if e["phase"] == "batch") == 82
    assert (out / "excluded.parquet").read_bytes() == (local_ref["out"] / "excluded.parquet").read_bytes()


def test_worker_killed_mid_part_is_retried_without_duplicates(ray_cluster, src, local_ref, tmp_path, monkeypatch, caplog):
    out = tmp_path / "feats"
    # Part 1: the worker dies after its first batch; part 4: after writing the part, before returning it
    # (an uncommitted directory in parts/ that the retry replaces).
    from deepfeat.engines import ray_engine

    monkeypatch.setattr(ray_engine, "PartWorker", dying_worker({"00000001": "batch", "00000004": "written"}))
    s = ray_extract(src, out)
    assert (s.embedded_total, s.failed_total, s.parts_committed) == (80, 2, 7)
    assert "part 00000001 died" in caplog.text and "part 00000004 died" in caplog.text
    assert manifest(out) == local_ref["manifest"]  # committed once, same contents
    assert_same(snapshot(out), local_ref["snap"])


# ------------------------------------------------------------------ resume across engines
def test_local_run_stopped_half_way_is_finished_by_ray(ray_cluster, src, local_ref, tmp_path):
    out = tmp_path / "feats"

    def stop_after_two_parts(event):
        if event["phase"] == "part" and committed_parts(out) >= 2:
            raise KeyboardInterrupt

    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        deepfeat.extract(src, out, workers=0, progress=stop_after_two_parts, **KW)
    assert committed_parts(out) == 2
    s = ray_extract(src, out)
    assert (s.already_done, s.parts_committed, s.embedded_total, s.failed_total) == (24, 5, 80, 2)
    assert manifest(out) == local_ref["manifest"]


def test_ray_driver_killed_is_finished_by_local(ray_cluster, src, local_ref, tmp_path):
    """kill -9 of a CLI driver attached to the running cluster, then a local resume."""
    out = tmp_path / "feats"
    address = ray_cluster.get_runtime_context().gcs_address
    cmd = [
        sys.executable,
        "-m",
        "deepfeat.cli",
        "extract",
        str(src),
        "--out",
        str(out),
        *CLI_ARGS,
        "--engine",
        "ray",
        "--address",
        address,
        "--ray-workers",
        "2",
        "--cpus-per-worker",
        "1",
    ]
    # The driver is killed while committing its 3rd part: exactly 2 parts are committed.
    marker = tmp_path / "committing"
    env = faults.env(pause={"stage": "before_manifest", "after": 2, "seconds": 120, "marker": str(marker)})
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wait_for(lambda: marker.exists() or p.poll() is not None)
    assert p.poll() is None, p.stderr.read().decode()
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = committed(out)
    assert len(before) == 2
    # Ray kills the actors of a dead driver. Resume only once every one of them is gone: an actor still
    # running could write a part directory after the resume cleaned the store.
    from ray._private import state

    def actors_gone() -> bool:
        mine = [a for a in state.actors().values() if "PartWorker" in a["ActorClassName"]]
        return all(a["State"] == "DEAD" for a in mine) and not any(
            a["Pid"]
            and os.path.exists(f"/proc/{a['Pid']}")
            and "zombie" not in open(f"/proc/{a['Pid']}/status").read().lower()
            for a in mine
        )

    wait_for(actors_gone, timeout=60)
    wait_for(lambda: ray_cluster.available_resources().get("CPU", 0) >= 2, timeout=30)
    with torch_threads(1):
        s = deepfeat.extract(src, out, workers=0, **KW)
    assert s.already_done == sum(p.items for p in before)
    assert_same(snapshot(out), local_ref["snap"])
    assert_kept(before, out)


# ------------------------------------------------------------------ errors
def test_unreachable_address_is_a_quick_clear_error(src, tmp_path):
    t = time.monotonic()
    with pytest.raises(EnvironmentFault, match="Cannot reach the Ray cluster at '127.0.0.1:1'"):
        ray_extract(src, tmp_path / "feats", address="127.0.0.1:1")
    assert time.monotonic() - t < 30
    assert committed_parts(tmp_path / "feats") == 0


def test_without_ray_the_error_says_how_to_install(src, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # 'import ray' now raises ImportError
    with pytest.raises(UsageError, match=r'pip install "deepfeat\[ray\]"'):
        ray_extract(src, tmp_path / "feats")
    from deepfeat.cli import main

    assert main(["extract", str(src), "--out", str(tmp_path / "cli"), "--engine", "ray", "-q"]) == 2
    assert 'pip install "deepfeat[ray]"' in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "feats")


@pytest.mark.slow
def test_codec_crash_in_a_worker_fails_one_image_like_a_local_run(ray_cluster, src, tmp_path, monkeypatch):
    """The decoder kills the worker (tests/faults.py crash_on): the retry isolates decoding in a child
    process, and the image is failed with worker_crash, as the local engine does (~45 s here)."""
    from deepfeat.engines import ray_engine

    victim = sorted((src / "train" / "coat").iterdir())[1].name
    monkeypatch.setattr(ray_engine, "PartWorker", dying_worker(crash_on=victim))
    s = ray_extract(src, tmp_path / "feats")
    assert s.failures_by_reason == {"truncated": 1, "unidentified": 1, "worker_crash": 1}
    ledger = deepfeat.open_store(tmp_path / "feats").ledger().to_pylist()
    assert [os.path.basename(r["path"]) for r in ledger if r["reason"] == "worker_crash"] == [victim]

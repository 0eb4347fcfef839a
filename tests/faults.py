"""Faults injected into deepfeat processes by the tests; deepfeat itself carries no test hooks.

A test passes ``faults.env(...)`` as the environment of a ``deepfeat`` child process. It puts
``tests/inject`` on ``PYTHONPATH``, whose ``sitecustomize`` calls :func:`install_from_env` at
the start of that process and of every decode worker it spawns, which monkeypatches deepfeat:

- ``pause={"stage": "before_rename" | "before_manifest", "after": k, "seconds": s, "marker": path}``:
  when the process reaches that stage of the commit of its (k+1)-th part -- every file of the
  part written and fsync'd under ``.tmp/`` but not yet renamed into ``parts/``; or renamed into
  ``parts/`` but not yet in the manifest -- it creates ``marker`` and sleeps ``s`` seconds, so
  the test can kill it exactly there, with exactly k parts committed.
- ``started=path``: creates ``path`` when ``deepfeat.extract`` is entered (past Python's start-up
  and the imports of the command line).
- ``slow_decode=s``: every decode batch takes ``s`` seconds longer (a run long enough to interrupt).
- ``crash_on="name"``: a decode worker that is handed an input whose locator contains
  ``name`` dies at once (``os._exit(70)``), as when a codec segfaults.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "DFT_FAULTS"
TESTS_DIR = Path(__file__).resolve().parent
INJECT_DIR = TESTS_DIR / "inject"


def env(**faults: Any) -> dict[str, str]:
    """Environment of a child process with ``faults`` installed (on top of ``os.environ``)."""
    path = os.pathsep.join(p for p in (str(INJECT_DIR), str(TESTS_DIR), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, ENV: json.dumps(faults), "PYTHONPATH": path}


def install_from_env() -> None:
    spec = json.loads(os.environ.get(ENV) or "{}")
    if "crash_on" in spec:
        crash_on(spec["crash_on"])
    if "slow_decode" in spec:
        slow_decode(spec["slow_decode"])
    if "pause" in spec and not _spawned_child():
        pause(**spec["pause"])
    if "started" in spec and not _spawned_child():
        started(spec["started"])


def _spawned_child() -> bool:
    """A process started by multiprocessing (a decode worker), not the deepfeat command itself."""
    import sys

    return any("multiprocessing" in a for a in getattr(sys, "orig_argv", sys.argv))


def crash_on(needle: str) -> None:
    """Decode workers die on an input whose locator contains ``needle``."""
    import sys

    from deepfeat.data import worker

    original = worker.prepare_batch

    def prepare_batch(items, *args, **kwargs):  # type: ignore[no-untyped-def]
        for item in items:
            if needle in str(item[1]):
                os._exit(70)
        return original(items, *args, **kwargs)

    worker.prepare_batch = prepare_batch
    pool = sys.modules.get("deepfeat.data.decode_pool")
    if pool is not None:  # already imported: it holds its own reference
        pool.prepare_batch = prepare_batch  # type: ignore[attr-defined]


def slow_decode(seconds: float) -> None:
    """Each decode batch takes ``seconds`` longer, so a run lasts long enough to be interrupted mid-way."""
    import sys

    from deepfeat.data import worker

    original = worker.prepare_batch

    def prepare_batch(items, *args, **kwargs):  # type: ignore[no-untyped-def]
        time.sleep(seconds)
        return original(items, *args, **kwargs)

    worker.prepare_batch = prepare_batch
    pool = sys.modules.get("deepfeat.data.decode_pool")
    if pool is not None:
        pool.prepare_batch = prepare_batch  # type: ignore[attr-defined]


def started(marker: str) -> None:
    """Create ``marker`` when ``deepfeat.extraction.extract`` is called."""
    from deepfeat import extraction

    original = extraction.extract

    def extract(*args, **kwargs):  # type: ignore[no-untyped-def]
        Path(marker).touch()
        return original(*args, **kwargs)

    extraction.extract = extract


def pause(stage: str, seconds: float, marker: str, after: int = 0) -> None:
    """Sleep at ``stage`` of the commit of this process's part number ``after`` (0-based), after creating ``marker``."""
    from deepfeat.store import layout, writer

    seen = {"n": 0}

    def reached() -> None:
        seen["n"] += 1
        if seen["n"] == after + 1:
            Path(marker).touch()
            time.sleep(seconds)

    if stage == "before_rename":
        original_fsync = writer.fsync_dir

        def fsync_dir(path: str) -> None:  # write_part fsyncs .tmp/<part> just before renaming it into parts/
            original_fsync(path)
            if os.path.basename(os.path.dirname(os.path.abspath(path))) == layout.TMP_DIR:
                reached()

        writer.fsync_dir = fsync_dir
    elif stage == "before_manifest":
        original_commit = writer.Manifest.commit

        def commit(self, record):  # type: ignore[no-untyped-def]
            reached()
            return original_commit(self, record)

        writer.Manifest.commit = commit  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown stage {stage!r}")

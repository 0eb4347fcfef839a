"""Run a child Python process and SIGKILL it once it reaches a point it marks with a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def kill_at_marker(script: str, args: list[str], marker: Path, timeout: float, *, may_die_first: bool = False) -> int:
    """Start ``python -c script *args``, SIGKILL it when ``marker`` exists; return its exit status.

    With ``may_die_first`` the child may also end by itself (e.g. it kills itself at the point
    under test); otherwise ending before the marker fails the test.
    """
    proc = subprocess.Popen([sys.executable, "-c", script, *args])
    try:
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if proc.poll() is not None:
                assert may_die_first, "the child process ended before reaching its marker"
                break
            assert time.monotonic() < deadline, f"the child process did not reach its marker within {timeout:.0f} s"
            time.sleep(0.1)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode


def group_processes(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def wait_group_empty(pgid: int, timeout: float) -> list[int]:
    """Wait until process group ``pgid`` has no live process; return the ones still there at ``timeout``."""
    deadline = time.monotonic() + timeout
    while (left := group_processes(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left

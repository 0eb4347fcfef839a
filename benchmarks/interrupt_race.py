#!/usr/bin/env python
"""Ctrl-C during the heavy imports: how often it vanishes or crashes, with and without deepfeat's hold.

Two scans, each sending SIGINT to a fresh process group at evenly spaced delays:

* **import**: ``python -c "import torch, timm, openvino"`` (plain) beside the same imports through
  ``deepfeat.interrupts.import_held`` (held), delays 0 .. 1.2 s. Outcomes: interrupted (exit by
  ``KeyboardInterrupt``), exit 0 (the Ctrl-C vanished) or killed by another signal (SIGABRT, SIGSEGV).
* **extract**: ``deepfeat extract`` on real Fashion-MNIST PNGs, interrupted at delays after
  ``extract`` is entered (``tests/faults.py``'s ``started`` marker): exit 130 is the expected end,
  anything else is lost or crashed.

Outcomes are counted per scan; the figures vary between runs (the window is a few milliseconds wide),
so run it more than once. docs/RELIABILITY.md quotes them.

    python benchmarks/interrupt_race.py                 # 10-15 min on 2 cores
    python benchmarks/interrupt_race.py --tries 30 --extract-tries 0
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEAVY = "torch, timm, openvino"


def _terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # as a command typed in a terminal starts


def outcome(code: int, expected: tuple[int, ...]) -> str:
    if code in expected:
        return "interrupted"
    if code == 0:
        return "exit 0 (Ctrl-C lost)"
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"


def import_scan(code: str, tries: int, span: float) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for i in range(tries):
        p = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_terminal,
        )
        time.sleep(span * i / max(tries - 1, 1))
        try:
            os.killpg(p.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        counts[outcome(p.wait(), (-signal.SIGINT, 1))] += 1
    return counts


def extract_scan(src: Path, tries: int, span: float) -> collections.Counter:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import faults

    counts: collections.Counter = collections.Counter()
    for i in range(tries):
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "started")
            cmd = [
                sys.executable,
                "-m",
                "deepfeat.cli",
                "extract",
                str(src),
                "--out",
                os.path.join(tmp, "feats"),
                "--layers",
                "blocks.2,pre_logits",
                "--input-size",
                "32",
                "--batch-size",
                "2",
                "--part-size",
                "2",
                "--workers",
                "2",
                "-q",
            ]
            p = subprocess.Popen(
                cmd,
                env=faults.env(started=marker, slow_decode=0.15),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_terminal,
            )
            while not os.path.exists(marker) and p.poll() is None:
                time.sleep(0.002)
            time.sleep(span * i / max(tries - 1, 1))
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
            counts[outcome(p.wait(timeout=300), (130,))] += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tries", type=int, default=60, help="interrupts per import scan")
    ap.add_argument("--extract-tries", type=int, default=50, help="interrupted extract starts")
    args = ap.parse_args()
    from deepfeat.runtimes.base import cpu_flags, cpu_model

    flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} cores; flags {' '.join(flags) or '-'}); "
        f"Python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}"
    )
    plain = import_scan(f"import {HEAVY}", args.tries, 1.2)
    held = import_scan(
        f"from deepfeat.interrupts import import_held; import_held({', '.join(repr(m.strip()) for m in HEAVY.split(','))})",
        args.tries,
        1.2,
    )
    print(f"import {HEAVY}, SIGINT at {args.tries} points in 0-1.2 s:")
    print(f"  plain: {dict(plain)}")
    print(f"  held (deepfeat.interrupts.import_held): {dict(held)}")
    if args.extract_tries:
        from deepfeat.datasets import write_fashion_mnist

        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "fm"
            write_fashion_mnist(src, per_class=4)
            counts = extract_scan(src, args.extract_tries, 1.5)
        print(f"deepfeat extract, SIGINT at {args.extract_tries} points in the first 1.5 s: {dict(counts)}")


if __name__ == "__main__":
    main()

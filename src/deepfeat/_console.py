"""The ``deepfeat`` program's entry point: the command line, with a Ctrl-C during start-up handled too.

Importing the command line takes a moment (argparse, the command modules); a Ctrl-C in that window
would otherwise end in Python's traceback. Here it ends like any interrupted command: one line,
exit status 130. Nothing has been written at that point.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run ``deepfeat`` with ``sys.argv`` (the console script)."""
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("interrupted while starting: nothing was done", file=sys.stderr, flush=True)
        return 130
    return run()

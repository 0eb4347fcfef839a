"""Loaded by every Python process whose PYTHONPATH starts with this folder (see tests/faults.py).

The tests put this folder on PYTHONPATH of the deepfeat processes they start (and so of the
decode workers those spawn) to inject faults; deepfeat itself carries no test hooks.
"""

import os

if os.environ.get("DFT_FAULTS"):
    import faults

    faults.install_from_env()

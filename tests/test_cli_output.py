"""The command line's output (issue 12, items 7, 9-13): help and defaults, flag names in errors,
one progress reporter (bars on a terminal, plain periodic lines otherwise), JSON summaries,
commands that never import torch, the exact solver's memory and time budget, disk full while
writing a bundle or a report.

Every test here failed on the code before its fix. Real data: Fashion-MNIST images (conftest)
and the bundled EfficientNet-Lite0.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import deepfeat
from deepfeat.cli import build_parser, main

FAST = ["--input-size", "32", "--workers", "0"]


@pytest.fixture(scope="module")
def fm_store(fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fashion-MNIST (4 per class and split) through Lite0 at 32 px, pre_logits (1280 dims)."""
    out = tmp_path_factory.mktemp("cli_output") / "fm_store"
    deepfeat.extract(fm_dir, out, input_size=32, workers=0)
    return out


def _python(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# --------------------------------------------------------------------------------------------- item 13
def test_models_help_and_info_never_import_torch(fm_store, tmp_path):
    """``deepfeat models``, ``--help`` (every subcommand's too) and ``info`` run without torch or timm in
    sys.modules (they used to take 5 s and 1.1 GB for 'models')."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    code = f"""
        import contextlib, io, sys
        from deepfeat.cli import build_parser, main
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(["models"]) == 0
            assert main(["info", {str(fm_store)!r}]) == 0
            for argv in (["--help"], *[[c, "--help"] for c in ("extract", "train", "export", "predict", "models")]):
                try:
                    main(argv)
                except SystemExit as e:
                    assert e.code == 0
        out = buf.getvalue()
        assert "efficientnet_lite0" in out and "rows" in out, out
        print(sorted(m for m in ("torch", "timm", "torchvision", "sklearn") if m in sys.modules))
    """
    r = _python(code, env={"TORCH_HOME": str(empty), "HF_HUB_CACHE": str(empty)})
    assert r.returncode == 0, r.stderr
    loaded = r.stdout.strip().splitlines()[-1]
    assert "torch" not in loaded and "timm" not in loaded, loaded

"""The layer contract (scripts/check_layers.py): no import cycle with lazy imports counted, lower layers never
import higher ones, and a lazy import always defers a heavy package -- on the real package, and on planted faults."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

import deepfeat

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_layers.py"
spec = importlib.util.spec_from_file_location("check_layers", SCRIPT)
check_layers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_layers)


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "deepfeat"
    for name, text in {"__init__.py": "", **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_package_keeps_its_layers() -> None:
    root = Path(deepfeat.__file__).parent
    assert check_layers.check(root) == []
    graph = check_layers.module_graph(root)
    assert len(graph) > 100 and graph["deepfeat.engines.local"], "the graph was really built"
    # the keystones of the old cycle stay cut: trained models do not reach into training, engines type their plan
    assert "deepfeat.cnn.training" not in graph["deepfeat.models.trained"]
    assert not any(d.startswith("deepfeat.engines.local") for d in graph["deepfeat.engines.ray_engine"])
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0 and "no cycle" in proc.stdout


def test_a_planted_lazy_cycle_fails(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "store/__init__.py": "",
            "store/reader.py": "def verify():\n    from .info import check\n    return check()\n",
            "store/info.py": "import numpy\nfrom .reader import verify\ndef check():\n    return []\n",
        },
    )
    problems = check_layers.check(root)
    assert any(
        p.startswith("import cycle of 2 modules") and "deepfeat.store.reader -> deepfeat.store.info (line 2)" in p
        for p in problems
    ), problems
    proc = subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True)
    assert proc.returncode == 1 and "import cycle" in proc.stdout


def test_a_lower_layer_importing_a_higher_one_fails(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "store/__init__.py": "",
            "engines/__init__.py": "import torch\n",
            "store/writer.py": "def write():\n    from ..engines import run\n",
        },
    )
    problems = check_layers.check(root)
    assert problems == ["deepfeat.store.writer:2 imports deepfeat.engines (layer 4 above 1)"]


def test_a_lazy_import_that_defers_nothing_fails(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "units.py": "def f():\n    return 1\n",
            "params.py": "import torch\ndef g():\n    from .units import f\n    return f()\n",
            "heads.py": "def h():\n    import torch\n    from .params import g\n    return g()\n",
        },
    )
    problems = check_layers.check(root)
    # params already loads torch: units defers nothing there; in heads the import of params defers torch
    assert len(problems) == 1 and problems[0].startswith("deepfeat.params:3 imports deepfeat.units inside a function")


def test_the_unit_tier_builds_no_backbone(request) -> None:
    """This module is in the ``unit`` tier (tests/conftest.py): building the bundled backbone fails there."""
    from deepfeat.models import load_backbone

    assert request.node.get_closest_marker("unit") is not None
    with pytest.raises(AssertionError, match="a unit test built the backbone 'efficientnet_lite0'"):
        load_backbone("efficientnet_lite0")

"""Shared fixtures: real photos (scikit-image), real Fashion-MNIST images, the bundled backbone."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Exported runtimes (OpenVINO IR, ONNX) are cached per test session, never in the user's home.
if "DEEPFEAT_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["DEEPFEAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="deepfeat-test-cache-")
    atexit.register(shutil.rmtree, os.environ["DEEPFEAT_CACHE_DIR"], ignore_errors=True)

PHOTOS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket"}


def photo_array(name: str) -> np.ndarray:
    from skimage import data

    arr = getattr(data, name)()
    return arr if arr.ndim == 3 else np.stack([arr] * 3, axis=-1)


@pytest.fixture(scope="session")
def photo_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The scikit-image sample photos as JPEG files: {'cat': path, 'coffee': path, ...}."""
    root = tmp_path_factory.mktemp("photos")
    out = {}
    for key, name in PHOTOS.items():
        path = root / f"{key}.jpg"
        Image.fromarray(photo_array(name)[..., :3]).save(path, quality=95)
        out[key] = path
    return out


@pytest.fixture(scope="session")
def fm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real Fashion-MNIST PNGs, 4 per class and split: train/<class>/*.png, test/<class>/*.png."""
    from deepfeat.datasets import write_fashion_mnist

    root = tmp_path_factory.mktemp("fm") / "fm"
    write_fashion_mnist(root, per_class=4)
    return root


@pytest.fixture(scope="session")
def lite0():
    """The bundled EfficientNet-Lite0 with its ImageNet weights."""
    from deepfeat.models import load_backbone

    return load_backbone("efficientnet_lite0")


# --- Tiers -------------------------------------------------------------------------------------------
# Every test is in one tier, marked at collection: ``unit`` (no backbone is ever built: enforced below),
# ``e2e`` (runs deepfeat in a child process: the CLI as a user starts it, kills, interrupts) or
# ``integration`` (the rest: real model, real images, in this process). ``pytest -m unit`` runs in
# seconds; the default run is all three (``slow`` suites stay out).

#: test modules that never build a backbone (decoding, sources, heads on arrays, parameters, units, layers)
UNIT_MODULES = frozenset(
    {
        "test_datasets",
        "test_decode",
        "test_heads",
        "test_sources",
        "test_units",
        "test_layers",
        "test_params",
        "test_planning",
    }
)
#: what a test's code (or a helper it calls) runs when it runs deepfeat in a child process
_CHILD_PROCESS = ("subprocess", "Popen", "os.kill", "kill_at_marker", "sys.executable")


def _code_of(func: object, depth: int = 2) -> str:
    """The source of ``func`` and of the functions it names (``depth`` levels): a test's helpers count."""
    import inspect

    try:
        source = inspect.getsource(func)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""
    if depth:
        names = getattr(func, "__globals__", {})
        for word in set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", source)):
            helper = names.get(word)
            if inspect.isfunction(helper) and helper is not func:
                source += _code_of(helper, depth - 1)
    return source


def _tier(item: pytest.Item) -> str:
    module = item.module.__name__.rpartition(".")[2] if getattr(item, "module", None) else ""
    if type(item).__name__ == "DoctestItem" or module in UNIT_MODULES:
        return "unit"
    code = _code_of(getattr(item, "function", None))
    return "e2e" if any(word in code for word in _CHILD_PROCESS) else "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        item.add_marker(getattr(pytest.mark, _tier(item)))


@pytest.fixture(autouse=True)
def _unit_tests_build_no_backbone(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the ``unit`` tier, building any backbone fails the test (the tier's promise, kept by the suite)."""
    if request.node.get_closest_marker("unit") is None:
        return
    from deepfeat.models import registry
    from deepfeat.models.registry import BackboneSource

    def refuse(name: str, *args: object) -> None:
        raise AssertionError(f"a unit test built the backbone {name!r}: mark its module integration")

    from deepfeat.registry import Registry

    refusing = Registry("backbone source", key="kind", entries=[BackboneSource("unit-tier", lambda name: True, refuse)])
    monkeypatch.setattr(registry, "BACKBONE_SOURCES", refusing)

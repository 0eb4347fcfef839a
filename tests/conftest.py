"""Shared fixtures: real photos (scikit-image), real Fashion-MNIST images, the bundled backbone."""
from __future__ import annotations

import os
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

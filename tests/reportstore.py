"""One small real store shared by the probe and HTML-report tests (built once per test session)."""

from __future__ import annotations

from pathlib import Path

import pytest

#: two layers of one stage, a later stage and the last layer of EfficientNet-Lite0
LAYERS = "blocks.2.0.conv_pwl,blocks.2.1.conv_pwl,blocks.4,pre_logits"
PER_CLASS = 20  #: Fashion-MNIST images per class and split: 200 train, 200 test


def shared_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, store): real Fashion-MNIST PNGs and their features at 64 px, float16, avg-pooled."""
    import deepfeat
    from deepfeat.datasets import write_fashion_mnist

    root = tmp_path_factory.getbasetemp() / "report-store"
    images, store = root / "fm", root / "store"
    if not (store / "manifest.json").exists():
        write_fashion_mnist(images, per_class=PER_CLASS)
        s = deepfeat.extract(images, store, layers=LAYERS, pool="avg", dtype="float16", input_size=64, workers=1)
        assert s.embedded_total == 20 * PER_CLASS and s.failed_total == 0
    return images, store

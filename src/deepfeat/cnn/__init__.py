"""Train your own ConvNet or fine-tune a pretrained one; the result is a backbone like any other.

Example:
    >>> from deepfeat.cnn import train_cnn
    >>> result = train_cnn("data/fm", "fm_cnn/", arch="small", epochs=10)   # doctest: +SKIP
    >>> from deepfeat.models import load_backbone
    >>> bb = load_backbone("fm_cnn/")                                        # doctest: +SKIP
"""

from __future__ import annotations

from ..models.arch import ARCHS, SmallConvNet, arch_config, build_cnn
from .training import CNNTrainResult, finetune, train_cnn

__all__ = ["ARCHS", "CNNTrainResult", "SmallConvNet", "arch_config", "build_cnn", "finetune", "train_cnn"]

"""Backbones, their layers, taps and pooling."""
from .layers import FeatureTaps, LayerInfo, describe_layers, resolve_layers
from .pooling import POOLINGS, normalize_pool, pool, pooled_dims
from ..data.preprocess import Preprocess
from .registry import DEFAULT_MODEL, Backbone, list_models, load_backbone

__all__ = [
    "Backbone", "DEFAULT_MODEL", "FeatureTaps", "LayerInfo", "POOLINGS", "Preprocess", "describe_layers",
    "list_models", "load_backbone", "normalize_pool", "pool", "pooled_dims", "resolve_layers",
]

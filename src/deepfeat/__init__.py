"""deepfeat: transfer learning by CNN feature extraction, out of core.

The public API is imported lazily so that ``import deepfeat`` (and decode workers) stay fast. Its
long verbs show progress and end with a summary line (``progress=False`` silences them; see
:mod:`deepfeat.apiprogress`).

Example:
    >>> import deepfeat
    >>> deepfeat.extract("photos/", out="feats/", layers="pre_logits")   # doctest: +SKIP
    >>> store = deepfeat.open_store("feats/")                             # doctest: +SKIP
"""

from __future__ import annotations

import importlib

from ._version import __version__

_API = {
    "extract": "deepfeat.extraction",
    "plan_extraction": "deepfeat.extraction",
    "ExtractSummary": "deepfeat.extraction",
    "open_store": "deepfeat.store.reader",
    "FeatureStore": "deepfeat.store.reader",
    "load_backbone": "deepfeat.models.registry",
    "list_models": "deepfeat.models.registry",
    "offline_mode": "deepfeat.models.hub",
    "describe_layers": "deepfeat.models.layers",
    "resolve_layers": "deepfeat.models.layers",
    "discover": "deepfeat.sources",
    "export_store": "deepfeat.store.export",
    "store_info": "deepfeat.store.info",
    "classify_images": "deepfeat.predict",
    "write_dataset": "deepfeat.datasets",
    "train": "deepfeat.training",
    "TrainResult": "deepfeat.training",
    "evaluate": "deepfeat.evaluation",
    "probe": "deepfeat.probing",
    "ProbeResult": "deepfeat.probing",
    "predict_images": "deepfeat.predict",
    "write_predictions": "deepfeat.predict",
    "load_bundle": "deepfeat.bundle",
    "export_model": "deepfeat.shipping",
    "FeatureExtractor": "deepfeat.sklearn_api",
    "train_cnn": "deepfeat.cnn.training",
    "finetune": "deepfeat.cnn.training",
    "CNNTrainResult": "deepfeat.cnn.training",
    "analyze": "deepfeat.analysis.report",
    "full_network_embedding": "deepfeat.analysis.fne",
    "duplicates": "deepfeat.search.duplicates",
    "build_index": "deepfeat.search.index",
    "open_index": "deepfeat.search.index",
    "search": "deepfeat.search.query",
}

__all__ = sorted(_API) + ["__version__"]


#: the verbs that show progress and a summary line by default (``progress=False`` silences them)
_REPORTED = (
    "extract",
    "train",
    "probe",
    "evaluate",
    "analyze",
    "full_network_embedding",
    "export_store",
    "predict_images",
    "train_cnn",
    "finetune",
)


def __getattr__(name: str) -> object:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        if name in _REPORTED:
            value = importlib.import_module("deepfeat.apiprogress").reported(value)
        globals()[name] = value  # once: later lookups find it without __getattr__
        return value
    raise AttributeError(f"module 'deepfeat' has no attribute {name!r}")

"""Classify new images end to end with a model bundle: image -> backbone -> taps -> pooling -> scaler -> head.

The bundle records everything needed to recompute its features exactly as the store had them:
the backbone (checked against the weights' sha256), the preprocessing, the layers and their
pooling, and the feature dtype (float16 stores are rounded to float16 here too). Images go
through the one decode policy of :mod:`deepfeat.data.decode`; an image that cannot be used
becomes a prediction with an ``error`` ("reason: message"), never an exception.

Example:
    >>> preds = predict_images("model.dfm", ["new_images/"], top_k=3)   # doctest: +SKIP
    >>> preds[0].labels, preds[0].scores                                 # doctest: +SKIP
    (['sneaker', 'sandal', 'ankle_boot'], [0.97, 0.02, 0.01])
    >>> write_predictions(preds, "preds.csv")                            # doctest: +SKIP
"""
from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .devices import resolve_device
from . import progress
from .bundle import Bundle, load_bundle
from .errors import UsageError
from .params import check_int, check_number

log = logging.getLogger(__name__)

#: cosine similarity to the nearest training row below which ``predict --neighbors`` flags an image as far
#: from everything the head was trained on (measured in docs/SEARCH.md)
FAR_THRESHOLD = 0.55

# Discovery exclusions that are not images a user asked about (hidden files, other extensions).
_SILENT_EXCLUSIONS = {"hidden", "not_image_extension"}


@dataclass
class BundlePrediction:
    """Top-k classes of one image, or why it could not be classified."""

    path: str
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    error: str | None = None
    score_kind: str = "probability"  #: "probability" (logreg, mlp) or "decision" (svm)
    #: with ``neighbors=INDEX``: the nearest training rows ({path, id, split, label, similarity}), best first
    neighbors: list[dict[str, Any]] | None = None
    #: with ``neighbors=INDEX``: the nearest training row is less similar than ``far_threshold``
    far_from_training: bool | None = None

    @property
    def label(self) -> str | None:
        return self.labels[0] if self.labels else None

    @property
    def probabilities(self) -> list[float]:
        """Alias of ``scores`` (same name as :class:`deepfeat.classify.Prediction`)."""
        return self.scores


def expand_with_errors(inputs: Iterable[str | os.PathLike]) -> tuple[list[tuple[str, Any]], list[BundlePrediction]]:
    """The ``(name, locator)`` pairs of :func:`deepfeat.classify.expand_inputs`, and error predictions.

    Entries that discovery refuses (missing list entries, broken symlinks, FIFOs, a shard's sample
    without an image...) come back as error predictions; hidden files and files with non-image
    extensions are skipped silently.
    """
    from .classify import expand_inputs

    excluded: list = []
    named = expand_inputs(inputs, excluded)
    errors = [BundlePrediction(ex.path, error=f"{ex.reason}: {ex.message}")
              for ex in excluded if ex.reason not in _SILENT_EXCLUSIONS]
    return named, errors


def predict_images(
    bundle: str | os.PathLike | Bundle,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int = 3,
    batch_size: int = 32,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    runtime: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    policy: Any = None,
    neighbors: str | os.PathLike | None = None,
    neighbors_k: int = 3,
    far_threshold: float = FAR_THRESHOLD,
) -> list[BundlePrediction]:
    """Top-k predictions of a bundle for image files, folders or list files, in input order.

    Args:
        bundle: a ``.dfm`` path or a loaded :class:`~deepfeat.bundle.Bundle`.
        inputs: one or more image files, folders (walked), ``.txt``/``.csv`` list files, WebDataset
            shards (``.tar``, ``{000..009}`` patterns, globs), Parquet files or ``hf:`` datasets.
        top_k: classes per image.
        batch_size: images per forward pass.
        weights: where to read the backbone weights from when not at the recorded path.
        device: ``cpu``, ``cuda`` or ``auto``.
        runtime / precision: ``auto`` uses the runtime and precision the bundle's features were
            extracted with (when they run here), so predictions match extraction bit for bit.
        workers: decode processes (default as for ``extract``; 0 decodes in this process).
        policy: a :class:`~deepfeat.data.decode.DecodePolicy` (default: the one the store used).
        neighbors: an index of the training store (``deepfeat index``): each prediction also gets its
            ``neighbors_k`` nearest training rows, and ``far_from_training`` when the nearest one's
            cosine similarity is below ``far_threshold`` (an image unlike anything the head was trained on:
            its class is a guess; the threshold is measured in docs/SEARCH.md).
    """
    from .data.decode import DecodePolicy
    from .embed import embed_files

    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    check_int(neighbors_k, "neighbors_k", minimum=1, where="predict_images")
    check_number(far_threshold, "far_threshold", minimum=-1, maximum=1, where="predict_images")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    index = None
    if neighbors is not None:
        from .search.index import open_index

        index = open_index(neighbors)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    named, errors = expand_with_errors(inputs)
    paths = [name for name, _ in named]
    device = resolve_device(device)
    if policy is None:
        policy = DecodePolicy.from_dict(b.metadata.get("decode_policy"))
    computer = bundle_runtime(b, weights=weights, device=device, runtime=runtime, precision=precision)
    shared_layer = index is not None and _computes_index_layer(b, index, computer)
    near_rows: dict[int, list[Any]] = {}
    kind = "probability" if b.probabilistic else "decision"
    k = min(int(top_k), len(b.classes))
    results: dict[int, BundlePrediction] = {}
    for batch in progress.track(embed_files(computer, [loc for _, loc in named], preprocess=b.preprocess,
                                            policy=policy,
                                            batch_size=batch_size, workers=workers),
                                "predict", total=len(paths), unit="img", size=lambda e: len(e.indices) + len(e.failed)):
        for i, reason, message in batch.failed:
            results[i] = BundlePrediction(paths[i], error=f"{reason}: {message}", score_kind=kind)
        if not batch.indices:
            continue
        if shared_layer:
            from .search.blocks import normalize

            F = np.asarray(batch.features[index.layer], dtype=np.float32)
            ok = np.isfinite(F).all(axis=1)
            sims, rows = index.knn(normalize(F), neighbors_k)
            for row, i in enumerate(batch.indices):
                if ok[row]:
                    near_rows[i] = [index.neighbor(int(r), float(v)) for r, v in zip(rows[row], sims[row]) if r >= 0]
        S = b.scores(b.features_of(batch.features))
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        for row, i in enumerate(batch.indices):
            idx = order[row]
            if not np.all(np.isfinite(S[row])):
                results[i] = BundlePrediction(paths[i], error="nonfinite_features: the model produced NaN/Inf "
                                              "for this input", score_kind=kind)
                continue
            results[i] = BundlePrediction(paths[i], [b.classes[j] for j in idx], [float(S[row, j]) for j in idx],
                                          score_kind=kind)
    if index is not None:
        from .search.query import neighbors_of_files

        near = near_rows if shared_layer else neighbors_of_files(
            index, [loc for _, loc in named], neighbors_k, batch_size=batch_size, workers=workers, weights=weights,
            device=device, runtime=runtime, precision=precision)
        for i, found in near.items():
            if results[i].error is None:
                results[i].neighbors = [asdict(n) for n in found]
                results[i].far_from_training = bool(not found or found[0].similarity < far_threshold)
    preds = [results[i] for i in range(len(paths))] + errors
    n_bad = sum(p.error is not None for p in preds)
    log.info("predict: %d images, %d could not be classified", len(preds), n_bad)
    return preds


def _computes_index_layer(b: Bundle, index: Any, computer: Any) -> bool:
    """Whether the bundle's forward pass already computes the index's layer exactly as its store did
    (same weights, preprocessing, layer and pooling, dtype, runtime and precision): then ``--neighbors``
    reuses those features instead of embedding the images a second time."""
    meta = index.doc.get("store_metadata") or {}
    spec = next((s for s in b.compute_layers if s.name == index.layer), None)
    stored = next((d for d in meta.get("layers") or [] if d.get("name") == index.layer), None)
    return bool(
        spec is not None and stored is not None and spec.pool == stored.get("pool") and spec.dims == stored.get("dims")
        and not meta.get("fne") and (meta.get("model") or {}).get("weights_sha256") == b.backbone_info.get("weights_sha256")
        and meta.get("preprocess") == b.preprocess.to_dict() and str(meta.get("dtype")) == b.compute_dtype
        and _same_runtime(computer, meta.get("runtime")))


def _same_runtime(computer: Any, recorded: Any) -> bool:
    try:
        here = computer.describe()
    except Exception:  # noqa: BLE001 - a runtime that cannot describe itself: embed again to be safe
        return False
    return isinstance(recorded, dict) and (here.get("runtime"), here.get("precision")) == (
        recorded.get("runtime"), recorded.get("precision"))


def bundle_runtime(b: Bundle, *, weights: str | os.PathLike | None = None, device: str = "cpu",
                   runtime: str = "auto", precision: str = "auto") -> Any:
    """The :class:`~deepfeat.runtimes.Runtime` that computes a bundle's features.

    ``auto`` means the runtime and precision recorded in the bundle when they run here
    (else the fastest available, logged), so predictions match the store it was trained on.
    """
    from .models.layers import describe_layers
    from .runtimes import build_runtime, prefer_recorded

    recorded = b.metadata.get("runtime")
    rec_rt = recorded.get("runtime") if isinstance(recorded, dict) else "torch"  # bundles before runtimes: torch
    runtime, precision = prefer_recorded(runtime, precision, device, rec_rt, str(b.metadata.get("precision", "fp32")),
                                         what=f"the bundle {b.path!r}")
    bb = b.load_backbone(weights)
    return build_runtime(bb, b.compute_layers, describe_layers(bb), runtime=runtime, device=device,
                         precision=precision, dtype=b.compute_dtype)


def write_predictions(preds: Sequence[Any], path: str | os.PathLike) -> str:
    """Write predictions as CSV (``.csv``: path, label_1, score_1, ..., error), JSON (``.json``) or an
    HTML gallery (``.html``: thumbnails with their top-k, one self-contained page).

    Works for :class:`BundlePrediction` and for :class:`deepfeat.classify.Prediction`.
    """
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json", ".html"):
        raise UsageError(f"The 'out' parameter of predict must end in .csv, .json or .html; got {path!r} instead.")
    if ext == ".html":
        from .reports.gallery import write_gallery

        return write_gallery(preds, path)
    rows = []
    for p in preds:
        scores = list(getattr(p, "scores", None) or getattr(p, "probabilities", None) or [])
        row = {"path": p.path, "labels": list(p.labels), "scores": [float(s) for s in scores],
               "score_kind": getattr(p, "score_kind", "probability"), "error": p.error}
        if getattr(p, "neighbors", None) is not None:
            row["neighbors"] = p.neighbors
            row["far_from_training"] = p.far_from_training
        rows.append(row)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    if ext == ".json":
        with open(path, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
        return path
    k = max((len(r["labels"]) for r in rows), default=0)
    near = any("neighbors" in r for r in rows)
    near_cols = ["nearest_similarity", "nearest_label", "nearest_split", "nearest_path", "far_from_training"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *[c for i in range(1, k + 1) for c in (f"label_{i}", f"score_{i}")],
                    *(near_cols if near else []), "error"])
        for r in rows:
            cells: list[Any] = []
            for i in range(k):
                if i < len(r["labels"]):
                    cells += [r["labels"][i], f"{r['scores'][i]:.6g}"]
                else:
                    cells += ["", ""]
            if near:
                n0 = (r.get("neighbors") or [None])[0]
                cells += ([f"{n0['similarity']:.6g}", n0["label"] or "", n0["split"] or "", n0["path"] or ""]
                          if n0 else ["", "", "", ""])
                far = r.get("far_from_training")
                cells.append("" if far is None else str(bool(far)).lower())
            w.writerow([r["path"], *cells, r["error"] or ""])
    return path


def prediction_dicts(preds: Sequence[BundlePrediction]) -> list[dict[str, Any]]:
    """Predictions as plain dicts (for JSON)."""
    return [asdict(p) for p in preds]

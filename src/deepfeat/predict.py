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
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from . import progress
from .bundle import Bundle, bundle_runtime, load_bundle
from .data.decode import DecodePolicy
from .devices import resolve_device
from .embed import embed_files
from .errors import UsageError
from .params import check_int, check_number
from .prediction import BundlePrediction, expand_with_errors  # noqa: F401 - predict's result type
from .reports.gallery import write_gallery
from .search.blocks import normalize
from .search.index import open_index
from .search.query import neighbors_of_files
from .shipping import OUTPUT_NAME, ExportedClassifier, is_exported_model
from .store.fsutil import atomic_write_bytes, check_writable, environment_errors

log = logging.getLogger(__name__)

#: cosine similarity to the nearest training row below which ``predict --neighbors`` flags an image as far
#: from everything the head was trained on (measured in docs/SEARCH.md)
FAR_THRESHOLD = 0.55

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
        bundle: a ``.dfm`` path or a loaded :class:`~deepfeat.bundle.Bundle`; or a classifier written
            by ``deepfeat export-model`` (``.onnx``, OpenVINO ``.xml``), run by
            :func:`predict_exported` (``weights`` and ``device`` do not apply).
        inputs: one or more image files, folders (walked), ``.txt``/``.csv`` list files, WebDataset
            shards (``.tar``, ``{000..009}`` patterns, globs), Parquet files or ``hf:`` datasets.
        top_k: classes per image.
        batch_size: images per forward pass.
        weights: where to read the backbone weights from when not at the recorded path.
        device: ``cpu``, ``cuda`` or ``auto``.
        runtime: ``auto`` uses the runtime and precision (``precision="auto"``) the bundle's features
            were extracted with (when they run here): at fp32 predictions match extraction bit for
            bit, at a reduced precision within the agreement the precision guard recorded.
        workers: decode processes (default as for ``extract``; 0 decodes in this process).
        policy: a :class:`~deepfeat.data.decode.DecodePolicy` (default: the one the store used).
        neighbors: an index of the training store (``deepfeat index``): each prediction also gets its
            ``neighbors_k`` nearest training rows, and ``far_from_training`` when the nearest one's
            cosine similarity is below ``far_threshold`` (an image unlike anything the head was trained on:
            its class is a guess; the threshold is measured in docs/SEARCH.md).
    """
    if not isinstance(bundle, Bundle) and is_exported_model(bundle):
        if device not in ("cpu", "auto"):
            log.warning("an exported model runs on the CPU here; device=%r applies to bundles", device)
        return predict_exported(bundle, inputs, top_k, batch_size, runtime=runtime, precision=precision,
                                workers=workers, policy=policy)
    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    check_int(neighbors_k, "neighbors_k", minimum=1, where="predict_images")
    check_number(far_threshold, "far_threshold", minimum=-1, maximum=1, where="predict_images")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    index = None
    if neighbors is not None:
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

    def near_of(batch: Any) -> None:  # the bundle computes the index's layer: its neighbours come for free
        F = np.asarray(batch.features[index.layer], dtype=np.float32)
        ok = np.isfinite(F).all(axis=1)
        sims, rows = index.knn(normalize(F), neighbors_k)
        for row, i in enumerate(batch.indices):
            if ok[row]:
                near_rows[i] = [index.neighbor(int(r), float(v)) for r, v in zip(rows[row], sims[row]) if r >= 0]

    results = _top_k(computer, named, b.classes, lambda f: b.scores(b.features_of(f)), top_k, kind,
                     preprocess=b.preprocess, policy=policy, batch_size=batch_size, workers=workers,
                     each_batch=near_of if shared_layer else None)
    if index is not None:
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


def _top_k(computer: Any, named: Sequence[tuple[str, Any]], classes: Sequence[str],
           scores_of: Callable[[dict[str, np.ndarray]], np.ndarray], top_k: int, kind: str, *, preprocess: Any,
           policy: Any, batch_size: int, workers: int | None,
           each_batch: Callable[[Any], None] | None = None) -> dict[int, BundlePrediction]:
    """{position: prediction} of the ``(name, locator)`` inputs: decoded and embedded by ``computer`` batch by
    batch (:func:`~deepfeat.embed.embed_files`), scored by ``scores_of(features)``, the ``top_k`` classes kept;
    a failed decode or a non-finite score is an error prediction. ``each_batch`` sees every embedded batch."""
    paths = [name for name, _ in named]
    k = min(int(top_k), len(classes))
    results: dict[int, BundlePrediction] = {}
    for batch in progress.track(embed_files(computer, [loc for _, loc in named], preprocess=preprocess, policy=policy,
                                            batch_size=batch_size, workers=workers),
                                "predict", total=len(paths), unit="img", size=lambda e: len(e.indices) + len(e.failed)):
        for i, reason, message in batch.failed:
            results[i] = BundlePrediction(paths[i], error=f"{reason}: {message}", score_kind=kind)
        if not batch.indices:
            continue
        if each_batch is not None:
            each_batch(batch)
        S = scores_of(batch.features)
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        for row, i in enumerate(batch.indices):
            if not np.all(np.isfinite(S[row])):
                results[i] = BundlePrediction(paths[i], error="nonfinite_features: the model produced NaN/Inf "
                                              "for this input", score_kind=kind)
                continue
            idx = order[row]
            results[i] = BundlePrediction(paths[i], [classes[j] for j in idx], [float(S[row, j]) for j in idx],
                                          score_kind=kind)
    return results


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


def check_predictions_out(path: str | os.PathLike) -> str:
    """Up front: ``path`` ends in .csv, .json or .html and its folder can be written (else an error before any work)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json", ".html"):
        raise UsageError(f"The 'out' parameter of predict must end in .csv, .json or .html; got {path!r} instead.")
    check_writable(path, "predict's output file")
    return ext


def write_predictions(preds: Sequence[Any], path: str | os.PathLike) -> str:
    """Write predictions as CSV (``.csv``: path, label_1, score_1, ..., error), JSON (``.json``) or an
    HTML gallery (``.html``: thumbnails with their top-k, one self-contained page).

    Works for :class:`BundlePrediction` and for :class:`deepfeat.classify.Prediction`. The file is
    replaced atomically: a failed write (disk full) leaves neither a partial file nor a temporary one.
    """
    path = os.fspath(path)
    ext = check_predictions_out(path)
    if ext == ".html":
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
    if ext == ".json":
        text = json.dumps(rows, indent=1)
    else:
        buf = io.StringIO(newline="")
        k = max((len(r["labels"]) for r in rows), default=0)
        near = any("neighbors" in r for r in rows)
        near_cols = ["nearest_similarity", "nearest_label", "nearest_split", "nearest_path", "far_from_training"]
        w = csv.writer(buf)
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
        text = buf.getvalue()
    with environment_errors(f"writing {path}"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))
    return path


def prediction_dicts(preds: Sequence[BundlePrediction]) -> list[dict[str, Any]]:
    """Predictions as plain dicts (for JSON)."""
    return [asdict(p) for p in preds]


def predict_exported(model: str | os.PathLike | ExportedClassifier,
                     inputs: str | os.PathLike | Sequence[str | os.PathLike], top_k: int = 3, batch_size: int = 32,
                     *, runtime: str = "auto", precision: str = "auto", workers: int | None = None,
                     policy: Any = None) -> list[Any]:
    """Top-k predictions of an exported classifier (``.onnx`` / OpenVINO ``.xml``) for images, in input order.

    Images are decoded and resized by deepfeat's decode pool with the preprocessing recorded in
    the file, exactly as ``predict`` does for the bundle; the result is a list of
    :class:`~deepfeat.predict.BundlePrediction` (errors as predictions, never exceptions).

    Example:
        >>> predict_exported("clf.onnx", ["images/"], top_k=1)[0].label    # doctest: +SKIP
        'sneaker'
    """
    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    clf = model if isinstance(model, ExportedClassifier) else ExportedClassifier(model, runtime, precision)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    named, errors = expand_with_errors(inputs)
    paths = [name for name, _ in named]
    results = _top_k(clf, named, clf.classes, lambda f: f[OUTPUT_NAME], top_k, clf.score_kind,
                     preprocess=clf.preprocess, policy=policy or DecodePolicy.from_dict(clf.decode_policy),
                     batch_size=batch_size, workers=workers)
    preds = [results[i] for i in range(len(paths))] + errors
    log.info("predict: %d images with %s, %d could not be classified", len(preds), clf.path,
             sum(p.error is not None for p in preds))
    return preds

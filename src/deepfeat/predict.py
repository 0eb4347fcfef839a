"""Classify new images end to end: :func:`predict_images` is the one entry point, whatever classifies.

- a model bundle (``.dfm`` from ``deepfeat train``): image -> backbone -> taps -> pooling -> scaler -> head;
- a classifier written by ``deepfeat export-model`` (``.onnx``, OpenVINO ``.xml``);
- a backbone's own classifier (a model name, e.g. ImageNet top-5 of the bundled model: the sanity
  check of weights + preprocessing).

Every one returns :class:`~deepfeat.prediction.Prediction` rows in input order. The bundle records
everything needed to recompute its features exactly as the store had them: the backbone (checked
against the weights' sha256), the preprocessing, the layers and their pooling, and the feature dtype
(float16 stores are rounded to float16 here too). Images go through the one decode policy of
:mod:`deepfeat.data.decode`; an image that cannot be used becomes a prediction with an ``error``
("reason: message"), never an exception.

Example:
    >>> preds = predict_images("model.dfm", ["new_images/"], top_k=3)   # doctest: +SKIP
    >>> preds[0].labels, preds[0].scores                                 # doctest: +SKIP
    (['sneaker', 'sandal', 'ankle_boot'], [0.97, 0.02, 0.01])
    >>> write_predictions(preds, "preds.csv")                            # doctest: +SKIP
    >>> predict_images("efficientnet_lite0", ["cat.jpg"], top_k=1)[0].label   # doctest: +SKIP
    'tabby'
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

from .agreement import DEFAULT_MIN_AGREEMENT
from .bundle import Bundle, bundle_runtime, load_bundle
from .bundle_header import SUFFIX, is_bundle
from .classify import softmax
from .data.decode import DecodePolicy
from .devices import resolve_device
from .embed import decode_pixels, embed_files
from .errors import UsageError
from .models.backbone import Backbone
from .models.layers import OUTPUT, describe_layers
from .models.registry import load_backbone
from .params import check_int, check_number
from .prediction import BundlePrediction, Prediction, expand_with_errors  # noqa: F401 - predict's result types
from .reports.gallery import write_gallery
from .runtimes import build_runtime, layer_specs, resolve_runtime
from .runtimes.guard import GUARD_IMAGES, check_min_agreement, guard_backbone
from .search.blocks import normalize
from .search.index import open_index
from .search.query import neighbors_of_files
from .shipping import OUTPUT_NAME, ExportedClassifier, is_exported_model
from .store.fsutil import atomic_write_bytes, check_writable, environment_errors

log = logging.getLogger(__name__)

#: cosine similarity to the nearest training row below which ``predict --neighbors`` flags an image as far
#: from everything the head was trained on (measured in docs/SEARCH.md)
FAR_THRESHOLD = 0.55

#: classes per image when ``top_k`` is not given: a bundle's few classes, a backbone's ImageNet thousand
DEFAULT_TOP_K = {"bundle": 3, "backbone": 5}


def is_classifier_file(model: Any) -> bool:
    """Whether ``model`` names a trained classifier (a bundle or an exported graph) rather than a backbone."""
    if isinstance(model, Bundle):
        return True
    if isinstance(model, Backbone) or not isinstance(model, (str, os.PathLike)):
        return False
    value = os.fspath(model)
    return value.lower().endswith(SUFFIX) or is_bundle(value) or is_exported_model(value)


def predict_images(
    model: str | os.PathLike | Bundle | Backbone,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int | None = None,
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
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> list[Prediction]:
    """Top-k predictions for image files, folders or list files, in input order; bad images are error rows.

    Args:
        model: a ``.dfm`` path or a loaded :class:`~deepfeat.bundle.Bundle`; a classifier written
            by ``deepfeat export-model`` (``.onnx``, OpenVINO ``.xml``), run by
            :func:`predict_exported` (``weights`` and ``device`` do not apply); or a backbone (a model
            name or a :class:`~deepfeat.models.backbone.Backbone`) with its own classifier.
        inputs: one or more image files, folders (walked), ``.txt``/``.csv`` list files, WebDataset
            shards (``.tar``, ``{000..009}`` patterns, globs), Parquet files or ``hf:`` datasets.
        top_k: classes per image (default 3 for a trained classifier, 5 for a backbone).
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
        min_agreement: a backbone only (a bundle computes at the precision its store recorded): the
            precision guard's threshold for a reduced precision, measured on the first 64 images.
    """
    if not is_classifier_file(model):
        if neighbors is not None:
            raise UsageError("'neighbors' needs a bundle (.dfm) trained on the indexed store, not a backbone.")
        return _predict_backbone(
            model,
            inputs,
            DEFAULT_TOP_K["backbone"] if top_k is None else top_k,
            batch_size,
            policy,
            runtime=runtime,
            precision=precision,
            device=device,
            workers=workers,
            min_agreement=min_agreement,
        )
    bundle = model
    top_k = DEFAULT_TOP_K["bundle"] if top_k is None else top_k
    if not isinstance(bundle, Bundle) and is_exported_model(bundle):
        if device not in ("cpu", "auto"):
            log.warning("an exported model runs on the CPU here; device=%r applies to bundles", device)
        return predict_exported(
            bundle, inputs, top_k, batch_size, runtime=runtime, precision=precision, workers=workers, policy=policy
        )
    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    check_int(neighbors_k, "neighbors_k", minimum=1, where="predict_images")
    check_number(far_threshold, "far_threshold", minimum=-1, maximum=1, where="predict_images")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    index = None
    if neighbors is not None:
        index = open_index(neighbors)
    named, errors = expand_with_errors(inputs)
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

    results = _top_k(
        computer,
        named,
        b.classes,
        lambda f: b.scores(b.features_of(f)),
        top_k,
        kind,
        preprocess=b.preprocess,
        policy=policy,
        batch_size=batch_size,
        workers=workers,
        each_batch=near_of if shared_layer else None,
    )
    if index is not None:
        near = (
            near_rows
            if shared_layer
            else neighbors_of_files(
                index,
                [loc for _, loc in named],
                neighbors_k,
                batch_size=batch_size,
                workers=workers,
                weights=weights,
                device=device,
                runtime=runtime,
                precision=precision,
            )
        )
        for i, found in near.items():
            if results[i].error is None:
                results[i].neighbors = [asdict(n) for n in found]
                results[i].far_from_training = bool(not found or found[0].similarity < far_threshold)
    return _in_order(results, len(named), errors, b.path)


def _top_k(
    computer: Any,
    named: Sequence[tuple[str, Any]],
    classes: Sequence[str],
    scores_of: Callable[[dict[str, np.ndarray]], np.ndarray],
    top_k: int,
    kind: str,
    *,
    preprocess: Any,
    policy: Any,
    batch_size: int,
    workers: int | None,
    each_batch: Callable[[Any], None] | None = None,
) -> dict[int, Prediction]:
    """{position: prediction} of the ``(name, locator)`` inputs: decoded and embedded by ``computer`` batch by
    batch (:func:`~deepfeat.embed.embed_files`), scored by ``scores_of(features)``, the ``top_k`` classes kept;
    a failed decode or a non-finite score is an error prediction. ``each_batch`` sees every embedded batch."""
    paths = [name for name, _ in named]
    k = min(int(top_k), len(classes))
    results: dict[int, Prediction] = {}
    for batch in embed_files(
        computer,
        [loc for _, loc in named],
        preprocess=preprocess,
        policy=policy,
        batch_size=batch_size,
        workers=workers,
        label="predict",
    ):
        for i, reason, message in batch.failed:
            results[i] = Prediction(paths[i], error=f"{reason}: {message}", score_kind=kind)
        if not batch.indices:
            continue
        if each_batch is not None:
            each_batch(batch)
        S = scores_of(batch.features)
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        for row, i in enumerate(batch.indices):
            if not np.all(np.isfinite(S[row])):
                results[i] = Prediction(
                    paths[i], error="nonfinite_features: the model produced NaN/Inf for this input", score_kind=kind
                )
                continue
            idx = order[row]
            results[i] = Prediction(
                paths[i],
                [classes[j] for j in idx],
                [float(S[row, j]) for j in idx],
                score_kind=kind,
                indices=[int(j) for j in idx],
            )
    return results


def _in_order(results: dict[int, Prediction], n: int, errors: list[Prediction], what: str) -> list[Prediction]:
    """The ``n`` predictions of :func:`_top_k` in input order, then the inputs that discovery refused; logs
    the one-line count."""
    preds = [results[i] for i in range(n)] + errors
    log.info(
        "predict: %d images with %s, %d could not be classified", len(preds), what, sum(p.error is not None for p in preds)
    )
    return preds


def _predict_backbone(
    model: str | Backbone,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int,
    batch_size: int,
    policy: DecodePolicy | None,
    *,
    runtime: str,
    precision: str,
    device: str,
    workers: int | None,
    min_agreement: float,
) -> list[Prediction]:
    """Top-k classes of the backbone's own classifier; images go through the same decode pool and runtime seam
    as ``extract``, a reduced precision through the precision guard on the first 64 images."""
    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    check_min_agreement(min_agreement, where="predict_images")
    bb = model if isinstance(model, Backbone) else load_backbone(model)
    if not bb.class_names:
        raise UsageError(
            f"The model {bb.name!r} has no class names for its outputs (random or headless weights); "
            "train a head with 'deepfeat train' and predict with the bundle instead."
        )
    policy = policy or DecodePolicy()
    named, errors = expand_with_errors(inputs)
    infos = describe_layers(bb)
    specs = layer_specs(bb, OUTPUT, "none", infos)
    choice = resolve_runtime(runtime, device, precision)
    if choice.precision != "fp32":  # the precision guard, on the first images of this call
        sample = decode_pixels(
            [loc for _, loc in named[:GUARD_IMAGES]],
            preprocess=bb.preprocess,
            policy=policy,
            workers=1 if workers is None else workers,
        )
        runtime, precision, _ = guard_backbone(
            bb,
            specs,
            infos,
            sample,
            runtime=choice.runtime,
            precision=choice.precision,
            auto=precision == "auto",
            device=device,
            min_agreement=min_agreement,
            batch_size=batch_size,
        )
    computer = build_runtime(bb, specs, infos, runtime=runtime, device=device, precision=precision)
    results = _top_k(
        computer,
        named,
        bb.class_names,
        lambda f: softmax(f[OUTPUT]),
        top_k,
        "probability",
        preprocess=bb.preprocess,
        policy=policy,
        batch_size=batch_size,
        workers=workers,
    )
    return _in_order(results, len(named), errors, bb.name)


def classify_images(
    model: str | Backbone,
    inputs: Sequence[str | os.PathLike],
    top_k: int = 5,
    batch_size: int = 16,
    policy: DecodePolicy | None = None,
    *,
    runtime: str = "auto",
    precision: str = "auto",
    device: str = "cpu",
    workers: int | None = None,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
) -> list[Prediction]:
    """Top-k classes of a backbone's own classifier: :func:`predict_images` with a backbone, kept under
    its earlier name (new code calls ``predict_images``)."""
    return predict_images(
        model,
        inputs,
        top_k,
        batch_size,
        policy=policy,
        runtime=runtime,
        precision=precision,
        device=device,
        workers=workers,
        min_agreement=min_agreement,
    )


def _computes_index_layer(b: Bundle, index: Any, computer: Any) -> bool:
    """Whether the bundle's forward pass already computes the index's layer exactly as its store did
    (same weights, preprocessing, layer and pooling, dtype, runtime and precision): then ``--neighbors``
    reuses those features instead of embedding the images a second time."""
    meta = index.doc.get("store_metadata") or {}
    spec = next((s for s in b.compute_layers if s.name == index.layer), None)
    stored = next((d for d in meta.get("layers") or [] if d.get("name") == index.layer), None)
    return bool(
        spec is not None
        and stored is not None
        and spec.pool == stored.get("pool")
        and spec.dims == stored.get("dims")
        and not meta.get("fne")
        and (meta.get("model") or {}).get("weights_sha256") == b.backbone_info.get("weights_sha256")
        and meta.get("preprocess") == b.preprocess.to_dict()
        and str(meta.get("dtype")) == b.compute_dtype
        and _same_runtime(computer, meta.get("runtime"))
    )


def _same_runtime(computer: Any, recorded: Any) -> bool:
    try:
        here = computer.describe()
    except Exception:  # noqa: BLE001 - a runtime that cannot describe itself: embed again to be safe
        return False
    return isinstance(recorded, dict) and (here.get("runtime"), here.get("precision")) == (
        recorded.get("runtime"),
        recorded.get("precision"),
    )


def check_predictions_out(path: str | os.PathLike) -> str:
    """Up front: ``path`` ends in .csv, .json or .html and its folder can be written (else an error before any work)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".json", ".html"):
        raise UsageError(f"The 'out' parameter of predict must end in .csv, .json or .html; got {path!r} instead.")
    check_writable(path, "predict's output file")
    return ext


def write_predictions(preds: Sequence[Prediction], path: str | os.PathLike) -> str:
    """Write predictions as CSV (``.csv``: path, label_1, score_1, ..., error), JSON (``.json``) or an
    HTML gallery (``.html``: thumbnails with their top-k, one self-contained page).

    ``preds``: :class:`~deepfeat.prediction.Prediction` rows, as :func:`predict_images` returns them. The file is
    replaced atomically: a failed write (disk full) leaves neither a partial file nor a temporary one.
    """
    path = os.fspath(path)
    ext = check_predictions_out(path)
    if ext == ".html":
        return write_gallery(preds, path)
    rows = []
    for p in preds:
        row = {
            "path": p.path,
            "labels": list(p.labels),
            "scores": [float(s) for s in p.scores],
            "score_kind": p.score_kind,
            "error": p.error,
        }
        if p.neighbors is not None:
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
        w.writerow(
            [
                "path",
                *[c for i in range(1, k + 1) for c in (f"label_{i}", f"score_{i}")],
                *(near_cols if near else []),
                "error",
            ]
        )
        for r in rows:
            cells: list[Any] = []
            for i in range(k):
                if i < len(r["labels"]):
                    cells += [r["labels"][i], f"{r['scores'][i]:.6g}"]
                else:
                    cells += ["", ""]
            if near:
                n0 = (r.get("neighbors") or [None])[0]
                cells += (
                    [f"{n0['similarity']:.6g}", n0["label"] or "", n0["split"] or "", n0["path"] or ""]
                    if n0
                    else ["", "", "", ""]
                )
                far = r.get("far_from_training")
                cells.append("" if far is None else str(bool(far)).lower())
            w.writerow([r["path"], *cells, r["error"] or ""])
        text = buf.getvalue()
    with environment_errors(f"writing {path}"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))
    return path


def prediction_dicts(preds: Sequence[Prediction]) -> list[dict[str, Any]]:
    """Predictions as plain dicts (for JSON)."""
    return [asdict(p) for p in preds]


def predict_exported(
    model: str | os.PathLike | ExportedClassifier,
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    top_k: int = 3,
    batch_size: int = 32,
    *,
    runtime: str = "auto",
    precision: str = "auto",
    workers: int | None = None,
    policy: Any = None,
) -> list[Prediction]:
    """Top-k predictions of an exported classifier (``.onnx`` / OpenVINO ``.xml``) for images, in input order.

    Images are decoded and resized by deepfeat's decode pool with the preprocessing recorded in
    the file, exactly as ``predict`` does for the bundle; the result is a list of
    :class:`~deepfeat.prediction.Prediction` (errors as predictions, never exceptions).

    Example:
        >>> predict_exported("clf.onnx", ["images/"], top_k=1)[0].label    # doctest: +SKIP
        'sneaker'
    """
    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    clf = model if isinstance(model, ExportedClassifier) else ExportedClassifier(model, runtime, precision)
    named, errors = expand_with_errors(inputs)
    results = _top_k(
        clf,
        named,
        clf.classes,
        lambda f: f[OUTPUT_NAME],
        top_k,
        clf.score_kind,
        preprocess=clf.preprocess,
        policy=policy or DecodePolicy.from_dict(clf.decode_policy),
        batch_size=batch_size,
        workers=workers,
    )
    return _in_order(results, len(named), errors, clf.path)

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
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .devices import resolve_device
from . import progress
from .bundle import Bundle, load_bundle
from .errors import UsageError
from .params import check_int
from .classify import expand_inputs
from .data.decode import DecodePolicy
from .embed import embed_files
from .models.layers import describe_layers
from .runtimes import build_runtime, prefer_recorded
from .reports.gallery import write_gallery
from .shipping import OUTPUT_NAME, ExportedClassifier, is_exported_model
from .store.fsutil import atomic_write_bytes, check_writable, environment_errors

log = logging.getLogger(__name__)

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
    """

    if not isinstance(bundle, Bundle) and is_exported_model(bundle):
        if device not in ("cpu", "auto"):
            log.warning("an exported model runs on the CPU here; device=%r applies to bundles", device)
        return predict_exported(bundle, inputs, top_k, batch_size, runtime=runtime, precision=precision,
                                workers=workers, policy=policy)
    check_int(top_k, "top_k", minimum=1, where="predict_images")
    check_int(batch_size, "batch_size", minimum=1, where="predict_images")
    b = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    named, errors = expand_with_errors(inputs)
    paths = [name for name, _ in named]
    device = resolve_device(device)
    if policy is None:
        policy = DecodePolicy.from_dict(b.metadata.get("decode_policy"))
    computer = bundle_runtime(b, weights=weights, device=device, runtime=runtime, precision=precision)
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
    preds = [results[i] for i in range(len(paths))] + errors
    n_bad = sum(p.error is not None for p in preds)
    log.info("predict: %d images, %d could not be classified", len(preds), n_bad)
    return preds


def bundle_runtime(b: Bundle, *, weights: str | os.PathLike | None = None, device: str = "cpu",
                   runtime: str = "auto", precision: str = "auto") -> Any:
    """The :class:`~deepfeat.runtimes.Runtime` that computes a bundle's features.

    ``auto`` means the runtime and precision recorded in the bundle when they run here
    (else the fastest available, logged), so predictions match the store it was trained on.
    """

    recorded = b.metadata.get("runtime")
    rec_rt = recorded.get("runtime") if isinstance(recorded, dict) else "torch"  # bundles before runtimes: torch
    runtime, precision = prefer_recorded(runtime, precision, device, rec_rt, str(b.metadata.get("precision", "fp32")),
                                         what=f"the bundle {b.path!r}")
    bb = b.load_backbone(weights)
    return build_runtime(bb, b.compute_layers, describe_layers(bb), runtime=runtime, device=device,
                         precision=precision, dtype=b.compute_dtype)


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
        rows.append({"path": p.path, "labels": list(p.labels), "scores": [float(s) for s in scores],
                     "score_kind": getattr(p, "score_kind", "probability"), "error": p.error})
    if ext == ".json":
        text = json.dumps(rows, indent=1)
    else:
        buf = io.StringIO(newline="")
        k = max((len(r["labels"]) for r in rows), default=0)
        w = csv.writer(buf)
        w.writerow(["path", *[c for i in range(1, k + 1) for c in (f"label_{i}", f"score_{i}")], "error"])
        for r in rows:
            cells: list[Any] = []
            for i in range(k):
                if i < len(r["labels"]):
                    cells += [r["labels"][i], f"{r['scores'][i]:.6g}"]
                else:
                    cells += ["", ""]
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
    kind = clf.score_kind
    k = min(int(top_k), len(clf.classes))
    results: dict[int, BundlePrediction] = {}
    for batch in progress.track(embed_files(clf, [loc for _, loc in named], preprocess=clf.preprocess,
                                            policy=policy or DecodePolicy.from_dict(clf.decode_policy),
                                            batch_size=batch_size, workers=workers),
                                "predict", total=len(paths), unit="img", size=lambda e: len(e.indices) + len(e.failed)):
        for i, reason, message in batch.failed:
            results[i] = BundlePrediction(paths[i], error=f"{reason}: {message}", score_kind=kind)
        if not batch.indices:
            continue
        S = batch.features[OUTPUT_NAME]
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
        for row, i in enumerate(batch.indices):
            if not np.all(np.isfinite(S[row])):
                results[i] = BundlePrediction(paths[i], error="nonfinite_features: the model produced NaN/Inf "
                                              "for this input", score_kind=kind)
                continue
            idx = order[row]
            results[i] = BundlePrediction(paths[i], [clf.classes[j] for j in idx], [float(S[row, j]) for j in idx],
                                          score_kind=kind)
    preds = [results[i] for i in range(len(paths))] + errors
    log.info("predict: %d images with %s, %d could not be classified", len(preds), clf.path,
             sum(p.error is not None for p in preds))
    return preds

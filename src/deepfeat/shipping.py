"""Ship a trained classifier: a bundle (or a model directory) as one ONNX or OpenVINO graph, and run one.

:func:`export_model` builds one torch module -- uint8 ``N x H x W x 3`` RGB pixels (already resized
and centre-cropped) -> class scores ``N x C`` -- out of everything :func:`deepfeat.predict.predict_images`
does after decoding: normalisation, the backbone up to its last tap, pooling, concatenation in the
bundle's layer order, the feature dtype's rounding (float16 stores), the scaler and the head
(logistic: softmax or sigmoid; linear SVM: decision values, as ``predict`` reports them; MLP:
softmax), and exports it with a dynamic batch dimension. A model directory from ``train-cnn`` /
``finetune`` exports its own classifier with a softmax, as ``predict DIR`` computes it.

The preprocessing that stays outside the graph (decode, resize the shorter side to
``resize_size``, centre crop to ``input_size``), the class names and the provenance travel in the
file: ONNX ``metadata_props`` (keys ``deepfeat.*``), OpenVINO ``rt_info`` (``deepfeat/*``); see
:data:`METADATA_KEYS` and docs/EXPORT.md. :func:`predict_exported` runs such a file over images
through deepfeat's own decode pool (``deepfeat predict clf.onnx images/``).

Example:
    >>> r = export_model("model.dfm", "clf.onnx")                      # doctest: +SKIP
    >>> r.path, r.classes[:2], r.max_abs_diff < 1e-4                   # doctest: +SKIP
    ('clf.onnx', ['ankle_boot', 'bag'], True)
    >>> preds = predict_exported("clf.onnx", ["new_images/"], top_k=3)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._version import __version__
from .errors import BundleError, UsageError
from .interrupts import import_held
from .params import check_choice
from .store.fsutil import environment_errors, sha256_file
from .units import format_size

log = logging.getLogger(__name__)

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "fp16")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}
INPUT_NAME = "pixels"
OUTPUT_NAME = "scores"
FORMAT_NAME = "deepfeat-classifier"
FORMAT_VERSION = 1
#: ONNX metadata keys start with this; OpenVINO keeps the same names under rt_info ``deepfeat/<name>``
META_PREFIX = "deepfeat."
OPSET = 17
#: what each metadata entry holds (all values are strings; JSON where noted)
METADATA_KEYS: dict[str, str] = {
    "format": f"{FORMAT_NAME!r}",
    "format_version": "integer, currently 1",
    "classes": "JSON list of class names, in the order of the output's columns",
    "score_kind": "'probability' (softmax/sigmoid: logreg, mlp, model directories) or 'decision' (linear SVM "
    "decision values)",
    "input": "input name, dtype and layout: 'pixels uint8 NHWC RGB'",
    "output": "output name: 'scores' (N x C float32)",
    "input_size": "JSON [height, width] of the input (after the crop)",
    "resize_size": "integer: the shorter image side is resized to this before the centre crop",
    "crop_pct": "float: input_size / resize_size (timm's crop_pct)",
    "interpolation": "resize filter: bilinear | bicubic | nearest | lanczos | box | hamming (Pillow's names)",
    "jpeg_draft_size": "integer: deepfeat decodes a JPEG at reduced DCT scale keeping both sides >= this "
    "(Pillow's Image.draft(None, (n, n))); 0: full decode",
    "mean": "JSON [r, g, b] normalisation mean (applied inside the graph)",
    "std": "JSON [r, g, b] normalisation std (applied inside the graph)",
    "preprocess": "JSON: deepfeat's full Preprocess record (the keys above plus jpeg_draft and resizer: torch | "
    "pillow, absent = pillow)",
    "backbone": "backbone name as deepfeat loads it",
    "backbone_sha256": "sha256 of the backbone weights file",
    "layers": "JSON list of {name, pool, dims}: the tapped layers, concatenated in this order",
    "feature_dtype": "float32 | float16: features are rounded to this before the scaler (as in the store)",
    "head": "logreg | svm | mlp | model (a train-cnn/finetune model's own classifier)",
    "precision": "fp32 | fp16 (fp16: weights stored as float16, computed in float32 unless the runtime chooses otherwise)",
    "source": "file name of the bundle or model directory it was exported from",
    "source_sha256": "sha256 of the bundle file (of model.safetensors for a model directory)",
    "decode_policy": "JSON: deepfeat's decode policy of the bundle (alpha background, limits), or null",
    "deepfeat_version": "the deepfeat version that exported it",
    "created": "ISO 8601 time of the export",
}


@dataclass
class ExportResult:
    """What :func:`export_model` wrote."""

    path: str
    format: str
    precision: str
    classes: list[str]
    head: str
    input_size: tuple[int, int]
    #: largest |exported - torch| over the check batch of random pixels (probabilities or decision values)
    max_abs_diff: float
    bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    #: extra files written next to ``path`` (the OpenVINO ``.bin``)
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        h, w = self.input_size

        return (
            f"exported {self.head} classifier ({len(self.classes)} classes, {h}x{w} uint8 NHWC in, "
            f"{OUTPUT_NAME} out) as {self.format} {self.precision} to {self.path} "
            f"({format_size(self.bytes)}; max |diff| vs torch on random pixels {self.max_abs_diff:.1e})"
        )


# ---------------------------------------------------------------------------------------------- the graph
def _head_module(kind: str, head: Any) -> Any:
    """The head's inference as torch ops: features (scaled, float32) -> N x C scores, as predict computes them."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Linear(nn.Module):
        def __init__(self, coef: np.ndarray, intercept: np.ndarray | None, mode: str) -> None:
            super().__init__()
            self.register_buffer("weight", torch.from_numpy(np.ascontiguousarray(coef, dtype=np.float32)))
            self.register_buffer(
                "bias",
                torch.from_numpy(
                    np.ascontiguousarray(intercept if intercept is not None else np.zeros(coef.shape[0]), dtype=np.float32)
                ),
            )
            self.mode = mode

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = F.linear(x, self.weight, self.bias)
            if self.mode == "svm":  # decision values; two classes: [-d, d] (Bundle.scores)
                return torch.cat([-z, z], dim=1) if z.shape[1] == 1 else z
            if z.shape[1] == 1:  # binary logistic: sigmoid, columns [1 - p, p]
                p = torch.sigmoid(z)
                return torch.cat([1.0 - p, p], dim=1)
            return torch.softmax(z, dim=1)

    class MLP(nn.Module):
        def __init__(self, weights: Sequence[np.ndarray], biases: Sequence[np.ndarray], activation: str) -> None:
            super().__init__()
            self.layers = nn.ModuleList()
            for w, b in zip(weights, biases):
                lin = nn.Linear(w.shape[1], w.shape[0])
                with torch.no_grad():
                    lin.weight.copy_(torch.from_numpy(np.asarray(w, dtype=np.float32)))
                    lin.bias.copy_(torch.from_numpy(np.asarray(b, dtype=np.float32)))
                self.layers.append(lin)
            self.act = {"relu": torch.relu, "tanh": torch.tanh, "gelu": F.gelu}[activation]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for i, lin in enumerate(self.layers):
                x = lin(x)
                if i < len(self.layers) - 1:
                    x = self.act(x)
            return torch.softmax(x, dim=1)

    if kind in ("logreg", "svm"):
        intercept = head.intercept_ if getattr(head, "fit_intercept", True) else None
        return Linear(head.coef_, intercept, kind)
    if kind == "mlp":
        return MLP([w.T for w in head.coefs_], head.intercepts_, str(head.activation))
    raise UsageError(f"The head kind {kind!r} cannot be exported (known: logreg, svm, mlp).")


def _classifier_graph(
    taps: Any, *, mean: np.ndarray | None, scale: np.ndarray | None, head: Any, feature_dtype: str, softmax: bool = False
) -> Any:
    """taps (a TapGraph) -> concatenation -> dtype rounding -> scaler -> head (or a softmax)."""
    import torch
    from torch import nn

    fmax = float(np.finfo(np.float16).max)

    class ClassifierGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.taps = taps
            self.head = head
            self.round16 = feature_dtype == "float16"
            self.softmax = softmax
            if mean is not None:
                self.register_buffer("scaler_mean", torch.from_numpy(np.asarray(mean, dtype=np.float32)))
                self.register_buffer("scaler_scale", torch.from_numpy(np.asarray(scale, dtype=np.float32)))
            self.scaled = mean is not None

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            feats = self.taps(pixels)
            x = (
                torch.cat([f.reshape(f.shape[0], -1) for f in feats], dim=1)
                if len(feats) > 1
                else feats[0].reshape(feats[0].shape[0], -1)
            )
            if self.round16:  # the store held float16 features: the head saw them rounded
                x = torch.clamp(x, -fmax, fmax).to(torch.float16).to(torch.float32)
            if self.scaled:
                x = (x - self.scaler_mean) / self.scaler_scale
            if self.softmax:
                return torch.softmax(x, dim=1)
            return self.head(x)

    return ClassifierGraph().eval()


@dataclass
class _Source:
    """What to export: the torch module and the metadata, from a bundle or a model directory."""

    module: Any
    backbone: Any
    classes: list[str]
    head: str
    score_kind: str
    layers: list[dict[str, Any]]
    feature_dtype: str
    path: str
    sha256: str
    decode_policy: dict[str, Any] | None = None


def _load_source(model: str | os.PathLike, weights: str | os.PathLike | None = None) -> _Source:
    """A bundle (.dfm) or a model directory as a :class:`_Source`; refuses what cannot be exported."""
    import torch

    from .bundle import load_bundle
    from .models.layers import OUTPUT, describe_layers
    from .models.trained import MODEL_FILE, is_model_dir, load_trained_model
    from .runtimes import layer_specs
    from .runtimes.export import TapGraph

    path = os.fspath(model)
    if os.path.isdir(path):
        if weights is not None:
            raise UsageError(
                "The 'weights' parameter of export_model applies to bundles; a model directory holds its own weights."
            )
        if not is_model_dir(path):
            raise UsageError(
                f"The directory {path!r} is neither a bundle nor a model directory from 'deepfeat "
                "train-cnn' / 'deepfeat finetune' (no config.json + model.safetensors)."
            )
        bb = load_trained_model(path)
        infos = describe_layers(bb)
        specs = layer_specs(bb, OUTPUT, "none", infos)
        taps = TapGraph(bb, specs, infos).eval()
        module = _classifier_graph(taps, mean=None, scale=None, head=None, feature_dtype="float32", softmax=True)
        return _Source(
            module,
            bb,
            list(bb.class_names or []),
            "model",
            "probability",
            [{"name": s.name, "pool": s.pool, "dims": s.dims} for s in specs],
            "float32",
            path,
            sha256_file(os.path.join(path, MODEL_FILE)),
        )
    b = load_bundle(path)
    if b.fne is not None:
        raise UsageError(
            f"The bundle {path!r} was trained on a full-network embedding store; exporting its "
            "standardise-and-ternarise step is not supported yet. Train on a plain store to export."
        )
    bb = b.load_backbone(weights)
    if isinstance(bb.model, torch.jit.ScriptModule):
        raise UsageError(
            f"The bundle {path!r} uses the TorchScript backbone {bb.name!r}, which cannot be exported: "
            "a TorchScript module cannot be re-traced with taps into ONNX or OpenVINO. Export from a "
            "bundle whose backbone is a Python model (bundled, timm, torchvision, hf-hub, factory)."
        )
    infos = describe_layers(bb)
    taps = TapGraph(bb, b.compute_layers, infos).eval()
    head = _head_module(b.head_kind, b.head)
    module = _classifier_graph(taps, mean=b.scaler.mean_, scale=b.scaler.scale_, head=head, feature_dtype=b.compute_dtype)
    return _Source(
        module,
        bb,
        list(b.classes),
        b.head_kind,
        "probability" if b.probabilistic else "decision",
        [{"name": s.name, "pool": s.pool, "dims": s.dims} for s in b.layers],
        b.compute_dtype,
        path,
        sha256_file(path),
        b.metadata.get("decode_policy"),
    )


def _metadata(src: _Source, precision: str) -> dict[str, str]:
    """The ``deepfeat.*`` metadata (strings) of an export."""
    pre = src.backbone.preprocess
    values: dict[str, Any] = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": src.classes,
        "score_kind": src.score_kind,
        "input": f"{INPUT_NAME} uint8 NHWC RGB",
        "output": OUTPUT_NAME,
        "input_size": list(pre.input_size),
        "resize_size": pre.resize_size,
        "crop_pct": pre.crop_pct,
        "interpolation": pre.interpolation,
        "jpeg_draft_size": pre.draft_size or 0,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "preprocess": pre.to_dict(),
        "backbone": str(src.backbone.name),
        "backbone_sha256": str(src.backbone.weights_sha256 or ""),
        "layers": src.layers,
        "feature_dtype": src.feature_dtype,
        "head": src.head,
        "precision": precision,
        "source": os.path.basename(os.path.normpath(src.path)),
        "source_sha256": src.sha256,
        "decode_policy": src.decode_policy,
        "deepfeat_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    assert set(values) == set(METADATA_KEYS)
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


# ---------------------------------------------------------------------------------------------- writers
#: initializers of the classifier graph that stay float32 in an fp16 export (see :func:`_fp16_weights`)
_FP32_INITIALIZERS = ("scaler_", "head.", "taps.scale", "taps.shift")


def _fp16_weights(model: Any) -> Any:
    """Store the ONNX graph's float32 initializers as float16, each followed by a Cast back to float32.

    Weight-only compression (the file halves; the runtime computes in float32), the same as
    OpenVINO's ``compress_to_fp16``. Only the backbone's weights are compressed: the normalisation,
    the scaler and the head stay float32 (the scaler divides by per-feature deviations that can be
    small, so rounding its mean would be amplified), as do initializers of fewer than 16 values.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    casts = []
    keep = []
    for init in graph.initializer:
        if (
            init.data_type != onnx.TensorProto.FLOAT
            or int(np.prod(init.dims)) < 16
            or init.name.startswith(_FP32_INITIALIZERS)
        ):
            keep.append(init)
            continue
        arr = numpy_helper.to_array(init)
        half = np.clip(arr, -65504, 65504).astype(np.float16)
        name16 = f"{init.name}__fp16"
        keep.append(numpy_helper.from_array(half, name16))
        casts.append(helper.make_node("Cast", [name16], [init.name], to=onnx.TensorProto.FLOAT, name=f"{init.name}__cast"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return model


def _write_onnx(module: Any, example: Any, tmp: str, meta: Mapping[str, str], precision: str) -> None:
    import warnings

    import onnx
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about the taps' early stop are not the user's
        torch.onnx.export(
            module,
            (example,),
            tmp,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load(tmp)
    if precision == "fp16":
        model = _fp16_weights(model)
    model.producer_name = "deepfeat"
    model.producer_version = __version__
    model.doc_string = (
        f"deepfeat classifier: {INPUT_NAME} (uint8 N x H x W x 3 RGB, resized and centre-cropped) "
        f"-> {OUTPUT_NAME} (N x C). Keys deepfeat.* in metadata_props."
    )
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = META_PREFIX + k, v
    onnx.checker.check_model(model)
    onnx.save(model, tmp)


def _write_openvino(
    module: Any, example: Any, tmp_xml: str, meta: Mapping[str, str], precision: str, input_size: tuple[int, int]
) -> None:
    import warnings

    import torch

    from .runtimes.openvino_runtime import _openvino

    ov = _openvino()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = ov.convert_model(module, example_input=example)
    h, w = input_size
    model.reshape([-1, h, w, 3])
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    for k, v in meta.items():
        model.set_rt_info(v, ["deepfeat", k])
    ov.save_model(model, tmp_xml, compress_to_fp16=precision == "fp16")


def _check_out(out: str, fmt: str, overwrite: bool) -> str:
    suffix = SUFFIXES[fmt]
    ext = os.path.splitext(out)[1]
    if not ext:
        out = out + suffix
    elif ext.lower() != suffix:
        raise UsageError(
            f"The 'out' parameter of export_model must end in {suffix} for format {fmt!r}; got {out!r} instead."
        )
    targets = [out] + ([os.path.splitext(out)[0] + ".bin"] if fmt == "openvino" else [])
    if os.path.isdir(out):
        raise UsageError(f"The 'out' parameter of export_model names a folder ({out!r}); give a file path.")
    existing = [t for t in targets if os.path.exists(t)]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]!r} already exists; pass overwrite=True to replace it.")
    return out


def export_model(
    model: str | os.PathLike,
    out: str | os.PathLike,
    format: str = "onnx",
    precision: str = "fp32",
    overwrite: bool = False,
    weights: str | os.PathLike | None = None,
) -> ExportResult:
    """Export a bundle (``.dfm``) or a ``train-cnn``/``finetune`` model directory as one classifier graph.

    The graph takes ``pixels`` (uint8 ``N x H x W x 3`` RGB at the recorded input size, already
    resized and centre-cropped) and returns ``scores`` (``N x C`` float32: probabilities, or a linear
    SVM's decision values), with a dynamic batch dimension; the class names and the preprocessing
    are in the file's metadata (:data:`METADATA_KEYS`). The export is checked against the torch
    module on one batch and written atomically.

    Args:
        model: a bundle from ``deepfeat train`` or a model directory.
        out: the file to write (``.onnx``; ``.xml`` for OpenVINO, with its ``.bin`` beside it); the
            suffix is added when missing.
        format: ``onnx`` or ``openvino``.
        precision: ``fp32``, or ``fp16`` (weights stored as float16: half the file).
        overwrite: replace an existing ``out`` (otherwise refused).
        weights: the backbone weights file when it is not at the path the bundle recorded (its
            sha256 must match, as for ``predict``).

    Example:
        >>> export_model("model.dfm", "clf.onnx").summary()     # doctest: +SKIP
        'exported logreg classifier (10 classes, 224x224 uint8 NHWC in, scores out) as onnx fp32 to clf.onnx ...'
    """
    import torch

    from .runtimes.export import example_pixels

    check_choice(format, "format", FORMATS, where="export_model")
    check_choice(precision, "precision", PRECISIONS, where="export_model")
    out = _check_out(os.fspath(out), format, overwrite)
    src = _load_source(model, weights)
    if len(src.classes) < 2:
        raise UsageError(f"The model {os.fspath(model)!r} has no class names for its outputs; nothing to export.")
    if format == "onnx" and (_missing("onnx") or _missing("onnxruntime")):  # onnxruntime runs the check
        raise UsageError("Exporting to ONNX needs the onnx and onnxruntime packages: pip install 'deepfeat[onnx]'.")
    meta = _metadata(src, precision)
    example = example_pixels(src.backbone)
    with torch.no_grad():
        expected = src.module(example).numpy()
    folder = os.path.dirname(os.path.abspath(out))
    tag = f".tmp-{os.getpid()}-{os.urandom(4).hex()}"
    stem = os.path.splitext(os.path.basename(out))[0]
    tmp = os.path.join(folder, f"{tag}-{stem}{SUFFIXES[format]}")
    tmp_files = [tmp] + ([os.path.splitext(tmp)[0] + ".bin"] if format == "openvino" else [])
    with environment_errors(f"Writing the exported model {out}"):
        os.makedirs(folder, exist_ok=True)
        try:
            try:
                if format == "onnx":
                    _write_onnx(src.module, example, tmp, meta, precision)
                else:
                    _write_openvino(src.module, example, tmp, meta, precision, src.backbone.preprocess.input_size)
            except (OSError, UsageError):
                raise
            except Exception as exc:  # noqa: BLE001 - an exporter's failure names the model, not a traceback
                first = str(exc).splitlines()[0] if str(exc) else ""
                raise UsageError(
                    f"The model {os.fspath(model)!r} could not be exported to {format}: {type(exc).__name__}: {first}"
                ) from exc
            got = _run_file(tmp, example.numpy())
            diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
            # a broken export is far off; float16 features can flip one rounding step between runtimes
            # (amplified by the scaler), and fp16 weights are lossy by choice: reported, not refused
            scale = max(1.0, float(np.max(np.abs(expected))))
            tol = (2e-2 if src.feature_dtype == "float16" else 1e-3) * scale if precision == "fp32" else float("inf")
            if not np.all(np.isfinite(got)) or not diff <= tol:
                raise UsageError(
                    f"The exported {format} graph disagrees with the torch model by {diff:.3g} "
                    f"(tolerance {tol:g}); not writing {out!r}."
                )
            for t in tmp_files:
                with open(t, "rb+") as f:
                    os.fsync(f.fileno())
            if format == "openvino":  # the .bin first: a reader that sees the new .xml finds its weights
                os.replace(tmp_files[1], os.path.splitext(out)[0] + ".bin")
            os.replace(tmp, out)
        except BaseException:
            for t in tmp_files:
                if os.path.exists(t):
                    os.unlink(t)
            raise
    files = [os.path.splitext(out)[0] + ".bin"] if format == "openvino" else []
    size = sum(os.path.getsize(p) for p in [out, *files])
    result = ExportResult(
        out, format, precision, src.classes, src.head, tuple(src.backbone.preprocess.input_size), diff, size, meta, files
    )
    log.info("%s", result.summary())
    return result


def _missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


# ---------------------------------------------------------------------------------------------- running
def is_exported_model(path: str | os.PathLike) -> bool:
    """True for an ``.onnx`` file, or an OpenVINO ``.xml`` whose rt_info holds deepfeat metadata."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        return False
    ext = os.path.splitext(p)[1].lower()
    if ext == ".onnx":
        return True
    if ext == ".xml":  # an OpenVINO IR: <net ...> first, its rt_info (with our metadata) last
        try:
            with open(p, "rb") as f:
                head = f.read(4096)
                f.seek(max(0, os.path.getsize(p) - (1 << 20)))
                tail = f.read()
        except OSError:
            return False
        return b"<net " in head and b"<deepfeat>" in tail
    return False


class ExportedClassifier:
    """An exported classifier file loaded for inference: ``clf(pixels)`` -> ``{"scores": N x C}``.

    ``runtime``: ``auto`` (ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``), ``onnxruntime`` or
    ``openvino`` (which also reads ``.onnx``). ``precision``: ``auto``/``fp32``; OpenVINO also ``bf16``.

    Example:
        >>> clf = ExportedClassifier("clf.onnx")                            # doctest: +SKIP
        >>> clf.classes[:2], clf.preprocess.input_size                      # doctest: +SKIP
        (['ankle_boot', 'bag'], (64, 64))
    """

    def __init__(
        self, path: str | os.PathLike, runtime: str = "auto", precision: str = "auto", threads: int | None = None
    ) -> None:
        from .data.preprocess import Preprocess

        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UsageError(f"The exported model {self.path!r} does not exist.")
        onnx_file = self.path.lower().endswith(".onnx")
        check_choice(runtime, "runtime", ("auto", "onnxruntime", "openvino"), where="predict")
        check_choice(precision, "precision", ("auto", "fp32", "bf16"), where="predict")
        if runtime == "auto":
            runtime = "onnxruntime" if onnx_file else "openvino"
        if runtime == "onnxruntime" and not onnx_file:
            raise UsageError(f"ONNX Runtime cannot read the OpenVINO model {self.path!r}; use runtime='openvino'.")
        if runtime == "onnxruntime" and precision == "bf16":
            raise UsageError(
                "The 'precision' parameter of predict must be auto or fp32 with ONNX Runtime; got 'bf16' instead."
            )
        self.runtime = runtime
        if _missing(runtime):
            raise UsageError(
                f"Running {self.path!r} needs {'ONNX Runtime' if runtime == 'onnxruntime' else 'OpenVINO'}"
                f": pip install {'onnxruntime' if runtime == 'onnxruntime' else 'openvino'}"
                f"{' (or --runtime openvino)' if runtime == 'onnxruntime' else ''}."
            )
        try:
            if runtime == "onnxruntime":
                meta = self._load_onnxruntime(threads)
            else:
                meta = self._load_openvino(precision, threads)
        except (UsageError, BundleError):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or foreign file
            raise BundleError(
                f"The exported model {self.path!r} cannot be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})."
            ) from None
        if meta.get("format") != FORMAT_NAME:
            raise UsageError(
                f"{self.path!r} is not a classifier exported by 'deepfeat export-model' (no {META_PREFIX}format metadata)."
            )
        try:
            self.metadata = meta
            self.classes = [str(c) for c in json.loads(meta["classes"])]
            self.preprocess = Preprocess.from_dict(json.loads(meta["preprocess"]))
            self.score_kind = str(meta.get("score_kind", "probability"))
            self.decode_policy = json.loads(meta.get("decode_policy") or "null")
        except (KeyError, ValueError, TypeError) as exc:
            raise BundleError(f"The exported model {self.path!r} has malformed deepfeat metadata ({exc}).") from None

    def _load_onnxruntime(self, threads: int | None) -> dict[str, str]:

        ort = import_held("onnxruntime")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        self.output = self.session.get_outputs()[0].name
        self.input = self.session.get_inputs()[0].name
        props = self.session.get_modelmeta().custom_metadata_map
        return {k[len(META_PREFIX) :]: v for k, v in props.items() if k.startswith(META_PREFIX)}

    def _load_openvino(self, precision: str, threads: int | None) -> dict[str, str]:
        from .runtimes.openvino_runtime import _openvino

        ov = _openvino()
        core = ov.Core()
        model = core.read_model(self.path)
        meta: dict[str, str] = {}
        if model.has_rt_info(["deepfeat"]):
            for k in METADATA_KEYS:
                if model.has_rt_info(["deepfeat", k]):
                    meta[k] = str(model.get_rt_info(["deepfeat", k]).astype(str))
        elif self.path.lower().endswith(".onnx"):  # OpenVINO reading an exported .onnx: metadata_props
            meta = _onnx_metadata(self.path)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        return meta

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if self.runtime == "onnxruntime":
            scores = self.session.run([self.output], {self.input: pixels})[0]
        else:
            scores = np.array(self.request.infer([pixels])[self.compiled.outputs[0]])
        return {OUTPUT_NAME: np.asarray(scores, dtype=np.float64)}


def _onnx_metadata(path: str) -> dict[str, str]:
    import onnx

    model = onnx.load(path, load_external_data=False)
    return {p.key[len(META_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def _run_file(path: str, pixels: np.ndarray) -> np.ndarray:
    """Scores of a just-written export (for the check against torch), read the way predict reads it."""
    clf = ExportedClassifier.__new__(ExportedClassifier)
    clf.path = path
    if path.lower().endswith(".onnx"):
        clf.runtime = "onnxruntime"
        clf._load_onnxruntime(None)
    else:
        clf.runtime = "openvino"
        clf._load_openvino("fp32", None)
    return clf(pixels)[OUTPUT_NAME]

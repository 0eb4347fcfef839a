"""The model bundle: one portable file that classifies images end to end, with no pickle.

A bundle (``.dfm``) is a `safetensors <https://huggingface.co/docs/safetensors>`_ file:

* tensors: ``scaler.mean`` / ``scaler.scale`` (float64) and the head's weights ``head.<name>``
  (float32): ``head.coef`` / ``head.intercept`` for the linear heads, ``head.layers.<i>.weight`` /
  ``.bias`` for the MLP;
* the header's ``__metadata__`` holds one key, ``deepfeat``, whose value is a JSON document:
  the format name and version, the backbone reference (name, family, weights path and its
  sha256), the preprocessing, the layers with their pooling and dims, the feature dtype, the
  head kind and hyperparameters, the class names, the training configuration, the validation
  metrics and the per-epoch history.

Any safetensors reader (Python, Rust, JS) can open it; nothing in it is executable. Loading the
backbone through :meth:`Bundle.load_backbone` checks the weights' sha256 against the recorded
one and refuses a mismatch.

Example:
    >>> b = load_bundle("model.dfm")                       # doctest: +SKIP
    >>> b.classes[:3], [l.name for l in b.layers]           # doctest: +SKIP
    (['ankle_boot', 'bag', 'coat'], ['pre_logits'])
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._version import __version__
from .analysis.fne import fne_transform
from .bundle_header import (  # noqa: F401 - the bundle API: deepfeat.bundle.is_bundle
    FORMAT_NAME,
    FORMAT_VERSION,
    META_KEY,
    SUFFIX,
    _NotABundle,
    _parse_header,
    is_bundle,
    read_header,
)
from .data.preprocess import Preprocess
from .errors import BundleError, StoreError, UsageError
from .heads import HEADS, StreamingScaler
from .models.hub import expecting_weights
from .models.layers import describe_layers
from .models.registry import RANDOM, load_backbone
from .params import check_choice
from .runtimes import Calibration, build_runtime, prefer_recorded
from .store import trust
from .store.fsutil import as_os_error, environment_errors
from .store.layerspec import LayerSpec

#: A head may allocate at most this many times the parameters its own tensors hold (plus a little).
_HEAD_ALLOCATION_RATIO = 2


@dataclass
class Bundle:
    """A loaded bundle: scaler + head + everything needed to recompute the features."""

    path: str
    metadata: dict[str, Any]
    scaler: StreamingScaler
    head: Any
    classes: list[str]
    layers: list[LayerSpec]
    preprocess: Preprocess
    #: full-network embedding of the source layers (bundles trained on an FNE store): {'mean', 'std'
    #: (float64), 'thresholds', 'source_layers', 'source_dtype'}; None otherwise
    fne: dict[str, Any] | None = None

    @property
    def compute_layers(self) -> list[LayerSpec]:
        """The layers the backbone must compute for raw images (the FNE's source layers if any)."""
        return list(self.fne["source_layers"]) if self.fne else list(self.layers)

    @property
    def compute_dtype(self) -> str:
        """The dtype features are rounded to before the head (the FNE source store's dtype if any)."""
        return str(self.fne.get("source_dtype") or "float32") if self.fne else self.dtype

    @property
    def head_kind(self) -> str:
        return str(self.metadata["head"]["kind"])

    @property
    def backbone_info(self) -> dict[str, Any]:
        return dict(self.metadata["backbone"])

    @property
    def dtype(self) -> str:
        return str(self.metadata.get("dtype", "float32"))

    @property
    def dims(self) -> int:
        return sum(s.dims for s in self.layers)

    @property
    def layer_names(self) -> list[str]:
        return [s.name for s in self.layers]

    @property
    def probabilistic(self) -> bool:
        """Whether :meth:`scores` are probabilities (logreg, mlp) or SVM decision values."""
        return bool(getattr(self.head, "_probabilistic", True))

    def scores(self, X: np.ndarray) -> np.ndarray:
        """Per-class scores (N x n_classes) of raw, unscaled features in the bundle's layer order."""
        Xs = self.scaler.transform(np.asarray(X, dtype=np.float32))
        if self.probabilistic:
            return self.head.predict_proba(Xs)
        d = self.head.decision_function(Xs)
        return np.column_stack([-d, d]) if d.ndim == 1 else d

    def features_of(self, features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Concatenate {layer: rows x dims} in the bundle's layer order as float32.

        A bundle trained on an FNE store also accepts its source layers (raw features of new
        images): they are standardised with the saved statistics and ternarised first.
        """
        if self.fne is not None and not all(s.name in features for s in self.layers):
            raw = np.concatenate([np.asarray(features[s.name], dtype=np.float64) for s in self.fne["source_layers"]], axis=1)
            return fne_transform(raw, self.fne["mean"], self.fne["std"], self.fne["thresholds"]).astype(np.float32)
        return np.concatenate([np.asarray(features[s.name], dtype=np.float32) for s in self.layers], axis=1)

    # ------------------------------------------------------------------ compatibility
    def check_store(self, store: Any) -> None:
        """Raise :class:`UsageError` unless ``store`` holds the features this bundle was trained on."""
        have = {s.name: s for s in store.layers}
        listing = ", ".join(f"{s.name} ({s.pool}, {s.dims} dims)" for s in store.layers) or "none"
        for spec in self.layers:
            got = have.get(spec.name)
            if got is None or got.pool != spec.pool or got.dims != spec.dims:
                raise UsageError(
                    f"The bundle {self.path!r} needs layer {spec.name!r} ({spec.pool}, {spec.dims} dims), but the "
                    f"store {store.path!r} has: {listing}. Extract the store with the same --layers and --pool, "
                    "or train a bundle on this store."
                )
        want = self.backbone_info.get("weights_sha256")
        got_hash = store.metadata.get("model", {}).get("weights_sha256")
        if want and got_hash and want != got_hash:
            raise UsageError(
                f"The store {store.path!r} was extracted with other backbone weights (sha256 {got_hash[:16]}...) "
                f"than the bundle {self.path!r} was trained on (sha256 {want[:16]}...); its features do not fit."
            )
        store_pre = store.metadata.get("preprocess")
        if store_pre and Preprocess.from_dict(store_pre) != self.preprocess:
            raise UsageError(
                f"The store {store.path!r} was extracted with other preprocessing ({store_pre}) than the bundle "
                f"{self.path!r} ({self.preprocess.to_dict()}); its features do not fit."
            )

    def load_backbone(self, weights: str | os.PathLike | None = None) -> Any:
        """Load the recorded backbone with the recorded preprocessing; the weights' sha256 must match.

        ``weights`` overrides where the weights are read from (e.g. the bundle moved to another
        machine); by default the recorded path is used when it exists, else the model's own
        offline lookup (the bundled package, the timm / torch hub cache).
        """
        info = self.backbone_info
        recorded = info.get("weights")
        if weights is None:
            if recorded == RANDOM:
                weights = RANDOM
            elif recorded and os.path.isfile(str(recorded)):
                weights = str(recorded)

        expected = info.get("weights_sha256")
        with expecting_weights(expected if weights is None else None):  # a download must be these weights
            bb = load_backbone(
                str(info["name"]), weights, input_size=tuple(self.preprocess.input_size), crop_pct=self.preprocess.crop_pct
            )
        bb.preprocess = self.preprocess
        if expected and bb.weights_sha256 != expected:
            raise UsageError(
                f"The backbone weights do not match the bundle {self.path!r}: it was trained on {info['name']!r} "
                f"weights with sha256 {expected}, but {bb.weights!r} has sha256 {bb.weights_sha256}. Pass the "
                "original weights file (--weights PATH); features of other weights would be wrong."
            )
        return bb


def bundle_runtime(
    b: Bundle,
    *,
    weights: str | os.PathLike | None = None,
    device: str = "cpu",
    runtime: str = "auto",
    precision: str = "auto",
) -> Any:
    """The :class:`~deepfeat.runtimes.Runtime` that computes a bundle's features.

    ``auto`` means the runtime and precision recorded in the bundle when they run here
    (else the fastest available, logged), so predictions match the store it was trained on.
    """
    recorded = b.metadata.get("runtime")
    rec_rt = recorded.get("runtime") if isinstance(recorded, dict) else "torch"  # bundles before runtimes: torch
    runtime, precision = prefer_recorded(
        runtime, precision, device, rec_rt, str(b.metadata.get("precision", "fp32")), what=f"the bundle {b.path!r}"
    )
    bb = b.load_backbone(weights)
    # int8: the store's calibration, by its digest (the cached export; without it, torch fp32 with a warning)
    cal = recorded.get("calibration") if isinstance(recorded, dict) and precision == "int8" else None
    calibration = (
        Calibration(str(cal["sha256"]), int(cal.get("images", 0)), int(cal.get("wanted", 0)))
        if isinstance(cal, dict) and cal.get("sha256")
        else None
    )
    return build_runtime(
        bb,
        b.compute_layers,
        describe_layers(bb),
        runtime=runtime,
        device=device,
        precision=precision,
        dtype=b.compute_dtype,
        calibration=calibration,
    )


def save_bundle(
    path: str | os.PathLike,
    *,
    backbone: Mapping[str, Any],
    preprocess: Mapping[str, Any],
    layers: Sequence[LayerSpec],
    dtype: str,
    scaler: StreamingScaler,
    head: Any,
    head_kind: str,
    classes: Sequence[str],
    precision: str = "fp32",
    runtime: Mapping[str, Any] | None = None,
    decode_policy: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    validation: Mapping[str, Any] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    fne: Mapping[str, Any] | None = None,
) -> str:
    """Write a bundle atomically (temp file + rename) and return its path.

    ``fne`` (from :func:`deepfeat.analysis.fne.load_fne_stats`) stores the full-network embedding
    (tensors ``fne.mean`` / ``fne.std``) so that the bundle predicts from raw images.
    """
    from safetensors.numpy import save_file

    check_choice(head_kind, "head_kind", HEADS, where="save_bundle")
    path = os.fspath(path)
    tensors: dict[str, np.ndarray] = {
        "scaler.mean": np.ascontiguousarray(scaler.mean_, dtype=np.float64),
        "scaler.scale": np.ascontiguousarray(scaler.scale_, dtype=np.float64),
    }
    for name, arr in head.export_tensors().items():
        tensors[f"head.{name}"] = np.ascontiguousarray(arr)
    if fne is not None:
        tensors["fne.mean"] = np.ascontiguousarray(fne["mean"], dtype=np.float64)
        tensors["fne.std"] = np.ascontiguousarray(fne["std"], dtype=np.float64)
    doc = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "backbone": dict(backbone),
        "preprocess": dict(preprocess),
        "layers": [s.to_dict() for s in layers],
        "dtype": dtype,
        "precision": precision,
        "runtime": dict(runtime) if runtime else {"runtime": "torch", "precision": precision},
        "decode_policy": dict(decode_policy) if decode_policy else None,
        "head": {
            "kind": head_kind,
            "class": type(head).__name__,
            "params": head.hyperparameters(),
            "n_features": int(scaler.mean_.shape[0]),
        },
        "scaler": {"n_samples_seen": int(getattr(scaler, "n_samples_seen_", 0))},
        "classes": [str(c) for c in classes],
        "training": dict(training or {}),
        "validation": dict(validation or {}),
        "history": [dict(h) for h in (history or [])],
        "fne": None
        if fne is None
        else {
            "thresholds": list(fne["thresholds"]),
            "source_dtype": fne.get("source_dtype"),
            "source_layers": [s.to_dict() for s in fne["source_layers"]],
        },
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # the bundle gets the umask's permissions (0644) like every other output: a file created with
    # mode 0o666 shows them; safetensors (and mkstemp) would leave 0600
    tmp = os.path.join(folder, f".tmp-{os.getpid()}-{os.urandom(4).hex()}{SUFFIX}")
    # disk full / file too large: an EnvironmentFault (exit status 4), and no partial bundle anywhere
    with environment_errors(f"Writing the bundle {path}"):
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            mode = os.stat(tmp).st_mode & 0o777
            try:
                save_file(tensors, tmp, metadata={META_KEY: json.dumps(doc, default=_json_default)})
            except Exception as exc:  # safetensors' SafetensorError wraps the OS error: "... (os error 28)"
                err = as_os_error(exc)
                if err is exc:
                    raise
                raise err from exc
            os.chmod(tmp, mode)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    return path


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read a bundle (no backbone is loaded; see :meth:`Bundle.load_backbone`).

    A bundle is untrusted input: its header, metadata (layer keys, class names, counts) and
    tensor shapes are checked before anything is allocated from them (:func:`check_bundle_document`).
    A file that is not a bundle is a :class:`UsageError`; a bundle that is damaged or
    inconsistent is a :class:`~deepfeat.errors.BundleError` naming the bad entry.
    """
    from safetensors import safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"The bundle {path!r} does not exist.")
    try:
        doc = _parse_header(path)
    except _NotABundle as exc:
        if exc.damaged:
            raise BundleError(f"The bundle {path!r} is damaged: {exc}.") from None
        raise UsageError(
            f"{path!r} is not a deepfeat model bundle (a .dfm file written by 'deepfeat train'): {exc}."
        ) from None
    version = doc.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"The bundle {path!r} has a malformed format_version {version!r}.")
    if version > FORMAT_VERSION:
        raise UsageError(
            f"The bundle {path!r} has format version {doc['format_version']}; this deepfeat reads "
            f"up to {FORMAT_VERSION}. Upgrade deepfeat."
        )
    check_bundle_document(doc, path)
    n_features = int(doc["head"]["n_features"])
    try:
        with safe_open(path, framework="np") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            _check_tensor_shapes(doc, shapes, path)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (BundleError, UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types on a damaged file
        raise BundleError(f"The bundle {path!r} is damaged: its tensors cannot be read ({exc}).") from None
    kind = doc["head"]["kind"]
    layers = [LayerSpec.from_dict(d) for d in doc["layers"]]
    scaler = StreamingScaler.from_stats(
        tensors["scaler.mean"], tensors["scaler.scale"], int(doc.get("scaler", {}).get("n_samples_seen", 0) or 0)
    )
    head_tensors = {k[len("head.") :]: v for k, v in tensors.items() if k.startswith("head.")}
    params = dict(doc["head"]["params"])
    if "hidden" in params and isinstance(params["hidden"], list):
        params["hidden"] = tuple(params["hidden"])
    params["device"] = "cpu"  # inference runs on the CPU whatever the training device was
    known = HEADS[kind]().get_params()
    params = {k: v for k, v in params.items() if k in known}
    try:
        head = HEADS[kind].from_tensors(params, head_tensors, doc["classes"], n_features)
    except (UsageError, ValueError, TypeError, KeyError, RuntimeError) as exc:
        raise BundleError(f"The bundle {path!r} is inconsistent: its {kind} head cannot be rebuilt ({exc}).") from None
    fne = None
    if doc.get("fne"):
        fne = {
            "mean": tensors["fne.mean"],
            "std": tensors["fne.std"],
            "thresholds": tuple(doc["fne"]["thresholds"]),
            "source_dtype": doc["fne"].get("source_dtype"),
            "source_layers": [LayerSpec.from_dict(d) for d in doc["fne"]["source_layers"]],
        }
    try:
        preprocess = Preprocess.from_dict(doc["preprocess"])
    except (UsageError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"The bundle {path!r} has malformed preprocessing ({exc}).") from None
    return Bundle(
        path=path,
        metadata=doc,
        scaler=scaler,
        head=head,
        classes=list(doc["classes"]),
        layers=layers,
        preprocess=preprocess,
        fne=fne,
    )


def check_bundle_document(doc: Mapping[str, Any], path: str = "") -> None:
    """Check a bundle's metadata document: types, layer keys, class names, head kind and sizes.

    Class names must be unique strings of 1 to 1000 characters without control characters (a
    name stays one cell of predict's CSV and one line of a report); they are data, never paths.
    Raises :class:`~deepfeat.errors.BundleError` naming the bad entry.
    """
    where = f"The bundle {path!r}"
    try:
        for key, kind in (("head", dict), ("preprocess", dict), ("backbone", dict), ("classes", list)):
            if not isinstance(doc.get(key), kind):
                raise StoreError(
                    f"'{key}' must be a JSON {'object' if kind is dict else 'list'}; got {type(doc.get(key)).__name__}"
                )
        head = doc["head"]
        if head.get("kind") not in HEADS:
            raise StoreError(f"unknown head kind {str(head.get('kind'))[:80]!r}")
        if not isinstance(head.get("params"), dict):
            raise StoreError("head.params must be a JSON object")
        n_features = head.get("n_features")
        if not isinstance(n_features, int) or isinstance(n_features, bool) or n_features < 1:
            raise StoreError(f"head.n_features must be a positive integer; got {str(n_features)[:80]!r}")
        layers = trust.check_layers(doc.get("layers"), "layers")
        dims = sum(int(d["dims"]) for d in layers)
        if n_features != dims:
            raise StoreError(f"{n_features} head inputs for {dims} feature dims of its layers")
        classes = doc["classes"]
        if len(classes) < 2:
            raise StoreError(f"{len(classes)} class name(s); a head needs at least 2")
        for i, c in enumerate(classes):
            trust.check_label(c, f"class name #{i}")
        if len(set(classes)) != len(classes):
            raise StoreError("a class name is listed twice")
        if not isinstance(doc["backbone"].get("name"), str):
            raise StoreError("backbone.name must be a string")
        hidden = head["params"].get("hidden", [])
        if not isinstance(hidden, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and 0 < h <= 1 << 20 for h in hidden
        ):
            raise StoreError(f"head.params.hidden must be a list of positive integers; got {str(hidden)[:80]}")
        fne = doc.get("fne")
        if fne:
            if not isinstance(fne, dict) or not isinstance(fne.get("thresholds"), list):
                raise StoreError("fne must be an object with a list of thresholds")
            trust.check_layers(fne.get("source_layers"), "fne.source_layers")
    except BundleError:
        raise
    except StoreError as exc:
        raise BundleError(f"{where} is inconsistent: {exc}.") from None


def _check_tensor_shapes(doc: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], path: str) -> None:
    """The tensors a bundle's metadata implies exist with the right shapes, before any is read.

    The head is rebuilt from its hyperparameters (hidden sizes) and class count: they may not
    imply more than :data:`_HEAD_ALLOCATION_RATIO` times the parameters its tensors hold.
    """
    n_features = int(doc["head"]["n_features"])
    expected = {"scaler.mean": (n_features,), "scaler.scale": (n_features,)}
    if doc.get("fne"):
        n_source = sum(int(d["dims"]) for d in doc["fne"]["source_layers"])
        expected.update({"fne.mean": (n_source,), "fne.std": (n_source,)})
    for name, shape in expected.items():
        if name not in shapes:
            raise BundleError(f"The bundle {path!r} lacks the tensor {name!r}.")
        if shapes[name] != shape:
            raise BundleError(
                f"The bundle {path!r} is inconsistent: tensor {name!r} has shape {list(shapes[name])}, "
                f"its metadata implies {list(shape)}."
            )
    held = sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith("head."))
    n_out = len(doc["classes"])
    chain = [n_features, *doc["head"]["params"].get("hidden", []), n_out]
    implied = sum(a * b + b for a, b in zip(chain[:-1], chain[1:]))
    if implied > _HEAD_ALLOCATION_RATIO * held + 1024:
        raise BundleError(
            f"The bundle {path!r} is inconsistent: its head metadata implies {implied:,} parameters "
            f"but its tensors hold {held:,}; refusing to allocate it."
        )


def _versions() -> dict[str, str]:
    import sklearn
    import torch

    return {"deepfeat": __version__, "torch": torch.__version__, "sklearn": sklearn.__version__, "numpy": np.__version__}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)

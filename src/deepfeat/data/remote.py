"""Object storage and HTTP(S) URLs (``s3://``, ``gs://``, ``az://``, ``hf://``, ``http(s)://``) through fsspec.

The one place that talks to a remote store: URL detection, the fsspec filesystem of a URL (its
credentials and endpoint come from the ecosystem's standard environment: for S3
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
``AWS_PROFILE``; for GCS ``GOOGLE_APPLICATION_CREDENTIALS``; for Azure ``AZURE_STORAGE_*``),
listing and globbing, ranged reads that coalesce adjacent byte ranges into one request, and
retries of transient errors (5xx, throttling, timeouts, dropped connections) with exponential
backoff and a cap.

Errors come out as :class:`RemoteError` with a ``reason`` the callers turn into ledger entries:
``missing`` (no such object), ``denied`` (credentials), ``unavailable`` (still failing after the
retries). An endpoint that does not answer at all is an :class:`EndpointUnreachable` (an
:class:`~deepfeat.errors.EnvironmentFault`) within seconds, naming the URL and the setting to check:
before its first request to an endpoint a process opens one TCP connection to it (5 s).

fsspec and the backends (``s3fs``, ``gcsfs``, ``adlfs``) are imported on first use; a missing backend
is a :class:`~deepfeat.errors.UsageError` with its ``pip install`` line.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import posixpath
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..errors import EnvironmentFault, UsageError

log = logging.getLogger(__name__)

__all__ = [
    "SCHEMES",
    "RemoteError",
    "EndpointUnreachable",
    "is_url",
    "filesystem",
    "call",
    "expand",
    "info",
    "stamp",
    "open_object",
    "read_ranges",
    "read_object",
    "common_root",
    "relpath",
    "join",
]

T = TypeVar("T")

#: scheme -> (fsspec protocol, the module that implements it, the pip line that installs it)
SCHEMES: dict[str, tuple[str, str, str]] = {
    "s3": ("s3", "s3fs", 'pip install "deepfeat[s3]"'),
    "gs": ("gs", "gcsfs", 'pip install "deepfeat[gcs]"'),
    "gcs": ("gs", "gcsfs", 'pip install "deepfeat[gcs]"'),
    "az": ("az", "adlfs", 'pip install "deepfeat[azure]"'),
    "abfs": ("abfs", "adlfs", 'pip install "deepfeat[azure]"'),
    "abfss": ("abfs", "adlfs", 'pip install "deepfeat[azure]"'),
    "hf": ("hf", "huggingface_hub", "pip install huggingface_hub"),
    "http": ("http", "aiohttp", 'pip install "deepfeat[s3]" (or pip install aiohttp)'),
    "https": ("https", "aiohttp", 'pip install "deepfeat[s3]" (or pip install aiohttp)'),
}
#: what to check when a scheme's endpoint does not answer or refuses the credentials
SETTINGS: dict[str, str] = {
    "s3": "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3, or endpoint_url in the AWS_PROFILE's config), "
    "AWS_DEFAULT_REGION and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)",
    "gs": "STORAGE_EMULATOR_HOST (for an emulator) and GOOGLE_APPLICATION_CREDENTIALS",
    "az": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_KEY)",
    "abfs": "AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_CONNECTION_STRING (or AZURE_STORAGE_ACCOUNT_KEY)",
    "hf": "HF_ENDPOINT and HF_TOKEN",
    "http": "the URL's host and port (and HTTP_PROXY/HTTPS_PROXY)",
    "https": "the URL's host and port (and HTTP_PROXY/HTTPS_PROXY)",
}
#: the variables a protocol's filesystem reads when it is made (a change makes a new one)
_ENVIRONMENT: dict[str, tuple[str, ...]] = {
    "s3": (
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_PROFILE",
        "AWS_DEFAULT_REGION",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ),
    "gs": ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"),
    "az": ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY"),
    "abfs": ("AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_KEY"),
    "hf": ("HF_ENDPOINT", "HF_TOKEN"),
}
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: retries after the first attempt of a request that failed transiently; backoff base and cap in seconds
RETRIES = int(os.environ.get("DEEPFEAT_REMOTE_RETRIES", "6"))
BACKOFF = 0.2
BACKOFF_CAP = 10.0
#: byte ranges this close are fetched in one request (the gap is read and dropped)
COALESCE_GAP = 1 << 16
#: ... up to this many bytes per request
COALESCE_MAX = 64 << 20
#: the read-ahead block of sequential reads (shard scans, Parquet footers and column chunks)
BLOCK_SIZE = 8 << 20
PROBE_TIMEOUT = 5.0

_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "TooManyRequests",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "503",
    "500",
    "502",
    "504",
    "429",
}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "403",
    "401",
    "AllAccessDisabled",
    "InvalidToken",
    "ExpiredToken",
}
_MISSING_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}

_TRANSIENT_ERRNOS = {
    getattr(errno, n)
    for n in ("EREMOTEIO", "EBUSY", "EAGAIN", "ETIMEDOUT", "ECONNRESET", "ECONNABORTED", "EPIPE")
    if hasattr(errno, n)
}

_lock = threading.Lock()
_filesystems: dict[str, Any] = {}
_probed: dict[tuple[str, int], str | None] = {}  # (host, port) -> None (answers) or the error text
_endpoints: dict[tuple[int, str], Any] = {}  # (filesystem, scheme or host) -> (host, port) or None
_infos: dict[str, dict[str, Any]] = {}  # url -> its entry in the last expand()'s listings (ETag, size)


class RemoteError(Exception):
    """A remote object could not be read: ``reason`` is ``missing``, ``denied`` or ``unavailable``."""

    def __init__(self, url: str, reason: str, message: str) -> None:
        super().__init__(f"{url}: {message}")
        self.url, self.reason, self.message = url, reason, message


class EndpointUnreachable(EnvironmentFault):
    """The endpoint of a URL does not answer (refused, no route, no answer within seconds)."""


def is_url(spec: str | os.PathLike[str]) -> bool:
    """True for a URL of a remote scheme deepfeat reads (``s3://bucket/key`` ...).

    Example:
        >>> is_url("s3://lake/shards/000.tar"), is_url("shards/000.tar"), is_url("hf:saved")
        (True, False, False)
    """
    m = _URL.match(os.fspath(spec)) if isinstance(spec, (str, os.PathLike)) else None
    return m is not None and m.group(1).lower() in SCHEMES


def _scheme(url: str) -> str:
    m = _URL.match(url)
    if m is None or m.group(1).lower() not in SCHEMES:
        raise UsageError(f"{url!r} is not a URL deepfeat reads; schemes: {', '.join(s + '://' for s in SCHEMES)}.")
    return m.group(1).lower()


def filesystem(url: str) -> Any:
    """The fsspec filesystem for ``url``'s scheme (one per scheme and process).

    Raises:
        UsageError: the scheme's backend is not installed (the message gives the pip line).
    """
    scheme = _scheme(url)
    protocol, module, pip = SCHEMES[scheme]
    key = protocol + "\0" + "\0".join(os.environ.get(v, "") for v in _ENVIRONMENT.get(protocol, ()))
    with _lock:
        fs = _filesystems.get(key)
        if fs is not None:
            return fs
        try:
            import fsspec

            if protocol == "s3":
                # one attempt per call inside botocore and s3fs: the retries (and their cap) are ours
                fs = fsspec.filesystem(
                    "s3",
                    skip_instance_cache=True,
                    config_kwargs={
                        "connect_timeout": PROBE_TIMEOUT,
                        "read_timeout": 60,
                        "retries": {"max_attempts": 1, "mode": "standard"},
                    },
                )
                fs.retries = 1
            else:
                fs = fsspec.filesystem(protocol, skip_instance_cache=True)
        except ImportError as exc:
            raise UsageError(f"Reading {scheme}:// URLs needs the {module} package: {pip}. ({exc})") from exc
        _filesystems[key] = fs
        return fs


def _endpoint(url: str, fs: Any) -> tuple[str, int] | None:
    """(host, port) that requests for ``url`` go to, where it can be known without a request."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return None  # requests go through a proxy: its reachability is not the endpoint's
    scheme = _scheme(url)
    target = None
    if scheme == "s3":
        try:
            target = fs.s3.meta.endpoint_url
        except Exception as exc:  # noqa: BLE001 - e.g. no region: the first request explains it
            log.debug("no S3 endpoint before the first request: %s", exc)
            return None
    elif scheme in ("gs", "gcs"):
        target = os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"
    elif scheme == "hf":
        target = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    elif scheme in ("http", "https"):
        target = url
    if not target:
        return None
    parts = urlsplit(target if "://" in target else "http://" + target)
    if not parts.hostname:
        return None
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _probe(url: str, fs: Any) -> None:
    """Fail within seconds when ``url``'s endpoint does not accept a TCP connection (once per process)."""
    key = (id(fs), url.split("://", 1)[0] if SCHEMES[_scheme(url)][0] not in ("http", "https") else urlsplit(url).netloc)
    with _lock:
        cached = _endpoints.get(key, False)
    if cached is False:
        cached = _endpoint(url, fs)
        with _lock:
            _endpoints[key] = cached
    where = cached
    if where is None:
        return
    with _lock:
        known = where in _probed
        error: str | None = _probed.get(where)
    if not known:
        try:
            socket.create_connection(where, timeout=PROBE_TIMEOUT).close()
            error = None
        except OSError as exc:
            error = (
                "no answer within %.0f s" % PROBE_TIMEOUT if isinstance(exc, socket.timeout) else (exc.strerror or str(exc))
            )
        with _lock:
            _probed[where] = error
    if error is not None:
        scheme = _scheme(url)
        raise EndpointUnreachable(
            f"Cannot reach {where[0]}:{where[1]} for {url} ({error}); check {SETTINGS.get(scheme, 'the endpoint')}."
        )


def _classify(exc: BaseException) -> str:
    """``missing``, ``denied``, ``transient`` or ``fatal`` for an exception of fsspec or a backend."""
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, PermissionError):
        return "denied"
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        err = response.get("Error", {}) or {}
        code = str(err.get("Code", ""))
        status = str((response.get("ResponseMetadata", {}) or {}).get("HTTPStatusCode", ""))
        if code in _MISSING_CODES or status == "404":
            return "missing"
        if code in _DENIED_CODES or status in ("401", "403"):
            return "denied"
        if code in _TRANSIENT_CODES or status.startswith("5") or status == "429":
            return "transient"
        return "fatal"
    if isinstance(exc, OSError) and type(exc) in (OSError,) and exc.__cause__ is not None:
        return _classify(exc.__cause__)
    http = getattr(exc, "status", None) or getattr(exc, "code", None)  # aiohttp, gcsfs HttpError
    if isinstance(http, int):
        if http == 404:
            return "missing"
        if http in (401, 403):
            return "denied"
        if http >= 500 or http in (408, 429):
            return "transient"
    text = f"{type(exc).__name__} {exc}"
    if any(c in text for c in _TRANSIENT_CODES if not c.isdigit()):
        return "transient"
    if isinstance(exc, (TimeoutError, ConnectionError, socket.timeout)):
        return "transient"
    names = {t.__name__ for t in type(exc).__mro__}
    if names & {
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ReadTimeoutError",
        "ConnectTimeoutError",
        "IncompleteReadError",
        "ResponseParserError",
        "ClientPayloadError",
        "ServerDisconnectedError",
        "ClientConnectionError",
        "ClientOSError",
        "FSTimeoutError",
        "HTTPClientError",
        "IncompleteRead",
        "ProtocolError",
        "TransportError",
    }:
        return "transient"
    cause = exc.__cause__  # s3fs raises OSError(errno, message) from botocore's ClientError
    if cause is not None and cause is not exc:
        return _classify(cause)
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return "transient"
    return "fatal"


def call(url: str, what: str, fn: Callable[[], T], *, retries: int | None = None) -> T:
    """``fn()``, retried with exponential backoff (and jitter, capped) while it fails transiently.

    Raises:
        EndpointUnreachable: the endpoint does not answer at all (before any retry).
        RemoteError: ``missing``, ``denied``, or ``unavailable`` after the last retry / an unknown error.
    """
    _probe(url, filesystem(url))
    tries = RETRIES if retries is None else retries
    for attempt in range(tries + 1):
        try:
            return fn()
        except (UsageError, EnvironmentFault, RemoteError):
            raise
        except Exception as exc:  # noqa: BLE001 - sorted into retry / missing / denied / fatal below
            kind = _classify(exc)
            message = f"{what}: {type(exc).__name__}: {exc}"
            if kind == "missing":
                raise RemoteError(url, "missing", f"no such object ({message})") from exc
            if kind == "denied":
                raise RemoteError(
                    url, "denied", f"access denied ({message}); check {SETTINGS.get(_scheme(url), 'the credentials')}"
                ) from exc
            if kind != "transient":
                raise RemoteError(url, "unavailable", message) from exc
            if attempt == tries:
                raise RemoteError(url, "unavailable", f"still failing after {tries} retries ({message})") from exc
            delay = min(BACKOFF * 2**attempt, BACKOFF_CAP) * (0.5 + random.random() / 2)
            log.info("retrying %s in %.1f s (%s)", url, delay, message)
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _path(url: str) -> str:
    """The backend's path of ``url`` (``bucket/key``), the form fsspec's methods take."""
    fs = filesystem(url)
    return str(fs._strip_protocol(url))


def _url(fs: Any, path: str, scheme: str) -> str:
    return path if _URL.match(path) else f"{scheme}://{path}"


def info(url: str) -> dict[str, Any]:
    """The object's metadata (``size``, ``ETag``/``generation``/``VersionId``...).

    From the listing of the last :func:`expand` in this process (one discovery), else one HEAD request.
    """
    with _lock:
        known = _infos.get(url)
    if known is not None:
        return dict(known)
    fs = filesystem(url)
    fs.invalidate_cache(_path(url))
    found: dict[str, Any] = call(url, "stat", lambda: fs.info(_path(url)))
    if found.get("type") == "directory":
        raise RemoteError(url, "missing", "a prefix (folder), not an object")
    return dict(found)


def stamp(meta: dict[str, Any]) -> list[Any]:
    """What identifies one version of an object (cache keys): its ETag / version / generation and size."""
    keys = ("VersionId", "version_id", "generation", "ETag", "etag", "md5Hash", "sha", "blob_id")
    version = [str(meta[k]) for k in keys if meta.get(k)]
    if not version:  # e.g. an HTTP server without ETag: the modification time is the best there is
        version = [str(meta.get(k)) for k in ("LastModified", "last_modified", "mtime", "updated") if meta.get(k)]
    return [int(meta.get("size") or 0), *version]


def expand(patterns: Sequence[str]) -> tuple[list[str], list[str]]:
    """(object URLs in order, literal URLs that name no object) for URLs that may hold glob characters.

    Globs are listed; literal names are checked by listing each distinct parent prefix once (not
    one request per object; ``http(s)://``: one HEAD per URL). The entries are kept for :func:`info`.
    """
    found: list[str] = []
    missing: list[str] = []
    listed: dict[str, dict[str, dict[str, Any]]] = {}
    with _lock:
        _infos.clear()  # what an earlier discovery listed may have changed since
    for fs in {id(filesystem(p)): filesystem(p) for p in patterns}.values():
        fs.invalidate_cache()  # fsspec's own listings cache too
    for pattern in patterns:
        scheme = _scheme(pattern)
        fs = filesystem(pattern)
        path = _path(pattern)
        if any(c in path for c in "*?["):
            hits: dict[str, dict[str, Any]] = call(pattern, "glob", partial(fs.glob, path, detail=True))
            for p, hit in sorted((p, m) for p, m in hits.items() if m.get("type") != "directory"):
                url = _url(fs, p, scheme)
                with _lock:
                    _infos[url] = hit
                found.append(url)
            continue
        if scheme in ("http", "https"):  # a web server need not list its folders: one HEAD per URL
            try:
                head = info(pattern)
            except RemoteError as exc:
                if exc.reason != "missing":
                    raise
                missing.append(pattern)
                continue
            with _lock:
                _infos[pattern] = head
            found.append(pattern)
            continue
        parent = posixpath.dirname(path)
        key = f"{scheme}://{parent}"
        if key not in listed:
            try:
                listing: list[dict[str, Any]] = call(key, "list", partial(fs.ls, parent, detail=True))
                listed[key] = {str(m["name"]).rstrip("/"): m for m in listing}
            except RemoteError as exc:
                if exc.reason != "missing":
                    raise
                listed[key] = {}
        meta = listed[key].get(path)
        if meta is None or meta.get("type") == "directory":
            missing.append(pattern)
            continue
        with _lock:
            _infos[pattern] = meta
        found.append(pattern)
    return list(dict.fromkeys(found)), missing


class RemoteFile(io.RawIOBase):
    """A seekable, read-only file over one object whose reads are retried (:func:`call`).

    What cannot be read comes out as :class:`RemoteError`, never as an ``OSError`` that a reader
    (``tarfile``, pyarrow) would take for a cut or corrupt file.
    """

    def __init__(self, url: str, fh: Any) -> None:
        self.url, self._fh = url, fh

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._fh.seek(offset, whence))

    def tell(self) -> int:
        return int(self._fh.tell())

    def read(self, size: int | None = -1) -> bytes:
        pos = self._fh.tell()

        def attempt() -> bytes:
            self._fh.seek(pos)
            return bytes(self._fh.read(-1 if size is None else size))

        return call(self.url, "read", attempt)

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


def open_object(url: str, mode: str = "rb", **kwargs: Any) -> RemoteFile:
    """A seekable binary file object over ``url`` (read-ahead blocks of :data:`BLOCK_SIZE`, retried reads)."""
    if mode != "rb":
        raise ValueError("remote objects are opened for reading ('rb') only")
    fs = filesystem(url)
    kwargs.setdefault("block_size", BLOCK_SIZE)
    kwargs.setdefault("cache_type", "readahead")
    size = info(url).get("size")
    if size is not None and SCHEMES[_scheme(url)][0] in ("s3", "http", "https"):
        kwargs.setdefault("size", int(size))  # no second HEAD: the listing said it
    return RemoteFile(url, call(url, "open", lambda: fs.open(_path(url), "rb", **kwargs)))


def coalesce(
    ranges: Sequence[tuple[int, int]], gap: int = COALESCE_GAP, limit: int = COALESCE_MAX
) -> list[tuple[int, int, list[int]]]:
    """Merge ``(offset, size)`` ranges closer than ``gap`` bytes: ``(start, end, indices)`` per request.

    Example:
        >>> coalesce([(0, 10), (2048, 10), (1 << 20, 5)], gap=4096)
        [(0, 2058, [0, 1]), (1048576, 1048581, [2])]
    """
    order = sorted(range(len(ranges)), key=lambda i: ranges[i][0])
    out: list[tuple[int, int, list[int]]] = []
    for i in order:
        off, size = ranges[i]
        end = off + size
        if out and off - out[-1][1] <= gap and max(end, out[-1][1]) - out[-1][0] <= limit:
            start, stop, members = out[-1]
            out[-1] = (start, max(stop, end), [*members, i])
        else:
            out.append((off, end, [i]))
    return out


def read_ranges(url: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
    """The bytes of each ``(offset, size)`` range of one object; adjacent ranges cost one request.

    A range beyond the object's end comes back short (the caller decides it is truncated).
    """
    fs = filesystem(url)
    path = _path(url)
    requests = coalesce(ranges)
    blobs = call(
        url,
        "read",
        lambda: fs.cat_ranges([path] * len(requests), [r[0] for r in requests], [r[1] for r in requests], on_error="raise"),
    )
    out: list[bytes] = [b""] * len(ranges)
    for (start, _, members), blob in zip(requests, blobs):
        for i in members:
            off, size = ranges[i]
            out[i] = bytes(blob[off - start : off - start + size])
    return out


def read_object(url: str, max_bytes: int) -> bytes:
    """The whole object, refused (``RemoteError`` with reason ``too_large``) above ``max_bytes``."""
    size = int(info(url).get("size") or 0)
    if size > max_bytes:
        raise RemoteError(url, "too_large", f"{size} bytes, more than the limit of {max_bytes}")
    fs = filesystem(url)
    return bytes(call(url, "read", lambda: fs.cat_file(_path(url))))


def common_root(urls: Iterable[str]) -> str:
    """The longest common folder of URLs of one scheme (``s3://lake/shards`` for two shards in it)."""
    urls = list(urls)
    scheme = _scheme(urls[0])
    paths = [u[len(scheme) + 3 :] for u in urls]
    return f"{scheme}://" + posixpath.commonpath([posixpath.dirname(p) for p in paths])


def relpath(url: str, root: str) -> str:
    """``url`` relative to the folder URL ``root`` ('/'-separated), as ids are made from."""
    return posixpath.relpath(url[len(_scheme(url)) + 3 :], root[len(_scheme(root)) + 3 :])


def join(base_url: str, name: str) -> str:
    """``name`` (relative, or a URL itself) resolved against the folder URL ``base_url``."""
    if is_url(name):
        return name
    scheme = _scheme(base_url)
    return f"{scheme}://" + posixpath.normpath(posixpath.join(base_url[len(scheme) + 3 :], name))

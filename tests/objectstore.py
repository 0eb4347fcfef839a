"""A real S3-compatible server on localhost for the tests: moto's server mode behind a small proxy.

The proxy forwards every request to moto and records it (method, path, Range header); it can answer
every ``fail_every``-th request with a 500 ``InternalError`` instead, as a struggling object store does.
``S3Server.env()`` is the standard AWS environment that points a client (s3fs, boto3) at it.
"""

from __future__ import annotations

import http.client
import http.server
import io
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    b"<Message>We encountered an internal error. Please try again.</Message></Error>"
)
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade"}


class _Proxy(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.target = target
        self.lock = threading.Lock()
        self.count = 0
        self.fail_every = 0
        self.log: list[tuple[str, str, str | None, int]] = []  # (method, path, Range, status)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Proxy

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.count += 1
            fail = self.server.fail_every and self.server.count % self.server.fail_every == 0
        if fail:
            self.server.log.append((self.command, self.path, self.headers.get("Range"), 500))
            self.send_response(500)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(_ERROR)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(_ERROR)
            return
        conn = http.client.HTTPConnection(*self.server.target, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        self.server.log.append((self.command, self.path, self.headers.get("Range"), resp.status))
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


class S3Server:
    """moto's S3 on 127.0.0.1 with the recording, fault-injecting proxy in front (``url`` is the proxy)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        self._proxy = _Proxy(self._moto.get_host_and_port())
        threading.Thread(target=self._proxy.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._proxy.server_address[1]}"
        self._client: Any = None
        self._buckets: set[str] = set()

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    @property
    def log(self) -> list[tuple[str, str, str | None, int]]:
        return self._proxy.log

    @contextmanager
    def failing(self, every: int) -> Iterator[None]:
        """Answer every ``every``-th request with a 500 InternalError while the block runs."""
        self._proxy.fail_every = every
        try:
            yield
        finally:
            self._proxy.fail_every = 0

    @property
    def client(self) -> Any:
        """A boto3 client of moto itself, not of the proxy (made once): the set-up's uploads and deletes
        are not what a test watches, and through the proxy each PUT waited 1 s for a ``100 Continue``
        that its HTTP/1.0 handler never sends (90 s of this module's set-up)."""
        if self._client is None:
            import boto3

            host, port = self._moto.get_host_and_port()
            self._client = boto3.client(
                "s3",
                endpoint_url=f"http://{host}:{port}",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
        return self._client

    def upload(self, local: str, bucket: str, key: str) -> None:
        if bucket not in self._buckets:
            self.client.create_bucket(Bucket=bucket)
            self._buckets.add(bucket)
        self.client.upload_file(local, bucket, key)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def stop(self) -> None:
        self._proxy.shutdown()
        self._proxy.server_close()
        self._moto.stop()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with ``Range: bytes=a-b`` answered by 206 (http.server ignores Range)."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def send_head(self) -> Any:
        rng = self.headers.get("Range")
        if not rng or not rng.startswith("bytes="):
            return super().send_head()
        path = self.translate_path(self.path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - returned to the base class, which closes it
        except OSError:
            self.send_error(404)
            return None
        size = os.fstat(fh.fileno()).st_size
        first, _, last = rng[6:].partition("-")
        start, end = int(first or 0), min(int(last) if last else size - 1, size - 1)
        fh.seek(start)
        data = fh.read(max(end - start + 1, 0))
        fh.close()
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        return io.BytesIO(data)


@contextmanager
def http_server(folder: str) -> Iterator[str]:
    """A static web server of ``folder`` on 127.0.0.1 that honours Range requests; yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=folder))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

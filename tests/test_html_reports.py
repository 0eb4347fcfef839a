"""The HTML reports (evaluate, probe, analyze, predict gallery): content, self-containment, and a real
headless Chromium that loads each page with no console error, no network request and a non-blank screenshot."""

from __future__ import annotations

import base64
import io
import json
import os
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from reportstore import shared_store

import deepfeat
from deepfeat.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ----------------------------------------------------------------------------- a browser, stdlib only
class Chromium:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``).

    Every request goes through a proxy that refuses connections, so a page that tries the network
    fails loudly (a ``Network.loadingFailed`` event) instead of depending on the machine being offline.
    """

    def __init__(self, exe: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="deepfeat-chromium-")
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # in the child: the protocol pipe must be fds 3 (commands in) and 4 (replies out)
            import fcntl

            high_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [
                exe,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-pipe",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--disable-component-update",
                "--mute-audio",
                "--hide-scrollbars",
                "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>",
                f"--user-data-dir={self.profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while chunk := os.read(self._from_child, 1 << 16):
            buf += chunk
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                doc = json.loads(msg)
                if "id" in doc:
                    with self._cond:
                        self._replies[doc["id"]] = doc
                        self._cond.notify_all()
                else:
                    self._events.put(doc)
        with self._cond:
            self._cond.notify_all()

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        self._id += 1
        mid = self._id
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"chromium did not answer {method}")
                self._cond.wait(min(left, 1.0))
            doc = self._replies.pop(mid)
        if "error" in doc:
            raise RuntimeError(f"{method}: {doc['error']}")
        return doc.get("result", {})

    def load(self, url: str, width: int = 1200, height: int = 1000, timeout: float = 60) -> dict[str, Any]:
        """Open ``url`` in a new tab and wait for its load event (+0.5 s); errors, requests, a PNG screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        self.send("Page.navigate", {"url": url}, session=session)
        errors: list[str] = []
        requests: list[str] = []
        loaded, settle = False, None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (settle is None or time.monotonic() < settle):
            try:
                ev = self._events.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev.get("sessionId") != session:
                continue
            m, p = ev["method"], ev.get("params", {})
            if m == "Page.loadEventFired":
                loaded, settle = True, time.monotonic() + 0.5
            elif m == "Runtime.exceptionThrown":
                errors.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                errors.append(
                    "console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
                )
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                errors.append("log: " + p["entry"].get("text", ""))
            elif m == "Network.requestWillBeSent":
                requests.append(p["request"]["url"])
            elif m == "Network.loadingFailed":
                errors.append(f"loading failed: {p.get('errorText')}")
        shot = base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
        self.send("Target.closeTarget", {"targetId": target})
        return {"loaded": loaded, "errors": errors, "requests": requests, "screenshot": shot}

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except RuntimeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        shutil.rmtree(self.profile, ignore_errors=True)


def blank(png: bytes) -> bool:
    """Whether a screenshot is (nearly) one colour: under 1 % of its pixels differ from the commonest."""
    a = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(a, axis=0, return_counts=True)
    return len(colours) < 2 or counts.max() > 0.99 * len(a)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; scripts/setup.sh installs it)")
    b = Chromium(CHROMIUM)
    yield b
    b.close()


# ----------------------------------------------------------------------------- the reports under test
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_store(tmp_path_factory)


@pytest.fixture(scope="module")
def bundle(data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("html_bundles") / "pl.dfm"
    deepfeat.train(data[1], layers="pre_logits", head="logreg", solver="stream", epochs=10, out=path)
    return path


@pytest.fixture(scope="module")
def pages(data, bundle, tmp_path_factory) -> dict[str, Path]:
    images, store = data
    root = tmp_path_factory.mktemp("html_pages")
    # half the test images' sources are moved away while evaluating: their thumbnails become placeholders
    moved = sorted((images / "test").iterdir())[::2]
    hidden = root / "hidden"
    hidden.mkdir()
    for d in moved:
        d.rename(hidden / d.name)
    try:
        report = deepfeat.evaluate(bundle, store, split="test", out=root / "evaluate")
    finally:
        for d in moved:
            (hidden / d.name).rename(d)
    assert report["files"]["report.html"] == str(root / "evaluate" / "report.html")
    deepfeat.probe(store, out=root / "probe", groups="stages,all", epochs=3)
    deepfeat.analyze(store, root / "analyze", split="train", sample_rows=256)
    return {
        "evaluate": root / "evaluate" / "report.html",
        "probe": root / "probe" / "report.html",
        "analyze": root / "analyze" / "report.html",
    }


@pytest.fixture(scope="module")
def gallery(data, bundle, tmp_path_factory) -> Path:
    """``predict --out preds.html`` on three real images and a broken file."""
    images = data[0]
    root = tmp_path_factory.mktemp("html_gallery")
    picks = [sorted((images / "test" / c).iterdir())[0] for c in ("bag", "sneaker", "trouser")]
    broken = root / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert main(["predict", str(bundle), *map(str, picks), str(broken), "--out", str(root / "preds.html")]) == 0
    return root / "preds.html"


@pytest.fixture(params=["evaluate", "probe", "analyze", pytest.param("gallery", marks=pytest.mark.slow)])
def page_path(request) -> Path:
    if request.param == "gallery":
        return request.getfixturevalue("gallery")
    return request.getfixturevalue("pages")[request.param]


def test_evaluation_page_content(pages):
    page = pages["evaluate"].read_text(encoding="utf-8")
    report = json.loads((pages["evaluate"].parent / "report.json").read_text())
    assert f"{report['accuracy']:.4f}" in page and "top-3 accuracy" in page
    for c in report["per_class"]:
        assert f'<td class="l">{c}</td>' in page  # a per-class row
    assert page.count('<table class="cm">') == 1 and "true \\ predicted" in page
    # thumbnails of the real sources, and placeholders for the moved ones
    assert page.count('src="data:image/jpeg;base64,') >= 5
    assert "source image not available" in page
    assert "Most confident mistakes" in page and "Least confident correct answers" in page
    cal = report["calibration"]
    assert sum(b["count"] for b in cal["bins"]) == report["n"] and 0 <= cal["ece"] <= 1
    assert "Calibration" in page and 'alt="calibration curve"' in page


def test_svm_page_has_no_calibration(data, tmp_path):
    svm = tmp_path / "svm.dfm"
    deepfeat.train(data[1], layers="pre_logits", head="svm", solver="exact", out=svm)
    report = deepfeat.evaluate(svm, data[1], split="test", out=tmp_path / "ev")
    assert "calibration" not in report
    page = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert "decision values, not probabilities" in page and "decision value" in page


@pytest.mark.slow  # predict loads the backbone and its runtime
def test_gallery_page_content(gallery):
    page = gallery.read_text(encoding="utf-8")
    assert page.count('class="thumb"') == 4 and "not classified" in page
    assert page.count('src="data:image/jpeg;base64,') == 3  # the broken file shows the placeholder


def test_page_is_self_contained(page_path):
    page = page_path.read_text(encoding="utf-8")
    assert page.startswith("<!doctype html>") and "<style>" in page and 'class="sub"' in page  # the shared look
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", page, re.I)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    srcs = re.findall(r"""<img[^>]*\ssrc="([^"]*)\"""", page)
    assert srcs and all(s.startswith("data:image/") for s in srcs)


def test_page_renders_in_chromium(browser, page_path):
    r = browser.load(page_path.resolve().as_uri())
    assert r["loaded"], f"{page_path}: no load event"
    assert r["errors"] == [], r["errors"]
    schemes = {u.split(":", 1)[0] for u in r["requests"]}
    assert schemes <= {"file", "data"}, r["requests"]
    assert not blank(r["screenshot"])


def test_the_browser_check_can_fail(browser, tmp_path):
    """The harness sees a console error, an exception, a network request and a blank page."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        '<!doctype html><html><body><img src="http://example.invalid/x.png">'
        '<script>console.error("boom"); notDefined();</script></body></html>'
    )
    r = browser.load(bad.as_uri())
    assert any("boom" in e for e in r["errors"]) and any("notDefined" in e or "exception" in e for e in r["errors"])
    assert any(u.startswith("http://example.invalid") for u in r["requests"])
    assert any("loading failed" in e for e in r["errors"])  # the refusing proxy: no real network access
    assert blank(r["screenshot"])  # a page with nothing visible

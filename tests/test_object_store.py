"""Shards, Parquet files and list files in an S3 bucket (a real S3 server on localhost: moto's server mode).

Each remote source is the same real Fashion-MNIST PNGs as the folder in ``test_shard_sources``; extracting it
must give the same rows and bit-identical features. The server sits behind a proxy that records every request
and can answer some with 500s (``tests/objectstore.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from objectstore import S3Server, http_server
from test_shard_sources import KW, _assert_same_as_folder, _by_sha, _fm_images, _write_shards

import deepfeat
from deepfeat.data import read, remote
from deepfeat.errors import EnvironmentFault, UsageError
from deepfeat.sources import open_source
from deepfeat.sources.webdataset import resolve_shards
from deepfeat.store.reader import open_store

pytest.importorskip("s3fs")
pytest.importorskip("moto")


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture(scope="module")
def folder_store(fm_dir: Path, lite0, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """sha256 -> (label, split, features) of the Fashion-MNIST folder, extracted from disk."""
    out = tmp_path_factory.mktemp("folder") / "store"
    deepfeat.extract(fm_dir, out, backbone=lite0, **KW)
    return _by_sha(out)


@pytest.fixture(scope="module")
def lake(s3: S3Server, fm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same images as local shards (s3://lake/shards/), Parquet files (s3://lake/pq/) and PNGs + a list."""
    root = tmp_path_factory.mktemp("lake")
    shards = _write_shards(fm_dir, root / "shards", per_shard=25)
    for p in shards:
        s3.upload(str(p), "lake", f"shards/{p.name}")
    images = _fm_images(fm_dir)
    table = pa.table(
        {
            "key": [f"{sp}/{lab}/{stem}" for sp, lab, stem, _ in images],
            "label": [lab for _, lab, _, _ in images],
            "split": [sp for sp, _, _, _ in images],
            "jpg": [data for *_, data in images],
        }
    )
    (root / "pq").mkdir()
    pq.write_table(table.slice(0, 50), root / "pq" / "a.parquet", row_group_size=16)
    pq.write_table(table.slice(50), root / "pq" / "b.parquet", row_group_size=16)
    for name in ("a.parquet", "b.parquet"):
        s3.upload(str(root / "pq" / name), "lake", f"pq/{name}")
    lines = ["path,label,split"]
    for png in sorted(fm_dir.rglob("*.png")):
        rel = png.relative_to(fm_dir).as_posix()
        s3.upload(str(png), "lake", f"files/{rel}")
        lines.append(f"{rel},{png.parent.name},{png.parent.parent.name}")
    lines.append("train/nope/missing.png,nope,train")
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    s3.upload(str(root / "list.csv"), "lake", "files/list.csv")
    return {"root": root, "shards": root / "shards"}


def test_shards_from_s3_equal_the_same_shards_on_disk(
    s3: S3Server, lake: dict, lite0, folder_store: dict, tmp_path: Path
) -> None:
    n = len(list(lake["shards"].glob("*.tar")))
    url = "s3://lake/shards/{00000..%05d}.tar" % (n - 1)
    assert (
        resolve_shards("s3://lake/shards/*.tar")[0]
        == resolve_shards(url)[0]
        == [f"s3://lake/shards/{i:05d}.tar" for i in range(n)]
    )
    src = open_source(url, split_field="split")
    assert src.kind == "webdataset"
    local = open_source(str(lake["shards"]), split_field="split").discover()
    remote_items = src.discover().items
    assert [it.id for it in remote_items] == [it.id for it in local.items], "ids from paths relative to the root"
    s = deepfeat.extract(src, tmp_path / "store", backbone=lite0, part_size=30, **KW)
    assert (s.embedded_total, s.failed_total, s.excluded) == (len(folder_store), 0, 0)
    _assert_same_as_folder(tmp_path / "store", folder_store)
    paths = open_store(str(tmp_path / "store")).rows(["path"]).column("path").to_pylist()
    assert all(p.startswith("s3://lake/shards/") for p in paths)


def test_members_of_a_batch_are_read_in_one_ranged_request(s3: S3Server, lake: dict) -> None:
    items = [it for it in open_source("s3://lake/shards/00000.tar").discover().items]
    local = {it.id: it for it in open_source(str(lake["shards"] / "00000.tar")).discover().items}
    assert len(items) == 25
    before = len(s3.log)
    read.prefetch([it.locator for it in items], 1 << 30)
    gets = [entry for entry in s3.log[before:] if entry[0] == "GET"]
    assert len(gets) == 1 and gets[0][2] is not None, f"25 adjacent members in one ranged GET, got {gets}"
    for it in items:
        assert read.read_locator(it.locator, 1 << 30) == read.read_locator(local[it.id].locator, 1 << 30)
    assert [e for e in s3.log[before + 1 :] if e[0] == "GET"] == [], "the members came from the prefetched range"


def test_shard_index_is_keyed_by_the_objects_etag(s3: S3Server, lake: dict, monkeypatch) -> None:
    import deepfeat.sources.webdataset as wdmod

    scans: list[str] = []
    real = wdmod.scan_shard
    monkeypatch.setattr(wdmod, "scan_shard", lambda p, **kw: scans.append(p) or real(p, **kw))
    url = "s3://lake/shards/*.tar"
    first = open_source(url).discover()
    scans.clear()
    assert open_source(url).discover().items == first.items
    assert scans == [], "unchanged objects are not read again"
    shard = lake["shards"] / "00001.tar"
    s3.upload(str(shard), "lake", "shards/00001.tar")  # the same bytes again: the same ETag
    open_source(url).discover()
    assert scans == []
    s3.upload(str(lake["shards"] / "00000.tar"), "lake", "shards/00001.tar")  # other bytes: a new ETag
    try:
        again = open_source(url).discover()
        assert scans == ["s3://lake/shards/00001.tar"], "a changed object is scanned again"
        assert again.items != first.items
    finally:
        s3.upload(str(shard), "lake", "shards/00001.tar")


@pytest.mark.slow
def test_parquet_and_list_files_from_s3_equal_the_folder(
    s3: S3Server, lake: dict, lite0, folder_store: dict, tmp_path: Path
) -> None:
    src = open_source("s3://lake/pq/*.parquet", id_field="key", split_field="split")
    assert src.kind == "parquet"
    s = deepfeat.extract(src, tmp_path / "pq", backbone=lite0, **KW)
    assert (s.embedded_total, s.failed_total) == (len(folder_store), 0)
    _assert_same_as_folder(tmp_path / "pq", folder_store)

    s = deepfeat.extract("s3://lake/files/list.csv", tmp_path / "list", backbone=lite0, **KW)
    assert (s.embedded_total, s.failed_total, s.excluded) == (len(folder_store), 0, 1)
    _assert_same_as_folder(tmp_path / "list", folder_store)
    excluded = open_source("s3://lake/files/list.csv").discover().excluded
    assert [(x.path, x.reason) for x in excluded] == [("s3://lake/files/train/nope/missing.png", "missing")]


def _assert_subset_of_folder(store_dir: Path, folder: dict, n: int) -> None:
    got = _by_sha(store_dir)
    assert len(got) == n and set(got) <= set(folder)
    for sha, (label, split, x) in got.items():
        assert (label, split) == folder[sha][:2]
        np.testing.assert_array_equal(x, folder[sha][2])


def test_transient_server_errors_are_retried_to_the_same_store(
    s3: S3Server, lake: dict, lite0, folder_store: dict, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("DEEPFEAT_CACHE_DIR", str(tmp_path / "cache"))  # the shards are scanned under faults too
    before = len(s3.log)
    with s3.failing(every=3):
        src = open_source("s3://lake/shards/{00002..00003}.tar", split_field="split")
        s = deepfeat.extract(src, tmp_path / "store", backbone=lite0, part_size=30, **KW)
    answered = [e[3] for e in s3.log[before:]]
    assert answered.count(500) >= 5, "the server did fail requests"
    assert (s.embedded_total, s.failed_total, s.excluded) == (30, 0, 0)
    _assert_subset_of_folder(tmp_path / "store", folder_store, 30)


def test_a_missing_object_is_an_exclusion(s3: S3Server, lake: dict, lite0, tmp_path: Path) -> None:
    s = deepfeat.extract("s3://lake/shards/{00002..00004}.tar", tmp_path / "store", backbone=lite0, **KW)
    table = open_store(str(tmp_path / "store")).read_excluded()
    assert table is not None
    ledger = {r["path"]: r["reason"] for r in table.to_pylist()}
    assert ledger == {"s3://lake/shards/00004.tar": "missing"}
    assert (s.embedded_total, s.excluded) == (30, 1) and s.accounted
    with pytest.raises(UsageError, match="does not exist"):
        open_source("s3://lake/pq/nope.parquet").discover()


def test_an_object_gone_after_discovery_fails_its_inputs(s3: S3Server, lake: dict) -> None:
    s3.upload(str(lake["shards"] / "00003.tar"), "lake", "tmp/gone.tar")
    items = open_source("s3://lake/tmp/gone.tar").discover().items
    s3.delete("lake", "tmp/gone.tar")
    read.prefetch([it.locator for it in items], 1 << 30)
    with pytest.raises(deepfeat.errors.InputError, match="no longer exists") as info:
        read.read_locator(items[0].locator, 1 << 30)
    assert info.value.reason == "vanished"


def test_an_unreachable_endpoint_fails_within_seconds_naming_the_setting(
    s3: S3Server, lite0, tmp_path: Path, monkeypatch
) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(EnvironmentFault) as info:
        deepfeat.extract("s3://lake/shards/*.tar", tmp_path / "store", backbone=lite0, **KW)
    assert time.monotonic() - start < 30
    text = str(info.value)
    assert "s3://lake/shards/*.tar" in text and "AWS_ENDPOINT_URL" in text and f"127.0.0.1:{port}" in text


def test_a_remote_store_is_refused(lite0) -> None:
    with pytest.raises(UsageError, match="POSIX file system"):
        deepfeat.extract("s3://lake/shards/*.tar", "s3://lake/feats", backbone=lite0, **KW)
    with pytest.raises(UsageError, match="not folders of images"):
        open_source("s3://lake/files/").discover()


def test_a_missing_backend_names_the_extra(monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_gcsfs(name: str, *args, **kwargs):
        if name.startswith("gcsfs"):
            raise ImportError("No module named 'gcsfs'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    monkeypatch.setattr(remote, "_filesystems", {})
    with pytest.raises(UsageError, match=r'pip install "deepfeat\[gcs\]"'):
        remote.filesystem("gs://bucket/x.tar")


@pytest.mark.slow
def test_killed_run_over_s3_shards_resumes_bit_identical(s3: S3Server, lake: dict, tmp_path: Path) -> None:
    """SIGKILL after the second commit, then a resume: the store of an uninterrupted run, nothing twice."""
    from deepfeat.cli import main

    args = [
        "extract",
        "s3://lake/shards/{00000..00002}.tar",
        "--split-field",
        "split",
        "--model",
        "efficientnet_lite0",
        "--layers",
        "pre_logits",
        "--input-size",
        "64",
        "--workers",
        "0",
        "--runtime",
        "torch",
        "--precision",
        "fp32",
        "--part-size",
        "10",
        "--batch-size",
        "4",
    ]
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    args += ["--out", str(tmp_path / "killed")]
    code = (
        "import os, sys, deepfeat.store.writer as w\n"
        "orig = w.Manifest.commit\n"
        "def commit(self, record):\n"
        "    orig(self, record)\n"
        "    if len(self.parts) == 2: os.kill(os.getpid(), 9)\n"
        "w.Manifest.commit = commit\n"
        "from deepfeat.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True)
    assert r.returncode == -9, r.stderr.decode()[-2000:]
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert len(manifest["parts"]) == 2, "killed after two of eight parts"
    r = subprocess.run([sys.executable, "-m", "deepfeat.cli", *args], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    xa, _, ma = open_store(str(tmp_path / "clean")).load(["pre_logits"], views=0)
    xb, _, mb = open_store(str(tmp_path / "killed")).load(["pre_logits"], views=0)
    ia, ib = ma.column("id").to_pylist(), mb.column("id").to_pylist()
    assert len(ib) == len(set(ib)) == 75 and sorted(ia) == sorted(ib), "nothing twice, nothing lost"
    np.testing.assert_array_equal(xa, xb[[ib.index(i) for i in ia]])
    assert len(open_store(str(tmp_path / "killed")).ledger()) == 75


def test_shards_over_https_plain_web_server(lake: dict, fm_dir: Path) -> None:
    """http(s):// URLs: literal names checked with HEAD, members read by Range, as from a bucket."""
    pytest.importorskip("aiohttp")
    local = open_source(str(lake["shards"]) + "/{00002..00003}.tar", split_field="split").discover()
    with http_server(str(lake["shards"])) as base:
        src = open_source(base + "/{00002..00004}.tar", split_field="split")
        found = src.discover()
        assert [x.reason for x in found.excluded] == ["missing"]
        assert [(it.id, it.label, it.split) for it in found.items] == [(it.id, it.label, it.split) for it in local.items]
        read.prefetch([it.locator for it in found.items], 1 << 30)
        for it, ref in zip(found.items, local.items):
            assert read.read_locator(it.locator, 1 << 30) == read.read_locator(ref.locator, 1 << 30)

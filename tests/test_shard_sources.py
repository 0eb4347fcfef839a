"""WebDataset shards, Parquet files and saved Hugging Face datasets as extraction sources.

Each source is built from the same real Fashion-MNIST PNGs as a folder; extracting it must give
the same rows (label, split, sha256 of the image bytes) and bit-identical features as the folder
run. Bad members land in the ledger; a truncated shard keeps its good samples; a killed run over
shards resumes to the same store.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import deepfeat
from deepfeat.errors import UsageError
from deepfeat.sources import open_source
from deepfeat.sources.webdataset import expand_braces, resolve_shards
from deepfeat.store.reader import open_store

KW = dict(
    model="efficientnet_lite0",
    layers="pre_logits",
    input_size=64,
    workers=0,
    runtime="torch",
    precision="fp32",
    batch_size=1,
)  # batch 1: a row's features do not depend on its batch-mates


def _fm_images(fm_dir: Path) -> list[tuple[str, str, str, bytes]]:
    """(split, label, file name, PNG bytes) of the fixture's images, sorted."""
    out = []
    for path in sorted(fm_dir.rglob("*.png")):
        split, label = path.parent.parent.name, path.parent.name
        out.append((split, label, path.stem, path.read_bytes()))
    return out


def _write_shards(fm_dir: Path, folder: Path, per_shard: int = 10) -> list[Path]:
    """WebDataset shards written with the webdataset library: .png + .cls (label) + .json (split)."""
    import webdataset as wds

    folder.mkdir(parents=True, exist_ok=True)
    images = _fm_images(fm_dir)
    paths = []
    for s in range(0, len(images), per_shard):
        path = folder / f"{s // per_shard:05d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for split, label, stem, data in images[s : s + per_shard]:
                sink.write(
                    {
                        "__key__": f"{split}_{label}_{stem}".replace(" ", "_").replace("/", "_"),
                        "png": data,
                        "cls": label,
                        "json": {"split": split, "label": label},
                    }
                )
        paths.append(path)
    return paths


def _by_sha(store_dir: Path) -> dict[str, tuple[str | None, str | None, np.ndarray]]:
    """sha256 -> (label, split, features of view 0) of a store."""
    store = open_store(str(store_dir))
    X, _, meta = store.load(["pre_logits"], views=0)
    rows = store.rows(["id", "view", "sha256", "label", "split"]).to_pylist()
    by_id = {r["id"]: r for r in rows if r["view"] == 0}
    return {
        by_id[i]["sha256"]: (by_id[i]["label"], by_id[i]["split"], X[k]) for k, i in enumerate(meta.column("id").to_pylist())
    }


@pytest.fixture(scope="module")
def folder_store(fm_dir: Path, lite0, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("folder") / "store"
    deepfeat.extract(fm_dir, out, backbone=lite0, **KW)
    return _by_sha(out)


def _assert_same_as_folder(store_dir: Path, folder: dict, *, labels: bool = True) -> None:
    got = _by_sha(store_dir)
    assert set(got) == set(folder), "the same images, by sha256 of their bytes"
    for sha, (label, split, x) in got.items():
        f_label, f_split, f_x = folder[sha]
        if labels:
            assert (label, split) == (f_label, f_split)
        np.testing.assert_array_equal(x, f_x)


def test_expand_braces_and_globs(tmp_path: Path) -> None:
    assert expand_braces("a{08..10}.tar") == ["a08.tar", "a09.tar", "a10.tar"]
    assert expand_braces("{x,y}{1..2}") == ["x1", "x2", "y1", "y2"]
    for name in ("s0.tar", "s1.tar"):
        (tmp_path / name).write_bytes(b"")
    shards, missing = resolve_shards(str(tmp_path / "s{0..2}.tar"))
    assert [os.path.basename(s) for s in shards] == ["s0.tar", "s1.tar"]
    assert [os.path.basename(m) for m in missing] == ["s2.tar"]
    assert [os.path.basename(s) for s in resolve_shards(str(tmp_path / "s*.tar"))[0]] == ["s0.tar", "s1.tar"]
    with pytest.raises(UsageError, match="counts down"):
        expand_braces("{9..1}.tar")


def test_webdataset_equals_folder(fm_dir: Path, lite0, folder_store: dict, tmp_path: Path) -> None:
    shards = _write_shards(fm_dir, tmp_path / "shards", per_shard=25)
    src = open_source(str(tmp_path / "shards") + "/{00000..%05d}.tar" % (len(shards) - 1), split_field="split")
    assert src.kind == "webdataset"
    s = deepfeat.extract(src, tmp_path / "store", backbone=lite0, part_size=30, **KW)
    assert (s.embedded_total, s.failed_total, s.excluded) == (len(folder_store), 0, 0)
    _assert_same_as_folder(tmp_path / "store", folder_store)
    ids = open_store(str(tmp_path / "store")).rows().column("id").to_pylist()
    assert len(set(ids)) == len(ids)
    # a folder of shards is a webdataset source too, and parts keep a shard whole
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert all(p["rows"] in (25, 30) or p["rows"] <= 30 for p in manifest["parts"])
    assert open_source(str(tmp_path / "shards")).kind == "webdataset"


def test_parts_never_split_a_shard(fm_dir: Path) -> None:
    from deepfeat.engines.parts import plan_parts

    src = open_source(str(fm_dir))  # files: no groups -> fixed-size parts
    items = src.discover().items
    assert [len(p) for _, p in plan_parts(items, 30, 0)][:2] == [30, 30]
    grouped = [type(it)(**{**it.__dict__, "group": f"shard{k // 25}"}) for k, it in enumerate(items)]
    parts = plan_parts(grouped, 30, 0)
    homes = {g: {name for name, chunk in parts for it in chunk if it.group == g} for g in {i.group for i in grouped}}
    assert all(len(h) == 1 for h in homes.values()), "a shard smaller than a part lies in exactly one part"
    assert all(len(chunk) <= 30 for _, chunk in parts) and sum(len(c) for _, c in parts) == len(items)
    big = plan_parts(grouped, 10, 0)  # shards larger than a part are cut into full parts
    assert [len(c) for _, c in big][:3] == [10, 10, 5]


def test_webdataset_bad_members_and_truncated_shard(fm_dir: Path, lite0, tmp_path: Path) -> None:
    shards = _write_shards(fm_dir, tmp_path / "shards", per_shard=20)
    bad = shards[0]
    # a corrupt image member and a sample without an image, appended with tarfile
    with tarfile.open(bad, "a") as tf:
        for name, data in (("zz_corrupt.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40), ("zz_noimage.cls", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    cut = shards[1]
    raw = cut.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])  # truncated in the middle of the shard
    s = deepfeat.extract(str(tmp_path / "shards" / "*.tar"), tmp_path / "store", backbone=lite0, **KW)
    ledger = open_store(str(tmp_path / "store")).ledger()
    reasons = dict(zip(ledger.column("path").to_pylist(), ledger.column("reason").to_pylist()))
    assert any(p.endswith("zz_corrupt.png") and r in ("decode_error", "truncated") for p, r in reasons.items())
    assert any(p.endswith("#zz_noimage") and r == "no_image" for p, r in reasons.items())
    assert "truncated_shard" in reasons.values()
    good_in_cut = s.embedded_total - (len(_fm_images(fm_dir)) - 20)
    assert 0 < good_in_cut < 20, "the truncated shard keeps the samples before the cut"
    assert s.accounted


def test_parquet_equals_folder(fm_dir: Path, lite0, folder_store: dict, tmp_path: Path) -> None:
    images = _fm_images(fm_dir)
    table = pa.table(
        {
            "key": [f"{sp}/{lab}/{stem}" for sp, lab, stem, _ in images],
            "label": [lab for _, lab, _, _ in images],
            "split": [sp for sp, _, _, _ in images],
            "jpg": [data for *_, data in images],
        }
    )
    pq.write_table(table.slice(0, 50), tmp_path / "a.parquet", row_group_size=16)
    pq.write_table(table.slice(50), tmp_path / "b.parquet", row_group_size=16)
    src = open_source(str(tmp_path / "*.parquet"), id_field="key", split_field="split")
    assert src.kind == "parquet"
    s = deepfeat.extract(src, tmp_path / "store", backbone=lite0, **KW)
    assert (s.embedded_total, s.failed_total) == (len(images), 0)
    _assert_same_as_folder(tmp_path / "store", folder_store)
    with pytest.raises(UsageError, match="--image-column"):
        open_source(str(tmp_path / "a.parquet"), image_field="nope").discover()
    with pytest.raises(UsageError, match="does not apply to a folder"):
        open_source(str(fm_dir), image_field="jpg")


def test_parquet_path_column_and_bad_cells(fm_dir: Path, lite0, tmp_path: Path) -> None:
    files = sorted(fm_dir.rglob("*.png"))[:6]
    table = pa.table({"path": [os.path.relpath(f, tmp_path) for f in files] + ["missing.png"]})
    pq.write_table(table, tmp_path / "paths.parquet")
    d = open_source(str(tmp_path / "paths.parquet")).discover()
    assert [it.path for it in d.items] == [str(f) for f in files]
    assert [x.reason for x in d.excluded] == ["missing"]
    cells = pa.table({"img": [files[0].read_bytes(), None, b"not an image"]})
    pq.write_table(cells, tmp_path / "cells.parquet")
    s = deepfeat.extract(str(tmp_path / "cells.parquet"), tmp_path / "store", backbone=lite0, **KW)
    assert (s.embedded_total, s.failed_total) == (1, 2)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    d = open_source(str(tmp_path / "junk.parquet")).discover()
    assert [x.reason for x in d.excluded] == ["unreadable_shard"]


def test_hf_saved_dataset_equals_folder(fm_dir: Path, lite0, folder_store: dict, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    images = _fm_images(fm_dir)
    names = sorted({lab for _, lab, _, _ in images})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    dd = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {
                    "image": [{"bytes": data, "path": None} for sp, _, _, data in images if sp == split],
                    "label": [names.index(lab) for sp, lab, _, _ in images if sp == split],
                },
                features=features,
            )
            for split in ("train", "test")
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    s = deepfeat.extract(f"hf:{tmp_path / 'saved'}", tmp_path / "store", backbone=lite0, **KW)
    assert (s.embedded_total, s.failed_total) == (len(images), 0)
    _assert_same_as_folder(tmp_path / "store", folder_store)
    only = open_source(f"hf:{tmp_path / 'saved'}", split="test").discover()
    assert {it.split for it in only.items} == {"test"}
    with pytest.raises(UsageError, match="no split"):
        open_source(f"hf:{tmp_path / 'saved'}", split="nope").discover()


def test_an_hf_name_not_in_the_cache_fails_offline_without_touching_the_network(tmp_path: Path, monkeypatch) -> None:
    """``hf:NAME`` is looked up in the local cache only: a name not there is a UsageError at once, and
    no connection is attempted (before, the Hub was retried for ~25 s offline)."""
    datasets = pytest.importorskip("datasets")
    import socket

    import huggingface_hub.constants as hub

    for module, name in (
        (datasets.config, "HF_DATASETS_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (hub, "HF_HUB_OFFLINE"),
    ):
        monkeypatch.setattr(module, name, False)  # a user's online session (the suite runs offline)
    tried: list[object] = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: tried.append(addr) or real_connect(self, addr))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: tried.append(a) or (_ for _ in ()).throw(OSError("no")))
    before = (datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE)
    with pytest.raises(UsageError, match="not in the local cache"):
        open_source("hf:deepfeat-no-such-dataset").discover()
    assert tried == []  # not even a name lookup
    assert (datasets.config.HF_DATASETS_OFFLINE, hub.HF_HUB_OFFLINE) == before  # the settings are restored


def test_shard_index_cache_skips_finished_shards(fm_dir: Path, tmp_path: Path, monkeypatch) -> None:
    import deepfeat.sources.webdataset as wdmod

    _write_shards(fm_dir, tmp_path / "shards", per_shard=50)
    scans: list[str] = []
    real = wdmod.scan_shard
    monkeypatch.setattr(wdmod, "scan_shard", lambda p, **kw: scans.append(p) or real(p, **kw))
    first = open_source(str(tmp_path / "shards")).discover()
    again = open_source(str(tmp_path / "shards")).discover()
    assert len(scans) == 2, "each shard's headers are read once; the second discovery uses the index cache"
    assert [it.id for it in first.items] == [it.id for it in again.items]
    os.utime(tmp_path / "shards" / "00000.tar", ns=(1, 1))  # a changed shard is scanned again
    open_source(str(tmp_path / "shards")).discover()
    assert len(scans) == 3


def test_compressed_shards_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="uncompressed"):
        open_source(str(tmp_path / "x.tar.gz"))


def test_killed_run_over_shards_resumes_to_the_same_store(fm_dir: Path, tmp_path: Path) -> None:
    """SIGKILL after the first committed part, then a resume: the store equals an uninterrupted run."""
    _write_shards(fm_dir, tmp_path / "shards", per_shard=16)
    args = [
        "extract",
        str(tmp_path / "shards"),
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
        "--part-size",
        "16",
        "--batch-size",
        "8",
    ]
    clean = tmp_path / "clean"
    assert (
        subprocess.run([sys.executable, "-m", "deepfeat.cli", *args, "--out", str(clean)], capture_output=True).returncode
        == 0
    )
    killed = tmp_path / "killed"
    code = (
        "import os, sys, deepfeat.store.writer as w\n"
        "orig = w.Manifest.commit\n"
        "def commit(self, record):\n"
        "    orig(self, record)\n"
        "    if len(self.parts) == 2: os._exit(9)\n"
        "w.Manifest.commit = commit\n"
        "from deepfeat.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *args, "--out", str(killed)], capture_output=True)
    assert r.returncode == 9, r.stderr.decode()[-2000:]
    assert len(json.loads((killed / "manifest.json").read_text())["parts"]) == 2, "killed after two parts"
    r = subprocess.run([sys.executable, "-m", "deepfeat.cli", *args, "--out", str(killed)], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    xa, _, ma = open_store(str(clean)).load(["pre_logits"], views=0)
    xb, _, mb = open_store(str(killed)).load(["pre_logits"], views=0)
    ia, ib = ma.column("id").to_pylist(), mb.column("id").to_pylist()
    assert sorted(ia) == sorted(ib)
    order = [ib.index(i) for i in ia]
    np.testing.assert_array_equal(xa, xb[order])


def test_ray_engine_reads_shards_whole(fm_dir: Path, tmp_path: Path) -> None:
    """The Ray engine takes the same source: the same store as a local run, one shard per part."""
    ray = pytest.importorskip("ray")
    import torch

    _write_shards(fm_dir, tmp_path / "shards", per_shard=20)
    kw = dict(layers="pre_logits", input_size=32, batch_size=4, part_size=24, device="cpu", runtime="torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise equality needs the Ray workers' thread count (1 CPU each)
    try:
        deepfeat.extract(str(tmp_path / "shards"), tmp_path / "local", workers=0, **kw)
    finally:
        torch.set_num_threads(before)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        from deepfeat.engines.builtin import RayEngine

        s = deepfeat.extract(str(tmp_path / "shards"), tmp_path / "ray", engine=RayEngine(workers=2), **kw)
    finally:
        ray.shutdown()
    assert (s.embedded_total, s.parts_committed) == (80, 4), "four 20-sample shards, never two in a 24-input part"
    store = open_store(str(tmp_path / "ray"))
    for part in store.parts:
        shards = {p.split("#")[0] for p in store.read_rows(part, ["path"]).column("path").to_pylist()}
        assert len(shards) == 1, f"part {part.name} mixes shards {shards}"
    assert (tmp_path / "ray" / "manifest.json").read_text() == (tmp_path / "local" / "manifest.json").read_text()


def _interrupted_at_commit(n: int, monkeypatch, source: str, out: Path, **kw) -> None:  # noqa: ANN001
    """An extract interrupted (Ctrl-C) as it is about to make its ``n``-th commit: ``n - 1`` parts committed."""
    from deepfeat.store.manifest import Manifest

    real_commit = Manifest.commit
    made: list[str] = []

    def commit_then_stop(self, record):  # noqa: ANN001, ANN202
        if len(made) == n - 1:
            raise KeyboardInterrupt
        made.append(record.name)
        return real_commit(self, record)

    monkeypatch.setattr(Manifest, "commit", commit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        deepfeat.extract(source, out, **kw)
    monkeypatch.setattr(Manifest, "commit", real_commit)
    assert len(made) == n - 1


def test_a_resume_skips_finished_shards_without_reading_their_ledgers(
    fm_dir: Path, lite0, folder_store: dict, tmp_path: Path, monkeypatch
) -> None:
    """Each part record names the shards it holds inputs of and which of them its commit finished; a
    resume drops the finished shards' inputs without reading those parts' ledgers, reads the rest as
    before, and ends with the same store as one uninterrupted run. A shard that changed is checked id by id."""
    from deepfeat.store.manifest import Manifest
    from deepfeat.store.reader import FeatureStore

    shards = _write_shards(fm_dir, tmp_path / "shards", per_shard=20)
    assert len(shards) == 4
    kw = dict(KW, part_size=16)  # a 20-sample shard is cut into parts of 16 + 4
    out = tmp_path / "store"
    _interrupted_at_commit(4, monkeypatch, str(tmp_path / "shards"), out, backbone=lite0, **kw)
    parts = {p.name: p.containers for p in Manifest(str(out)).parts}
    finished = [[os.path.basename(k.split("|")[0]) for k, done in c.items() if done] for c in parts.values()]
    held = [[os.path.basename(k.split("|")[0]) for k in c] for c in parts.values()]
    assert held == [["00000.tar"], ["00000.tar"], ["00001.tar"]] and finished == [[], ["00000.tar"], []]

    read: list[str] = []
    real_read = FeatureStore.read_ledger
    monkeypatch.setattr(
        FeatureStore, "read_ledger", lambda self, part, *a, **k: read.append(part.name) or real_read(self, part, *a, **k)
    )
    s = deepfeat.extract(str(tmp_path / "shards"), out, backbone=lite0, **kw)
    assert read == [list(parts)[2]]  # shard 0 finished: its two parts' ledgers are not read; shard 1's is
    assert (s.already_done, s.embedded_now, s.embedded_total, s.rows_total) == (36, 44, 80, 80)
    _assert_same_as_folder(out, folder_store, labels=False)  # nothing lost, nothing twice, the same features

    read.clear()
    again = deepfeat.extract(str(tmp_path / "shards"), out, backbone=lite0, **kw)
    assert read == [] and (again.already_done, again.embedded_now) == (80, 0)

    with tarfile.open(shards[3]) as tar:  # shard 3 rewritten without its last sample
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    last_key = members[-1][0].name.split(".")[0]
    with tarfile.open(shards[3], "w") as tar:
        for m, data in members:
            if m.name.split(".")[0] != last_key:
                tar.addfile(m, io.BytesIO(data))
    read.clear()
    changed = deepfeat.extract(str(tmp_path / "shards"), out, backbone=lite0, **kw)
    assert len(read) == 2  # the changed shard's two parts, compared id by id; the other shards' not read
    assert (changed.embedded_now, changed.already_done, changed.vanished_since) == (0, 79, 1)


def test_a_part_holding_a_finished_and_an_unfinished_shard_resumes_exactly(
    fm_dir: Path, lite0, tmp_path: Path, monkeypatch
) -> None:
    """Parts closed by time at batch boundaries hold the end of one shard and the start of the next: the
    resume reads such a part's ledger (its second shard is unfinished), drops the finished shard's
    inputs, and counts nothing as vanished."""
    from deepfeat.store.manifest import Manifest

    _write_shards(fm_dir, tmp_path / "shards", per_shard=3)
    kw = dict(KW, batch_size=4, part_seconds=1e-9)  # every batch is its own part; batches span shards
    out = tmp_path / "store"
    _interrupted_at_commit(3, monkeypatch, str(tmp_path / "shards"), out, backbone=lite0, **kw)
    records = [
        {os.path.basename(k.split("|")[0]): done for k, done in p.containers.items()} for p in Manifest(str(out)).parts
    ]
    assert records == [{"00000.tar": True, "00001.tar": False}, {"00001.tar": True, "00002.tar": False}]
    s = deepfeat.extract(str(tmp_path / "shards"), out, backbone=lite0, **kw)
    assert (s.already_done, s.vanished_since, s.embedded_total) == (8, 0, 80)
    deepfeat.extract(str(tmp_path / "shards"), tmp_path / "uninterrupted", backbone=lite0, **kw)
    _assert_same_as_folder(out, _by_sha(tmp_path / "uninterrupted"))  # bit-identical, nothing twice

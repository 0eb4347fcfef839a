#!/usr/bin/env python
"""Sources side by side: the same Fashion-MNIST images as a folder, WebDataset shards and Parquet.

One run, one process: 10,000 Fashion-MNIST PNGs (500 per class of train and test) are written
as a class folder, as 10 WebDataset ``.tar`` shards (written with ``webdataset.TarWriter``:
``.png`` + ``.cls`` + ``.json``) and as 2 Parquet files (image bytes, label, split; row groups
of 1,000). For each source:

* discovery: ``open_source(...).discover()`` on a cold index (shards: headers read) and warm
  (shards: the index cache; folders and Parquet have none), median of 3;
* end to end: ``deepfeat.extract`` of the bundled EfficientNet-Lite0 ``pre_logits`` at 64 px
  (torch runtime, so the CNN costs the same everywhere; default decode workers) into a fresh
  store, img/s from the plan event to the end;
* decode only: the decode workers alone over the whole source (``DecodePool.map``), img/s --
  what the source costs before the CNN.

Ratios are against the folder. Usage:
    python benchmarks/sources.py            # ~4 min on 2 cores
    python benchmarks/sources.py --n 2000   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def build(root: Path, n: int) -> dict[str, str]:
    """The three sources over the same ``n`` images; returns kind -> spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    from deepfeat.datasets import write_fashion_mnist

    per_class = max(1, n // 20)
    write_fashion_mnist(root / "folder", per_class=per_class)
    files = sorted((root / "folder").rglob("*.png"))
    rows = [(f.parent.parent.name, f.parent.name, f.stem, f.read_bytes()) for f in files]
    shards = root / "shards"
    shards.mkdir()
    per_shard = max(1, len(rows) // 10)
    for s in range(0, len(rows), per_shard):
        with wds.TarWriter(str(shards / f"{s // per_shard:05d}.tar")) as sink:
            for split, label, stem, data in rows[s : s + per_shard]:
                sink.write({"__key__": stem, "png": data, "cls": label, "json": {"split": split}})
    table = pa.table(
        {
            "key": [r[2] for r in rows],
            "label": [r[1] for r in rows],
            "split": [r[0] for r in rows],
            "image": [r[3] for r in rows],
        }
    )
    (root / "parquet").mkdir()
    half = len(rows) // 2
    pq.write_table(table.slice(0, half), root / "parquet" / "a.parquet", row_group_size=1000)
    pq.write_table(table.slice(half), root / "parquet" / "b.parquet", row_group_size=1000)
    return {"folder": str(root / "folder"), "webdataset": str(shards), "parquet": str(root / "parquet")}


def options(kind: str) -> dict[str, Any]:
    return {"webdataset": {"split_field": "split"}, "parquet": {"id_field": "key", "split_field": "split"}}.get(kind, {})


def discovery_seconds(spec: str, kind: str) -> tuple[float, float, int]:
    from deepfeat.sources import open_source

    shutil.rmtree(os.path.join(os.environ["DEEPFEAT_CACHE_DIR"], "shard-index"), ignore_errors=True)
    t = time.perf_counter()
    n = len(open_source(spec, **options(kind)).discover().items)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(3):
        t = time.perf_counter()
        open_source(spec, **options(kind)).discover()
        warm.append(time.perf_counter() - t)
    return cold, statistics.median(warm), n


def decode_rate(spec: str, kind: str, workers: int) -> float:
    from deepfeat.data.decode import DecodePolicy
    from deepfeat.data.decode_pool import DecodePool
    from deepfeat.data.preprocess import Preprocess
    from deepfeat.sources import open_source

    items = open_source(spec, **options(kind)).discover().items
    batches = [[(it.id, it.locator, 0) for it in items[s : s + 64]] for s in range(0, len(items), 64)]
    pre = Preprocess(input_size=(64, 64)).to_dict()
    t = time.perf_counter()
    with DecodePool(workers, pre, DecodePolicy()) as pool:
        n = sum(len(results) for _, results in pool.map(batches))
    return n / (time.perf_counter() - t)


def extract_rate(spec: str, kind: str, out: Path) -> float:
    import deepfeat
    from deepfeat.sources import open_source

    marks: dict[str, float] = {}

    def progress(event: dict[str, Any]) -> None:
        if event.get("phase") == "plan":
            marks["start"] = time.perf_counter()

    s = deepfeat.extract(
        open_source(spec, **options(kind)),
        out,
        layers="pre_logits",
        input_size=64,
        runtime="torch",
        precision="fp32",
        batch_size=64,
        progress=progress,
    )
    return (s.embedded_now + s.failed_now) / (time.perf_counter() - marks["start"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images (default 10,000)")
    args = ap.parse_args()
    from deepfeat.data.decode_pool import DecodePool  # noqa: F401 - import cost out of the timings
    from deepfeat.extraction import default_workers
    from deepfeat.runtimes import cpu_model
    from deepfeat.runtimes.base import cpu_flags

    tmp = Path(tempfile.mkdtemp(prefix="deepfeat-bench-sources-"))
    os.environ["DEEPFEAT_CACHE_DIR"] = str(tmp / "cache")
    try:
        log(f"writing {args.n:,} Fashion-MNIST images as a folder, shards and Parquet")
        specs = build(tmp, args.n)
        workers = default_workers()
        results: dict[str, dict[str, float]] = {}
        for kind, spec in specs.items():
            log(f"{kind}: discovery")
            cold, warm, n = discovery_seconds(spec, kind)
            log(f"{kind}: decode only")
            dec = decode_rate(spec, kind, workers)
            log(f"{kind}: extract")
            e2e = extract_rate(spec, kind, tmp / f"store-{kind}")
            results[kind] = {"n": n, "cold": cold, "warm": warm, "decode": dec, "e2e": e2e}
        flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
        print(f"\nCPU: {cpu_model()} ({os.cpu_count()} cores; {' '.join(flags)}); decode workers: {workers}")
        print(
            f"{'source':<11} {'inputs':>7} {'discover cold':>14} {'warm':>8} {'decode img/s':>13} "
            f"{'extract img/s':>14} {'e2e vs folder':>14}"
        )
        base = results["folder"]["e2e"]
        for kind, r in results.items():
            print(
                f"{kind:<11} {r['n']:>7,} {r['cold']:>12.2f} s {r['warm']:>6.2f} s {r['decode']:>13,.0f} "
                f"{r['e2e']:>14,.0f} {r['e2e'] / base:>13.2f}x"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

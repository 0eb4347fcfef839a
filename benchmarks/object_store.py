#!/usr/bin/env python
"""Shards in an S3 bucket against the same shards on local disk.

The same ``--n`` Fashion-MNIST PNGs are written as 10 WebDataset shards (``webdataset.TarWriter``:
``.png`` + ``.cls`` + ``.json``) on local disk and uploaded to a bucket of an S3 server on localhost
(moto's server mode, started as its own process: ``python -m moto.server``). For each copy:

* discovery, cold (the shard index cache emptied: every shard read front to back once) and warm;
* decode only: the decode workers alone over every sample (``DecodePool.map``, batches of 64: one
  ranged GET per batch and shard for the bucket), img/s;
* end to end: ``deepfeat.extract`` of the bundled EfficientNet-Lite0 ``pre_logits`` at 64 px (torch runtime,
  fp32, batch 64, default decode workers) into a fresh store, img/s from the plan event to the end.

Runs alternate (disk, bucket, disk, bucket, ...) ``--repeat`` times; medians are printed with the bucket's
ratio to the disk (the target: extraction within 10 %). A localhost server measures deepfeat's own cost
of the remote path (requests, coalescing, copies), not a real network's latency or bandwidth.

    python benchmarks/object_store.py                 # 10,000 images, 3 rounds; ~20 min on 2 cores
    python benchmarks/object_store.py --n 2000 --repeat 1   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_shards(root: Path, n: int) -> Path:
    import webdataset as wds

    from deepfeat.datasets import write_fashion_mnist

    write_fashion_mnist(root / "folder", per_class=max(1, n // 20))
    files = sorted((root / "folder").rglob("*.png"))
    shards = root / "shards"
    shards.mkdir()
    per_shard = max(1, len(files) // 10)
    for s in range(0, len(files), per_shard):
        with wds.TarWriter(str(shards / f"{s // per_shard:05d}.tar")) as sink:
            for f in files[s : s + per_shard]:
                sink.write(
                    {
                        "__key__": f"{f.parent.parent.name}_{f.parent.name}_{f.stem}".replace(" ", "_"),
                        "png": f.read_bytes(),
                        "cls": f.parent.name,
                        "json": {"split": f.parent.parent.name},
                    }
                )
    return shards


def start_server() -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}"


def upload(shards: Path, endpoint: str) -> str:
    import boto3

    client = boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
    )
    client.create_bucket(Bucket="lake")
    for p in sorted(shards.glob("*.tar")):
        client.upload_file(str(p), "lake", f"shards/{p.name}")
    return "s3://lake/shards/{00000..%05d}.tar" % (len(list(shards.glob("*.tar"))) - 1)


def discovery(spec: str) -> tuple[float, float, int]:
    from deepfeat.sources import open_source

    shutil.rmtree(os.path.join(os.environ["DEEPFEAT_CACHE_DIR"], "shard-index"), ignore_errors=True)
    t = time.perf_counter()
    n = len(open_source(spec, split_field="split").discover().items)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    open_source(spec, split_field="split").discover()
    return cold, time.perf_counter() - t, n


def decode_rate(spec: str, workers: int) -> float:
    from deepfeat.data.decode import DecodePolicy
    from deepfeat.data.decode_pool import DecodePool
    from deepfeat.data.preprocess import Preprocess
    from deepfeat.sources import open_source

    items = open_source(spec, split_field="split").discover().items
    batches = [[(it.id, it.locator, 0) for it in items[s : s + 64]] for s in range(0, len(items), 64)]
    t = time.perf_counter()
    with DecodePool(workers, Preprocess(input_size=(64, 64)).to_dict(), DecodePolicy()) as pool:
        n = sum(len(results) for _, results in pool.map(batches))
    return n / (time.perf_counter() - t)


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def extract_rate(spec: str, out: Path) -> float:
    import deepfeat
    from deepfeat.sources import open_source

    marks: dict[str, float] = {}

    def progress(event: dict[str, Any]) -> None:
        if event.get("phase") == "plan":
            marks["start"] = time.perf_counter()

    s = deepfeat.extract(
        open_source(spec, split_field="split"),
        out,
        layers="pre_logits",
        input_size=64,
        runtime="torch",
        precision="fp32",
        batch_size=64,
        progress=progress,
    )
    assert s.failed_now == 0 and s.excluded == 0, "every sample embedded"
    return (s.embedded_now + s.failed_now) / (time.perf_counter() - marks["start"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images (default 10,000)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds of disk + bucket (default 3)")
    args = ap.parse_args()
    from deepfeat.data.decode_pool import DecodePool  # noqa: F401 - import cost out of the timings
    from deepfeat.extraction import default_workers
    from deepfeat.runtimes import cpu_model
    from deepfeat.runtimes.base import cpu_flags

    tmp = Path(tempfile.mkdtemp(prefix="deepfeat-bench-s3-"))
    os.environ["DEEPFEAT_CACHE_DIR"] = str(tmp / "cache")
    server, endpoint = start_server()
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    try:
        log(f"writing {args.n:,} Fashion-MNIST images as 10 shards; uploading them to {endpoint}")
        shards = write_shards(tmp, args.n)
        specs = {"disk": str(shards), "s3": upload(shards, endpoint)}
        workers = default_workers()
        found: dict[str, dict[str, list[float]]] = {
            k: {"cold": [], "warm": [], "decode": [], "e2e": [], "server_cpu": []} for k in specs
        }
        n = 0
        for r in range(args.repeat):
            for kind, spec in specs.items():
                log(f"round {r + 1}: {kind}")
                cold, warm, n = discovery(spec)
                found[kind]["cold"].append(cold)
                found[kind]["warm"].append(warm)
                found[kind]["decode"].append(decode_rate(spec, workers))
                before, t = cpu_seconds(server.pid), time.perf_counter()
                found[kind]["e2e"].append(extract_rate(spec, tmp / f"store-{kind}-{r}"))
                # the S3 server shares this machine's cores: its CPU time is what a real bucket would not cost here
                found[kind]["server_cpu"].append((cpu_seconds(server.pid) - before) / (time.perf_counter() - t))
                log(
                    f"round {r + 1}: {kind}: discover {cold:.2f} s cold, {warm:.2f} s warm; decode "
                    f"{found[kind]['decode'][-1]:,.0f} img/s; extract {found[kind]['e2e'][-1]:,.1f} img/s "
                    f"(the S3 server used {found[kind]['server_cpu'][-1]:.2f} of the {os.cpu_count()} cores meanwhile)"
                )
        med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in found.items()}
        flags = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in cpu_flags()]
        print(
            f"\nCPU: {cpu_model()} ({os.cpu_count()} cores; {' '.join(flags)}); decode workers: {workers}; "
            f"{n:,} images in 10 shards; medians of {args.repeat} rounds; load average at the end: "
            f"{os.getloadavg()[0]:.1f}"
        )
        print(
            f"{'copy':<6} {'discover cold':>14} {'warm':>8} {'decode img/s':>13} {'extract img/s':>14} "
            f"{'server cores busy':>18}"
        )
        for kind, m in med.items():
            print(
                f"{kind:<6} {m['cold']:>12.2f} s {m['warm']:>6.2f} s {m['decode']:>13,.0f} {m['e2e']:>14,.1f} "
                f"{m['server_cpu']:>18.2f}"
            )
        print(
            f"s3 / disk: extract {med['s3']['e2e'] / med['disk']['e2e']:.3f}x, decode only "
            f"{med['s3']['decode'] / med['disk']['decode']:.3f}x "
            f"(per round, extract: {', '.join(f'{a / b:.3f}' for a, b in zip(found['s3']['e2e'], found['disk']['e2e']))})"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

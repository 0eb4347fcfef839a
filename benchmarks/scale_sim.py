#!/usr/bin/env python
"""Plan for 100 M inputs by measurement: the real planner, the manifest, commits and resume.

No images and no model forward: synthetic inputs fed to deepfeat's own code.

* **planning** (the real planner, as a user runs it): Parquet files of N rows (an image-bytes column of
  one byte and a label column; 100 files, row groups of 10,000) are discovered by the real
  ``ParquetSource``, inside ``deepfeat.plan_extraction`` (EfficientNet-Lite0, ``pre_logits``; the
  backbone is loaded once before the measurement, so its memory is not counted), then what ``extract``
  does before the first image is read: the resume filter of a fresh store, the job estimate, and the
  part plan (``part_bounds``) with the local engine's pending mask. Reported: seconds and the driver's
  resident memory (RSS growth of a fresh process, allocator overhead included): held afterwards and
  at the peak (sampled every millisecond).
* **folder table**: the same for the folder walker's table (synthetic ``class/img.jpg`` relative paths
  through the walker's ``TableBuilder``; walking 10^7 real files is the file system's cost, not the
  planner's).
* **per-item (before)**: the list of N ``SourceItem`` objects the planner held before container
  planning, for the same Parquet rows (up to 1 M: the comparison).
* **manifest**: bytes of ``manifest.json``, seconds to load and check it (``Manifest(...)``), and the
  cost of one commit with the protocol of earlier versions (``compact_ratio = 0``: rewrite the whole
  manifest at every commit) and with the commit log: per commit and for the whole job's commits.
* **resume**: a store of N inputs' ledgers (real Parquet ledgers of 4,096 ids each), and the pending
  filter of a resume over them and the discovered inputs (all done, plus 10 % new), as ``extract``
  runs it (``extraction.resume_filter``: the ledgers' ids decoded to digests, compared with the
  table's): seconds and peak memory.

Planning and resume run in a fresh child process per size (clean RSS figures). Sizes above
``--max-inputs`` (default 1 M) are not run: they are extrapolated linearly from the largest size run
(per input, or per part) and marked ``*``. The manifest and commit columns are always measured.

    python benchmarks/scale_sim.py                          # 100 k and 1 M
    python benchmarks/scale_sim.py --max-inputs 10000000    # 10 M too
    python benchmarks/scale_sim.py --json figures.json
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SIZES = (100_000, 1_000_000, 10_000_000, 100_000_000)
PART_SIZE = 4096  # the default: min(4096, 256 MiB / row bytes); Lite0 pre_logits float16 = 2,560 B/row
DIMS = 1280
BATCH = 32
PAGE = os.sysconf("SC_PAGE_SIZE")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss() -> int:
    """Resident bytes of this process now (after a collection, Arrow's pool returning what it keeps, and
    glibc's heap giving back its free pages: without that, pages freed by earlier steps and not yet
    returned made the baseline, and so every growth measured from it, depend on what ran before)."""
    from deepfeat.sources.table import _release_freed_memory  # glibc's malloc_trim, as the item table calls it

    gc.collect()
    pa.default_memory_pool().release_unused()
    _release_freed_memory()
    return _resident()


def _resident() -> int:
    """Resident bytes now, as they are (no collection: the sampler of :func:`timed_peak`)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def timed_peak(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, peak RSS growth in bytes while fn ran): what a step needs, not what it keeps.

    A thread samples the resident set every millisecond (the GIL lets it in at every switch interval).
    """
    import threading

    before = rss()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.001):
            peak[0] = max(peak[0], _resident())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - t
        stop.set()
        watcher.join()
    return result, seconds, max(peak[0], _resident()) - before


def timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, RSS growth in bytes) of fn()."""
    before = rss()
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    return result, seconds, rss() - before


def machine() -> dict[str, Any]:
    from deepfeat.runtimes.base import cpu_flags, cpu_model

    flags = cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    disk = shutil.disk_usage(tempfile.gettempdir())
    return {
        "cpu": cpu_model(),
        "flags": shown,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "tmp": tempfile.gettempdir(),
        "tmp_free_gib": round(disk.free / 2**30, 1),
        "load_average": os.getloadavg(),
    }


# ------------------------------------------------------------------------------- synthetic inputs
FILES = 100  # Parquet files of a planning run (containers)
ROW_GROUP = 10_000


def write_parquet(n: int, work: str) -> str:
    """A folder of FILES Parquet files holding n rows: a one-byte image column and a label column."""
    folder = os.path.join(work, f"lake{n}")
    os.makedirs(folder)
    per = -(-n // FILES)
    for f in range(FILES):
        k = min(per, n - f * per)
        if k <= 0:
            break
        labels = pa.DictionaryArray.from_arrays(
            pa.array(np.arange(f * per, f * per + k) % 1000, pa.int32()), pa.array([f"class_{c:04d}" for c in range(1000)])
        ).cast(pa.string())
        table = pa.table({"jpg": pa.array([b"x"] * k, pa.binary()), "label": labels})
        pq.write_table(table, os.path.join(folder, f"{f:05d}.parquet"), row_group_size=ROW_GROUP)
    return folder


def planning(n: int, folder: str) -> dict[str, float]:
    """The real planner over the Parquet rows of ``folder``: plan_extraction, resume filter, estimate, parts."""
    import deepfeat
    from deepfeat.engines.parts import part_bounds, pending_mask
    from deepfeat.extraction import resume_filter
    from deepfeat.models.registry import load_backbone

    backbone = load_backbone("efficientnet_lite0")
    small = write_parquet(1000, os.path.dirname(folder) + f"/warm{os.getpid()}")
    deepfeat.plan_extraction(small, backbone=backbone, layers="pre_logits", dtype="float16")  # warm every path

    def plan() -> Any:
        return deepfeat.plan_extraction(folder, backbone=backbone, layers="pre_logits", dtype="float16")

    before = rss()
    p, t_disc, peak_disc = timed_peak(plan)
    held_disc = rss() - before
    assert len(p.discovery.items) == n, len(p.discovery.items)

    def rest() -> tuple[Any, list, dict]:
        pending, _ = resume_filter(p.discovery.items, lambda: iter(()))  # a fresh store: nothing done
        est = p.estimate(pending)
        bounds = part_bounds(pending.groups(), p.part_size)
        mask = pending_mask(p.discovery.items, pending)
        return (pending, mask), bounds, est

    (kept, bounds, est), t_rest, peak_rest = timed_peak(rest)
    held_all = rss() - before
    res = {
        "parts": len(bounds),
        "part_size": p.part_size,
        "t_discover": t_disc,
        "m_discover_peak": peak_disc,
        "m_discover": held_disc,
        "t_rest": t_rest,
        "m_rest_peak": held_disc + peak_rest,
        "m_held": held_all,
        "table_bytes": p.discovery.items.nbytes(),
        "rows": est["rows"],
    }
    del p, kept, bounds
    gc.collect()
    return res


def folder_table(n: int) -> dict[str, float]:
    """The walker's table for n files of a class-folder data set (what a folder source holds per input)."""
    from deepfeat.sources.table import FileRows, TableBuilder

    def build() -> Any:
        b = TableBuilder()
        c = b.container(FileRows("/data/imagenet-like"))
        for i in range(n):
            split = "train" if i % 10 else "val"
            rel = f"{split}/class_{i % 1000:04d}/img_{i:09d}.jpg"
            b.add(c, rel, label=f"class_{i % 1000:04d}", split=split, size=110_000 + i % 9973, text=rel)
        return b.build(sort_by_text=True)

    before = rss()
    table, t, peak = timed_peak(build)
    held = rss() - before
    return {"t": t, "m_peak": peak, "m_held": held, "table_bytes": table.nbytes()}


def per_item(n: int, folder: str) -> dict[str, float]:
    """Before container planning: one SourceItem per Parquet row (as ParquetSource built them)."""
    from deepfeat.sources.items import SourceItem, item_id

    files = sorted(os.listdir(folder))
    per = -(-n // len(files))

    def build() -> list:
        out = []
        for i in range(n):
            f, row = divmod(i, per)
            path = os.path.join(folder, files[f])
            rel = f"{files[f]}#{row}"
            out.append(
                SourceItem(
                    id=item_id(rel),
                    path=f"{path}#{row}",
                    relpath=rel,
                    label=f"class_{i % 1000:04d}",
                    split=None,
                    size=0,
                    ref=("parquet", path, row // ROW_GROUP, row % ROW_GROUP, "jpg", None),
                    group=path,
                )
            )
        return out

    before = rss()
    items, t, peak = timed_peak(build)
    held = rss() - before
    del items
    return {"t": t, "m_peak": peak, "m_held": held}


# ------------------------------------------------------------------------------- the manifest
def record(i: int, rows: int = PART_SIZE) -> Any:
    from deepfeat.store.writer import PartRecord

    h = lambda s: hashlib.sha256(f"{i}:{s}".encode()).hexdigest()  # noqa: E731
    files = {
        "pre_logits.npy": {"sha256": h("f"), "bytes": rows * DIMS * 2 + 128, "shape": [rows, DIMS], "dtype": "float16"},
        "rows.parquet": {"sha256": h("r"), "bytes": 180_000 + i % 1000},
        "ledger.parquet": {"sha256": h("l"), "bytes": 90_000 + i % 1000},
    }
    return PartRecord(f"{i:08d}", rows, rows, rows - i % 3, i % 3, files, {"train": rows - rows // 10, "val": rows // 10})


METADATA = {
    "format": "deepfeat-store",
    "format_version": 1,
    "dtype": "float16",
    "layers": [{"name": "pre_logits", "key": "pre_logits", "shape": [DIMS], "pool": "avg", "dims": DIMS}],
}


def manifest_figures(parts: int, work: str, commits_old: int, commits_new: int) -> dict[str, float]:
    """Size and load time of a manifest of ``parts`` parts; one commit, old protocol vs commit log."""
    from deepfeat.store.writer import Manifest

    store = os.path.join(work, f"m{parts}")
    os.makedirs(store)
    records = [record(i) for i in range(parts)]
    m = Manifest(store, METADATA)
    m.parts = list(records)
    t = time.perf_counter()
    m.save()
    t_save = time.perf_counter() - t
    size = os.path.getsize(m.path)
    loads = []
    for _ in range(2 if parts >= 10_000 else 3):
        loaded, t_load, m_load = timed(lambda: Manifest(store, METADATA))
        loads.append(t_load)
    assert len(loaded.parts) == parts
    # old protocol: every commit rewrites the whole manifest (temp + fsync + rename)
    m.compact_ratio = 0
    old = []
    for k in range(commits_old):
        t = time.perf_counter()
        m.commit(record(parts + k))
        old.append(time.perf_counter() - t)
    m.parts = list(records)
    m.save()
    # commit log: appends until the log holds 1/16 of the parts (the rewrite is timed as old[])
    m.compact_ratio = 16
    new = []
    for k in range(commits_new):
        t = time.perf_counter()
        m.commit(record(parts + k))
        new.append(time.perf_counter() - t)
    line = json.dumps({"log": "0" * 16, "part": record(parts).to_dict()}, separators=(",", ":"))
    t = time.perf_counter()
    again = Manifest(store, METADATA)
    t_load_log = time.perf_counter() - t
    assert len(again.parts) == parts + commits_new
    shutil.rmtree(store)
    return {
        "parts": parts,
        "bytes": size,
        "t_save": t_save,
        "t_load": min(loads),
        "m_records": m_load,
        "old_ms": 1e3 * statistics.median(old),
        "new_ms": 1e3 * statistics.median(new),
        "new_max_ms": 1e3 * max(new),
        "log_line_bytes": len(line) + 18,
        "t_load_with_log": t_load_log,
        "commits_in_log": commits_new,
    }


def whole_job(parts: int, rewrite: Callable[[int], float], append_s: float, ratio: int) -> tuple[float, int]:
    """Seconds of every commit of a job of ``parts`` parts, and the number of manifest rewrites.

    ``rewrite(k)`` is the cost of rewriting a manifest of k parts; ratio 0 = rewrite at every commit.
    Follows Manifest.commit's rule exactly (with counters only).
    """
    total, rewrites, compacted, logged, token = 0.0, 0, 0, 0, False
    for k in range(1, parts + 1):
        if not token or ratio <= 0 or (logged + 1) * ratio > compacted:
            total += rewrite(k)
            rewrites += 1
            compacted, logged, token = k, 0, True
        else:
            total += append_s
            logged += 1
    total += rewrite(parts) if logged else 0.0  # the end-of-run compaction
    return total, rewrites + (1 if logged else 0)


# ------------------------------------------------------------------------------- resume
def failed_part(store: str, p: int, ids: list[str], paths: list[str], labels: list[str]) -> Any:
    """Part ``p`` of ``store``: a ledger recording ``ids`` as failed (no feature files needed: a resume
    reads the same ledgers, with the same checks, as for embedded inputs), and its manifest record."""
    from deepfeat.store import layout
    from deepfeat.store.fsutil import sha256_file
    from deepfeat.store.writer import PartRecord

    k = len(ids)
    table = pa.table(
        {
            "id": ids,
            "path": paths,
            "path_bytes": [s.encode() for s in paths],
            "label": labels,
            "split": ["train"] * k,
            "status": ["failed"] * k,
            "reason": ["decode_error"] * k,
            "message": [None] * k,
        },
        schema=layout.LEDGER_SCHEMA,
    )
    d = os.path.join(store, layout.PARTS_DIR, layout.part_name(p))
    os.makedirs(d)
    path = os.path.join(d, layout.LEDGER_FILE)
    pq.write_table(table, path, compression="zstd")
    files = {layout.LEDGER_FILE: {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}}
    return PartRecord(layout.part_name(p), 0, k, 0, k, files)


def resume(n: int, work: str) -> dict[str, float]:
    """A store of n inputs' ledgers, and the pending filter of a resume over them (what extract runs).

    The parts hold ledgers only (every input recorded as failed, so no feature files are needed):
    ``FeatureStore.done_ids`` reads the same ledgers, with the same checks, as for embedded inputs.
    """
    from deepfeat.store import layout
    from deepfeat.store.fsutil import atomic_write_json
    from deepfeat.store.reader import FeatureStore
    from deepfeat.store.writer import Manifest

    store = os.path.join(work, f"r{n}")
    os.makedirs(os.path.join(store, layout.PARTS_DIR))
    atomic_write_json(os.path.join(store, layout.METADATA_FILE), METADATA)
    m = Manifest(store)
    t = time.perf_counter()
    records = []
    for p, start in enumerate(range(0, n, PART_SIZE)):
        k = min(PART_SIZE, n - start)
        rels = [f"train/class_{i % 1000:04d}/img_{i:09d}.jpg" for i in range(start, start + k)]
        paths = [f"/data/imagenet-like/{r}" for r in rels]
        ids = [hashlib.blake2b(r.encode(), digest_size=10).hexdigest() for r in rels]
        records.append(failed_part(store, p, ids, paths, [r.split("/")[1] for r in rels]))
    m.parts = records
    m.save()
    reader = FeatureStore(store, verify=False)
    t_build = time.perf_counter() - t
    ledger_bytes = sum(os.path.getsize(os.path.join(store, layout.PARTS_DIR, r.name, layout.LEDGER_FILE)) for r in records)

    # the discovered inputs (all n done, plus n/10 new) as the folder walker's table, then extract's filter
    from deepfeat.extraction import resume_filter
    from deepfeat.sources.table import FileRows, TableBuilder

    b = TableBuilder()
    c = b.container(FileRows("/data/imagenet-like"))
    for i in range(n + n // 10):
        rel = f"train/class_{i % 1000:04d}/img_{i:09d}.jpg"
        b.add(c, rel, label=rel.split("/")[1], split="train", size=110_000, text=rel)
    items = b.build()
    del b
    gc.collect()
    (pending, vanished), t_filter, m_filter = timed_peak(lambda: resume_filter(items, reader.done_id_chunks))
    assert (len(pending), vanished) == (n // 10, 0)
    del pending, items
    shutil.rmtree(store)
    return {
        "parts": len(records),
        "t_build": t_build,
        "ledger_bytes": ledger_bytes,
        "t_filter": t_filter,
        "m_filter": m_filter,
    }


def resume_containers(n: int, work: str) -> dict[str, float]:
    """A resume of n inputs in containers of 10,000 (Parquet files, shards), all finished, plus 10 % in
    new containers: extract's resume with the parts' container records (finished containers skipped,
    no ledger read) against the id-by-id filter over every ledger (what a resume did before)."""
    from deepfeat.engines.parts import container_record, part_bounds
    from deepfeat.extraction import finished_containers, resume_filter, without_containers
    from deepfeat.sources.table import Container, TableBuilder
    from deepfeat.store import layout
    from deepfeat.store.fsutil import atomic_write_json
    from deepfeat.store.reader import FeatureStore
    from deepfeat.store.writer import Manifest

    class File(Container):
        def __init__(self, path: str) -> None:
            self.group = path

        def item(self, iid: str, label: Any, split: Any, size: int, a: int, b: int, text: Any, text2: Any) -> Any:
            from deepfeat.sources.items import SourceItem

            return SourceItem(id=iid, path=self.group, relpath=str(b), label=label, split=split, size=size)

    per_file = 10_000
    b = TableBuilder()
    total = n + n // 10
    for f in range(-(-total // per_file)):
        c = b.container(File(f"/lake/{f:06d}.parquet"))
        for i in range(f * per_file, min(total, (f + 1) * per_file)):
            b.add(c, f"{f:06d}.parquet#{i}", label=f"class_{i % 1000:04d}", split="train", a=0, b=i)
    items = b.build()
    done = items[:n]  # the first n inputs (whole containers) were stored by an earlier run
    keys = items.container_keys()
    store = os.path.join(work, f"rc{n}")
    os.makedirs(os.path.join(store, layout.PARTS_DIR))
    atomic_write_json(os.path.join(store, layout.METADATA_FILE), METADATA)
    bounds = part_bounds(done.groups(), PART_SIZE)
    last_part = {}
    for p, (_, e0) in enumerate(bounds):
        last_part[int(done.cont[e0 - 1])] = p
    records = []
    for p, (s0, e0) in enumerate(bounds):
        ids = [done[i].id for i in range(s0, e0)]
        rec = failed_part(store, p, ids, [""] * len(ids), ["x"] * len(ids))
        holds = set(np.unique(done.cont[s0:e0]).tolist())
        rec.containers = container_record(keys, holds, lambda c, p=p: last_part[c] == p)
        records.append(rec)
    m = Manifest(store)
    m.parts = records
    m.save()
    reader = FeatureStore(store, verify=False)
    gc.collect()

    def by_containers() -> Any:
        finished, to_read = finished_containers(items, reader.manifest.parts)
        pending, vanished = resume_filter(items, lambda: reader.done_id_chunks(to_read))
        return (without_containers(pending, finished), vanished), len(to_read)

    ((pending, vanished), read), t_new, m_new = timed_peak(by_containers)
    assert (len(pending), vanished, read) == (n // 10, 0, 0), (len(pending), vanished, read)
    del pending
    (pending, vanished), t_old, m_old = timed_peak(lambda: resume_filter(items, reader.done_id_chunks))
    assert (len(pending), vanished) == (n // 10, 0)
    shutil.rmtree(store)
    return {"parts": len(records), "t_containers": t_new, "m_containers": m_new, "t_ledgers": t_old, "m_ledgers": m_old}


# ------------------------------------------------------------------------------- report
def fmt_s(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 100:
        return f"{s / 60:.0f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1e3:.0f} ms" if s >= 0.01 else f"{s * 1e3:.1f} ms"


def fmt_b(b: float) -> str:
    for unit, k in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(b) >= k:
            return f"{b / k:.1f} {unit}" if b / k < 100 else f"{b / k:.0f} {unit}"
    return f"{b:.0f} B"


def parts_for(n: int) -> int:
    return -(-n // PART_SIZE)


def child(what: str, n: int, work: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", what, "--n", str(n), "--work", work],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )  # its stderr goes to ours
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--child", choices=("planning", "folder", "per_item", "resume", "resume_containers"), help=argparse.SUPPRESS
    )
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument(
        "--max-inputs",
        type=int,
        default=1_000_000,
        help="largest size run for planning and resume (larger ones are extrapolated, marked *)",
    )
    ap.add_argument("--work", default=None, help="directory for the synthetic files (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    ap.add_argument("--from-json", default=None, help="print the table of figures saved by --json (no run)")
    args = ap.parse_args()
    if args.child:
        n, lake = args.n, os.path.join(args.work, f"lake{args.n}")
        result = {
            "planning": lambda: planning(n, lake),
            "folder": lambda: folder_table(n),
            "per_item": lambda: per_item(n, lake),
            "resume": lambda: resume(n, args.work),
            "resume_containers": lambda: resume_containers(n, args.work),
        }[args.child]()
        print(json.dumps(result))
        return
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        report(saved["machine"], *({int(k): v for k, v in saved[key].items()} for key in ("planning", "resume", "manifest")))
        return
    mach = machine()
    work = tempfile.mkdtemp(prefix="deepfeat-scale-", dir=args.work)
    log(f"work dir {work}")
    try:
        plan: dict[int, dict] = {}
        res: dict[int, dict] = {}
        man: dict[int, dict] = {}
        for n in SIZES:
            if n <= args.max_inputs:  # each in a fresh process: RSS growth without reused arenas
                log(f"writing {n:,} Parquet rows")
                write_parquet(n, work)
                log(f"planning {n:,} inputs")
                plan[n] = child("planning", n, work)
                plan[n]["folder"] = child("folder", n, work)
                if n <= 1_000_000:
                    plan[n]["per_item"] = child("per_item", n, work)
                shutil.rmtree(os.path.join(work, f"lake{n}"))
                log(f"resume {n:,} inputs")
                res[n] = child("resume", n, work)
            p = parts_for(n)
            log(f"manifest of {p:,} parts")
            man[n] = manifest_figures(p, work, commits_old=3 if p > 10_000 else 5 if p > 1000 else 20, commits_new=50)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = report(mach, plan, res, man)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mach, "planning": plan, "resume": res, "manifest": man, "table": rows}, f, indent=1)


def report(mach: dict[str, Any], plan: dict[int, dict], res: dict[int, dict], man: dict[int, dict]) -> list[dict[str, str]]:
    """Print the tables and the details; returns the rows of the planning table."""
    ran = [n for n in SIZES if n in plan]
    big = ran[-1]

    def per_input(table: dict[int, dict], n: int, get: Callable[[dict], float]) -> tuple[float, str]:
        """(value at n, "*" when extrapolated linearly per input from the largest size run)."""
        if n in table:
            return get(table[n]), ""
        return get(table[big]) * n / big, "*"

    # rewrite cost of a manifest of k parts: interpolated between the measured rewrites
    xs = np.array([man[n]["parts"] for n in SIZES], dtype=float)
    ys = np.array([man[n]["old_ms"] / 1e3 for n in SIZES])
    rewrite = lambda k: float(np.interp(k, xs, ys))  # noqa: E731

    print(
        f"\nCPU: {mach['cpu']} ({mach['cores']} cores; flags {' '.join(mach['flags']) or '-'}); "
        f"Python {mach['python']}, pyarrow {mach['pyarrow']}; files on {mach['tmp']}; "
        f"load average at start {mach['load_average'][0]:.1f}"
    )
    print(
        f"Parquet: {FILES} files, row groups of {ROW_GROUP:,}; part size {PART_SIZE:,} inputs; "
        f"* = extrapolated linearly from {big:,} inputs (not run; --max-inputs)\n"
    )
    rows = []
    for n in SIZES:
        mf = man[n]
        held, e = per_input(plan, n, lambda r: r["m_held"])
        peak, _ = per_input(plan, n, lambda r: max(r["m_discover_peak"], r["m_rest_peak"]))
        t_plan, _ = per_input(plan, n, lambda r: r["t_discover"] + r["t_rest"])
        folder, _ = per_input(plan, n, lambda r: r["folder"]["m_held"])
        before = f"{fmt_b(plan[n]['per_item']['m_held'])}" if n in plan and "per_item" in plan[n] else "-"
        t_res, er = per_input(res, n, lambda r: r["t_filter"])
        m_res, _ = per_input(res, n, lambda r: r["m_filter"])
        parts = f"{plan[n]['parts']:,}" if n in plan else f"{parts_for(n):,}*"
        rows.append(
            {
                "inputs": f"{n:,}",
                "parts": parts,
                "planner held": f"{fmt_b(held)}{e} ({held / n:.0f} B/input)",
                "planner peak": f"{fmt_b(peak)}{e} ({peak / n:.0f} B/input)",
                "plan (s)": f"{fmt_s(t_plan)}{e}",
                "folder table held": f"{fmt_b(folder)}{e}",
                "per-item list (before)": before,
                "Ray driver": f"{fmt_b(held + mf['m_records'])}{e}",
                "resume filter": f"{fmt_s(t_res)}, {fmt_b(m_res)}{er}",
            }
        )
    heads = list(rows[0])
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" for _ in heads) + "|")
    for r in rows:
        print("| " + " | ".join(r[h] for h in heads) + " |")
    print()
    heads2 = ["inputs", "parts", "manifest.json", "load", "commit old", "commit new", "all commits old", "all commits new"]
    print("| " + " | ".join(heads2) + " |")
    print("|" + "|".join("---" for _ in heads2) + "|")
    for n in SIZES:
        mf, p = man[n], parts_for(n)
        job_old, _ = whole_job(p, rewrite, 0.0, 0)
        job_new, rw = whole_job(p, rewrite, mf["new_ms"] / 1e3, 16)
        print(
            f"| {n:,} | {p:,} | {fmt_b(mf['bytes'])} | {fmt_s(mf['t_load'])} | {fmt_s(mf['old_ms'] / 1e3)} | "
            f"{fmt_s(mf['new_ms'] / 1e3)} | {fmt_s(job_old)} | {fmt_s(job_new)} ({rw} rewrites) |"
        )
    print()
    for n in ran:
        pl, rs = plan[n], res[n]
        fo = pl["folder"]
        line = (
            f"  {n:>11,} inputs: plan_extraction {fmt_s(pl['t_discover'])}, held {fmt_b(pl['m_discover'])} "
            f"({pl['m_discover'] / n:.0f} B/input; the table's columns {pl['table_bytes'] / n:.0f} B/input), "
            f"peak {fmt_b(pl['m_discover_peak'])}; resume filter + estimate + parts + pending mask "
            f"{fmt_s(pl['t_rest'])}, peak {fmt_b(pl['m_rest_peak'])}, all held {fmt_b(pl['m_held'])} "
            f"({pl['m_held'] / n:.0f} B/input); {pl['parts']:,} parts of {pl['part_size']:,}; folder table "
            f"{fmt_s(fo['t'])}, held {fmt_b(fo['m_held'])} ({fo['m_held'] / n:.0f} B/input), peak "
            f"{fmt_b(fo['m_peak'])}"
        )
        if "per_item" in pl:
            pi = pl["per_item"]
            line += f"; per-item list (before) {fmt_s(pi['t'])}, held {fmt_b(pi['m_held'])} ({pi['m_held'] / n:.0f} B/input)"
        line += (
            f"; resume: ledgers {fmt_b(rs['ledger_bytes'])}, filter {fmt_s(rs['t_filter'])}, peak "
            f"{fmt_b(rs['m_filter'])} ({rs['m_filter'] / n:.0f} B per done id)"
        )
        print(line)
    for n in SIZES:
        mf = man[n]
        print(
            f"  {mf['parts']:>6,} parts: commit old {mf['old_ms']:8.1f} ms, new median {mf['new_ms']:5.1f} ms "
            f"(max {mf['new_max_ms']:6.1f}), log line {mf['log_line_bytes']:.0f} B, load with "
            f"{mf['commits_in_log']} logged parts {fmt_s(mf['t_load_with_log'])}, part records in memory "
            f"{fmt_b(mf['m_records'])}"
        )
    return rows


if __name__ == "__main__":
    main()

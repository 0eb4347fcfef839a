#!/usr/bin/env python
"""Plan for 100 M inputs by simulation: planning, the manifest, commits, resume and the Ray driver.

No images and no model: synthetic inputs (real :class:`deepfeat.sources.items.SourceItem` objects
with realistic ids and paths) and synthetic part records (sha256 digests, counts and sizes of a
4,096-input part of EfficientNet-Lite0 ``pre_logits`` in float16), fed to the store's own code:
``plan_parts`` / ``part_batches`` (what the local and Ray engines plan), :class:`Manifest`
(load, commit, compaction) and ``FeatureStore.done_ids`` (what a resume reads).

Sizes: 100 k, 1 M, 10 M and 100 M inputs = 25, 245, 2,442 and 24,415 parts of 4,096 inputs
(the default part size: 256 MiB of features, at most 4,096 inputs).

* **planning**: the discovery list (N SourceItems), the pending filter of a fresh run, the part
  plan (``plan_parts``) and the Ray driver's decode batches (``part_batches``, batch 32): seconds
  and resident memory (RSS growth of this process, allocator overhead included).
* **manifest**: bytes of ``manifest.json``, seconds to load and check it (``Manifest(...)``), and
  the cost of one commit with the protocol of earlier versions (``compact_ratio = 0``: rewrite
  the whole manifest at every commit) and with the commit log (append one fsync'd line; rewrite
  when the log holds 1/16 of the parts): per commit and for the whole job's commits.
* **resume**: ``done_ids()`` (read the ``id`` column of every part's ledger into a Python set)
  over real, synthetic ledger files; then the pending filter of a resume over those ledgers and
  the discovered inputs (all done, plus 10 % new) side by side: with Python sets of the done and
  current ids (earlier versions) and with ``extraction.resume_filter`` (the ids' 10 digest bytes
  decoded from the ledgers' Arrow buffers, sorted and searched with numpy: what ``extract`` runs
  now). Memory is the peak RSS growth while each runs (sampled every millisecond): what a resume
  needs on top of the discovery list.
* **Ray driver**: the memory it holds for the job: discovery list + part plan + decode batches
  + the manifest's part records.

Planning and resume run in a fresh child process per size (clean RSS figures). Sizes above
``--max-inputs`` (default 1 M) are not run for the planning / resume columns: they are
extrapolated linearly from the largest size run (per input, or per part) and marked ``*``. The
manifest and commit columns are always measured (they need no per-input objects).

    python benchmarks/scale_sim.py                      # ~4 min on 2 cores
    python benchmarks/scale_sim.py --max-inputs 10000000   # runs 10 M too (~6 GiB RAM, ~15 min)
    python benchmarks/scale_sim.py --json figures.json
"""
from __future__ import annotations

import argparse
import dataclasses
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
    """Resident bytes of this process now (after a collection, and Arrow's pool returning what it keeps)."""
    gc.collect()
    pa.default_memory_pool().release_unused()
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


def machine() -> dict[str, Any]:
    from deepfeat.runtimes.base import cpu_flags, cpu_model

    flags = cpu_flags()
    shown = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    disk = shutil.disk_usage(tempfile.gettempdir())
    return {"cpu": cpu_model(), "flags": shown, "cores": os.cpu_count(), "python": platform.python_version(),
            "pyarrow": pa.__version__, "tmp": tempfile.gettempdir(), "tmp_free_gib": round(disk.free / 2**30, 1),
            "load_average": os.getloadavg()}


# ------------------------------------------------------------------------------- synthetic inputs


def make_items(n: int) -> list:
    """N SourceItems shaped like a class-folder data set (ids as deepfeat makes them: blake2b-80 of relpath)."""
    from deepfeat.sources.items import SourceItem

    names = {f.name for f in dataclasses.fields(SourceItem)}
    root = "/data/imagenet-like"
    out = []
    for i in range(n):
        split = "train" if i % 10 else "val"
        rel = f"{split}/class_{i % 1000:04d}/img_{i:09d}.jpg"
        kw: dict[str, Any] = {"id": hashlib.blake2b(rel.encode(), digest_size=10).hexdigest(),
                              "path": f"{root}/{rel}", "relpath": rel, "label": f"class_{i % 1000:04d}",
                              "split": split, "size": 110_000 + i % 9973}
        out.append(SourceItem(**{k: v for k, v in kw.items() if k in names}))
    return out


class _Plan:
    """What ``part_batches`` asks of an ExtractPlan: the augmented views of an input (none here)."""

    def views_for(self, item: Any) -> int:
        return 0


def timed(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """(result, seconds, RSS growth in bytes) of fn()."""
    before = rss()
    t = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - t
    return result, seconds, rss() - before


def planning(n: int) -> dict[str, float]:
    from deepfeat.engines.parts import part_batches, plan_parts

    items, t_items, m_items = timed(lambda: make_items(n))
    done: set[str] = set()
    (pending, current), t_pending, m_pending = timed(
        lambda: ([it for it in items if it.id not in done], {it.id for it in items}))
    parts, t_parts, m_parts = timed(lambda: plan_parts(pending, PART_SIZE, 0))
    plan = _Plan()
    batches, t_batches, m_batches = timed(lambda: [part_batches(its, BATCH, plan) for _, its in parts])
    res = {"parts": len(parts), "t_items": t_items, "m_items": m_items, "t_pending": t_pending,
           "m_pending": m_pending, "t_plan": t_parts, "m_plan": m_parts, "t_batches": t_batches,
           "m_batches": m_batches}
    del items, pending, current, parts, batches
    gc.collect()
    return res


# ------------------------------------------------------------------------------- the manifest
def record(i: int, rows: int = PART_SIZE) -> Any:
    from deepfeat.store.writer import PartRecord

    h = lambda s: hashlib.sha256(f"{i}:{s}".encode()).hexdigest()  # noqa: E731
    files = {"pre_logits.npy": {"sha256": h("f"), "bytes": rows * DIMS * 2 + 128, "shape": [rows, DIMS],
                                "dtype": "float16"},
             "rows.parquet": {"sha256": h("r"), "bytes": 180_000 + i % 1000},
             "ledger.parquet": {"sha256": h("l"), "bytes": 90_000 + i % 1000}}
    return PartRecord(f"{i:08d}", rows, rows, rows - i % 3, i % 3, files,
                      {"train": rows - rows // 10, "val": rows // 10})


METADATA = {"format": "deepfeat-store", "format_version": 1, "dtype": "float16",
            "layers": [{"name": "pre_logits", "key": "pre_logits", "shape": [DIMS], "pool": "avg", "dims": DIMS}]}


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
    return {"parts": parts, "bytes": size, "t_save": t_save, "t_load": min(loads), "m_records": m_load,
            "old_ms": 1e3 * statistics.median(old), "new_ms": 1e3 * statistics.median(new),
            "new_max_ms": 1e3 * max(new), "log_line_bytes": len(line) + 18,
            "t_load_with_log": t_load_log, "commits_in_log": commits_new}


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
def resume(n: int, work: str) -> dict[str, float]:
    """A store of n inputs' ledgers: ``done_ids()`` (what a resume runs) vs a sorted array of ids.

    The parts hold ledgers only (every input recorded as failed, so no feature files are needed):
    ``FeatureStore.done_ids`` reads the same ledgers, with the same checks, as for embedded inputs.
    """
    from deepfeat.store import layout
    from deepfeat.store.fsutil import atomic_write_json, sha256_file
    from deepfeat.store.reader import FeatureStore
    from deepfeat.store.writer import Manifest, PartRecord

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
        table = pa.table({"id": [hashlib.blake2b(r.encode(), digest_size=10).hexdigest() for r in rels],
                          "path": paths, "path_bytes": [s.encode() for s in paths],
                          "label": [r.split("/")[1] for r in rels], "split": ["train"] * k,
                          "status": ["failed"] * k, "reason": ["decode_error"] * k, "message": [None] * k},
                         schema=layout.LEDGER_SCHEMA)
        d = os.path.join(store, layout.PARTS_DIR, layout.part_name(p))
        os.makedirs(d)
        path = os.path.join(d, layout.LEDGER_FILE)
        pq.write_table(table, path, compression="zstd")
        records.append(PartRecord(layout.part_name(p), 0, k, 0, k,
                                  {layout.LEDGER_FILE: {"sha256": sha256_file(path), "bytes": os.path.getsize(path)}}))
    m.parts = records
    m.save()
    reader = FeatureStore(store, verify=False)
    t_build = time.perf_counter() - t
    ledger_bytes = sum(os.path.getsize(os.path.join(store, layout.PARTS_DIR, r.name, layout.LEDGER_FILE))
                       for r in records)
    done, t_done, m_done = timed(reader.done_ids)
    assert len(done) == n
    del done
    gc.collect()

    # what a resume does with them: the pending filter of the discovered inputs (all n done, plus n/10 new)
    from deepfeat.extraction import resume_filter
    from deepfeat.sources.items import SourceItem

    rels = [f"train/class_{i % 1000:04d}/img_{i:09d}.jpg" for i in range(n + n // 10)]
    items = [SourceItem(hashlib.blake2b(r.encode(), digest_size=10).hexdigest(), f"/data/imagenet-like/{r}", r,
                        r.split("/")[1], "train", 110_000) for r in rels]
    del rels
    gc.collect()

    def with_sets() -> tuple[list, int]:
        """The resume of earlier versions: the done ids and the current ids as Python sets."""
        done = reader.done_ids()
        current = {it.id for it in items}
        return [it for it in items if it.id not in done], len(done - current)

    (pending, vanished), t_sets, m_sets = timed_peak(with_sets)
    assert (len(pending), vanished) == (n // 10, 0)
    del pending
    gc.collect()
    (pending, vanished), t_arrow, m_arrow = timed_peak(lambda: resume_filter(items, reader.done_id_chunks))
    assert (len(pending), vanished) == (n // 10, 0)
    del pending, items
    shutil.rmtree(store)
    return {"parts": len(records), "t_build": t_build, "ledger_bytes": ledger_bytes, "t_done": t_done,
            "m_done": m_done, "t_sets": t_sets, "m_sets": m_sets, "t_arrow": t_arrow, "m_arrow": m_arrow}


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
    out = subprocess.run([sys.executable, __file__, "--child", what, "--n", str(n), "--work", work],
                         check=True, stdout=subprocess.PIPE, text=True)  # its stderr goes to ours
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--child", choices=("planning", "resume"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--max-inputs", type=int, default=1_000_000,
                    help="largest size run for planning and resume (larger ones are extrapolated, marked *)")
    ap.add_argument("--work", default=None, help="directory for the synthetic stores (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON to this file")
    ap.add_argument("--from-json", default=None, help="print the table of figures saved by --json (no run)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(planning(args.n) if args.child == "planning" else resume(args.n, args.work)))
        return
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        report(saved["machine"], *({int(k): v for k, v in saved[key].items()}
                                   for key in ("planning", "resume", "manifest")))
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
                log(f"planning {n:,} inputs")
                plan[n] = child("planning", n, work)
                log(f"resume {n:,} inputs")
                res[n] = child("resume", n, work)
            p = parts_for(n)
            log(f"manifest of {p:,} parts")
            man[n] = manifest_figures(p, work, commits_old=3 if p > 10_000 else 5 if p > 1000 else 20,
                                      commits_new=50)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = report(mach, plan, res, man)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": mach, "planning": plan, "resume": res, "manifest": man, "table": rows}, f,
                      indent=1)


def report(mach: dict[str, Any], plan: dict[int, dict], res: dict[int, dict], man: dict[int, dict]
           ) -> list[dict[str, str]]:
    """Print the table and the details; returns the table's rows."""
    ran = [n for n in SIZES if n in plan]
    ref_plan, ref_res = plan[ran[-1]], res[ran[-1]]

    def scaled(table: dict[int, dict], ref: dict, n: int, key: str, by_parts: bool = False) -> tuple[float, bool]:
        if n in table:
            return table[n][key], False
        base = ref["parts"] if by_parts else ran[-1]
        return ref[key] * ((parts_for(n) if by_parts else n) / base), True

    # rewrite cost of a manifest of k parts: interpolated between the measured rewrites
    xs = np.array([man[n]["parts"] for n in SIZES], dtype=float)
    ys = np.array([man[n]["old_ms"] / 1e3 for n in SIZES])
    rewrite = lambda k: float(np.interp(k, xs, ys))  # noqa: E731

    rows = []
    for n in SIZES:
        p = parts_for(n)
        mf = man[n]
        cells: dict[str, str] = {"inputs": f"{n:,}", "parts": f"{p:,}"}
        ext = False
        t_plan = 0.0
        m_driver = 0.0
        for key_t, key_m in (("t_items", "m_items"), ("t_pending", "m_pending"), ("t_plan", "m_plan"),
                             ("t_batches", "m_batches")):
            v, e = scaled(plan, ref_plan, n, key_t)
            t_plan += v if key_t != "t_items" else 0.0
            ext |= e
            mv, _ = scaled(plan, ref_plan, n, key_m)
            m_driver += mv  # extract keeps the pending list and the id set alive during the run
        v_items, _ = scaled(plan, ref_plan, n, "m_items")
        m_driver += mf["m_records"]
        star = "*" if ext else ""
        cells["discovery list"] = fmt_b(v_items) + star
        cells["plan (s)"] = fmt_s(t_plan) + star
        cells["Ray driver"] = fmt_b(m_driver) + star
        cells["manifest.json"] = fmt_b(mf["bytes"])
        cells["load"] = fmt_s(mf["t_load"])
        job_old, _ = whole_job(p, rewrite, 0.0, 0)
        job_new, rw = whole_job(p, rewrite, mf["new_ms"] / 1e3, 16)
        cells["commit old"] = fmt_s(mf["old_ms"] / 1e3)
        cells["commit new"] = f"{fmt_s(mf['new_ms'] / 1e3)}"
        cells["all commits old"] = fmt_s(job_old)
        cells["all commits new"] = f"{fmt_s(job_new)} ({rw} rewrites)"
        t_done, e1 = scaled(res, ref_res, n, "t_done", by_parts=True)
        m_done, e2 = scaled(res, ref_res, n, "m_done")
        t_sets, _ = scaled(res, ref_res, n, "t_sets")
        m_sets, _ = scaled(res, ref_res, n, "m_sets")
        t_arrow, _ = scaled(res, ref_res, n, "t_arrow")
        m_arrow, _ = scaled(res, ref_res, n, "m_arrow")
        star = "*" if e1 or e2 else ""
        cells["resume before (sets)"] = f"{fmt_s(t_sets)}, {fmt_b(m_sets)}{star}"
        cells["resume now (digests)"] = f"{fmt_s(t_arrow)}, {fmt_b(m_arrow)}{star}"
        rows.append(cells)

    print(f"\nCPU: {mach['cpu']} ({mach['cores']} cores; flags {' '.join(mach['flags']) or '-'}); "
          f"Python {mach['python']}, pyarrow {mach['pyarrow']}; store on {mach['tmp']}; "
          f"load average at start {mach['load_average'][0]:.1f}")
    print(f"part size {PART_SIZE:,} inputs (Lite0 pre_logits, float16); Ray decode batches of {BATCH}; "
          f"* = extrapolated linearly from {ran[-1]:,} inputs (not run; --max-inputs)\n")
    heads = list(rows[0])
    print("| " + " | ".join(heads) + " |")
    print("|" + "|".join("---" for _ in heads) + "|")
    for r in rows:
        print("| " + " | ".join(r[h] for h in heads) + " |")
    print()
    print("commit old = one commit rewriting manifest.json (the protocol before the commit log; median of "
          "3-20); commit new = one commit appending to manifest.log (median of 50; the rewrite every ~P/16 "
          "commits costs as much as 'commit old' and is counted in 'all commits new').")
    print("all commits: every commit of the job, following Manifest.commit's rule (plus the end-of-run "
          "compaction), a rewrite of k parts costing the measured 'commit old' interpolated in k.")
    for n in SIZES:
        mf = man[n]
        print(f"  {mf['parts']:>6,} parts: commit old {mf['old_ms']:8.1f} ms, new median {mf['new_ms']:5.1f} ms "
              f"(max {mf['new_max_ms']:6.1f}), log line {mf['log_line_bytes']:.0f} B, load with "
              f"{mf['commits_in_log']} logged parts {fmt_s(mf['t_load_with_log'])}, part records in memory "
              f"{fmt_b(mf['m_records'])}")
    for n in ran:
        pl, rs = plan[n], res[n]
        print(f"  {n:>11,} inputs: items {fmt_s(pl['t_items'])} / {fmt_b(pl['m_items'])} "
              f"({pl['m_items'] / n:.0f} B per input); pending+current {fmt_s(pl['t_pending'])} / "
              f"{fmt_b(pl['m_pending'])}; plan_parts {fmt_s(pl['t_plan'])} / {fmt_b(pl['m_plan'])}; "
              f"part_batches {fmt_s(pl['t_batches'])} / {fmt_b(pl['m_batches'])}; ledgers "
              f"{fmt_b(rs['ledger_bytes'])}; done_ids() {fmt_s(rs['t_done'])} / {fmt_b(rs['m_done'])} "
              f"({rs['m_done'] / n:.0f} B per id); resume filter with sets {fmt_s(rs['t_sets'])} / "
              f"{fmt_b(rs['m_sets'])} peak ({rs['m_sets'] / n:.0f} B per done id), with digests (extract's "
              f"resume_filter) {fmt_s(rs['t_arrow'])} / {fmt_b(rs['m_arrow'])} peak ({rs['m_arrow'] / n:.0f} B per "
              f"done id): {rs['m_sets'] / max(rs['m_arrow'], 1):.1f}x less memory, "
              f"{rs['t_sets'] / max(rs['t_arrow'], 1e-9):.2f}x the speed")
    return rows


if __name__ == "__main__":
    main()

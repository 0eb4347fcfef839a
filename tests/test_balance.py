"""Decode workers: how a CPU runtime is fed (timed both ways), balanced against a GPU runtime; a forced --workers is kept.

A runtime on the CPU computes on the cores the decoders use. By default a CPU run starts one decode
worker per core before the model loads, then times its first batches fed taking turns (a round of one
batch per worker decoded, then the runtime on every core) and overlapped, and keeps the faster
(``engines.local.FeedTrial``). Where the runtime does not share the cores (a GPU), the local engine
measures the CPU seconds a decode worker spends per image and the seconds the runtime spends per
image; once the first part is committed it sets the number of decode workers that keeps the runtime
fed (``engines.local.balance_workers``). The run's summary says what it chose and why. Which worker
decodes a batch, and how, never changes the features.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_array
from PIL import Image

import deepfeat
from deepfeat import extraction
from deepfeat.data import decode_pool
from deepfeat.data.decode import DecodePolicy
from deepfeat.data.decode_pool import DecodePool
from deepfeat.engines import local
from deepfeat.engines.local import (
    BALANCE_AFTER_BATCHES,
    CPU_MAX_WORKERS,
    TRIAL_BATCHES,
    TRIAL_WARMUP,
    Balance,
    FeedTrial,
    balance_workers,
    measured_balance,
)
from deepfeat.models import load_backbone
from deepfeat.runtimes import build_runtime, layer_specs


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("balance") / "photos"
    root.mkdir()
    rng = np.random.default_rng(0)
    names = ("astronaut", "coffee", "rocket", "chelsea")
    for i in range(16):
        arr = photo_array(names[i % len(names)])[..., :3]
        img = Image.fromarray(np.ascontiguousarray(arr)).resize((640, 480), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img.save(root / f"{i:03d}.jpg", quality=90)
    return root


def test_the_rule_keeps_the_runtime_fed_within_the_cores() -> None:
    assert balance_workers(0.004, 0.004, cores=8, headroom=1.0) == 1
    assert balance_workers(0.004, 0.002, cores=8, headroom=1.0) == 2
    assert balance_workers(0.010, 0.001, cores=4) == 4  # decode-bound: every core, never more
    assert balance_workers(0.0001, 0.01, cores=16) == 1  # a cheap decode needs one worker, never zero
    assert balance_workers(0.004, 0.0, cores=3) == 3
    assert (
        Balance(2, "measured", 0.0044, 0.0029).summary()
        == "2 decode workers (measured: decode 4.4 ms/img per worker, runtime 2.9 ms/img)"
    )
    assert Balance(1, "forced").summary() == "1 decode worker (forced)"
    assert (
        Balance(2, "one per core", feed="overlapped", feed_rates={"turns": 180.4, "overlapped": 210.0}).summary()
        == "2 decode workers (one per core, overlapped with the runtime: measured 180 img/s taking turns, 210 overlapped)"
    )
    assert (
        Balance(1, "forced", feed="taking turns", feed_rates={}).summary()
        == "1 decode worker (forced, taking turns with the runtime: the run ended before both ways were timed)"
    )


def test_the_trial_keeps_the_faster_way_to_feed_the_runtime() -> None:
    class Pool:
        alternate = False

        def all_warm(self) -> bool:
            return True

    for turns_s, overlapped_s, keeps in ((1.0, 2.0, True), (2.0, 1.0, False)):
        now = [0.0]
        trial = FeedTrial(Pool(), clock=lambda now=now: now[0])
        assert trial.pool.alternate  # it starts taking turns
        seen = []
        for k in range(1, TRIAL_WARMUP + 2 * TRIAL_BATCHES + 2):
            in_turns = k <= TRIAL_WARMUP + TRIAL_BATCHES
            now[0] += turns_s if in_turns else overlapped_s
            seen.append(trial.pool.alternate)
            trial.taken(10)
        assert trial.done and trial.pool.alternate is keeps
        assert seen[: TRIAL_WARMUP + TRIAL_BATCHES] == [True] * (TRIAL_WARMUP + TRIAL_BATCHES)
        assert not any(seen[TRIAL_WARMUP + TRIAL_BATCHES :])  # the second window ran overlapped
        assert trial.rates == {"turns": 10 / turns_s, "overlapped": 10 / overlapped_s}
        trial.pool.alternate = keeps
        trial.taken(10)  # done: later batches change nothing
        assert trial.pool.alternate is keeps


def test_the_choice_comes_from_real_measured_rates(photos: Path) -> None:
    pre = load_backbone("efficientnet_lite0", input_size=96).preprocess
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    batches = [[(str(i), f, 0) for i, f in enumerate(files[s : s + 4], start=s)] for s in range(0, len(files), 4)]
    with DecodePool(1, pre.to_dict(), DecodePolicy()) as pool:
        decoded = [results for _, results in pool.map(batches)]
        timings = list(pool.timings)
    assert len(timings) == len(batches) and all(n == 4 and sec > 0 for sec, n in timings)
    bb = load_backbone("efficientnet_lite0", input_size=96)
    rt = build_runtime(bb, layer_specs(bb, "pre_logits"), runtime="torch", precision="fp32")
    forward = []
    for results in decoded:
        pixels = np.stack([d.pixels[0] for d in results])
        t = time.perf_counter()
        rt(pixels)
        forward.append((time.perf_counter() - t, len(pixels)))
    measured = measured_balance(timings, forward, cores=8)
    assert measured is not None and measured.how == "measured"
    assert measured.workers == balance_workers(measured.decode_s, measured.forward_s, 8)
    assert 0 < measured.decode_s < 1 and 0 < measured.forward_s < 10
    # the same measured decode against a runtime 1000x faster or slower than the real one
    fast = [(sec / 1000, n) for sec, n in forward]
    slow = [(sec * 1000, n) for sec, n in forward]
    assert measured_balance(timings, fast, cores=8).workers == min(
        8, balance_workers(measured.decode_s, measured.forward_s / 1000, 8)
    )
    assert measured_balance(timings, slow, cores=8).workers == 1
    assert measured_balance(timings[: BALANCE_AFTER_BATCHES - 1], forward, cores=8) is None


def test_resizing_the_pool_keeps_results_and_their_order(photos: Path) -> None:
    pre = load_backbone("efficientnet_lite0", input_size=64).preprocess
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    batches = [[(str(i), f, 0)] for i, f in enumerate(files)]
    with DecodePool(0, pre.to_dict(), DecodePolicy()) as pool:
        want = [[d.pixels[0] for d in r] for _, r in pool.map(batches)]
    got = []
    with DecodePool(1, pre.to_dict(), DecodePolicy()) as pool:
        for k, (_, results) in enumerate(pool.map(batches)):
            if k == 3:
                pool.resize(2)
            if k == 12:
                pool.resize(1)
            got.append([d.pixels[0] for d in results])
    assert len(got) == len(want) and all(np.array_equal(a[0], b[0]) for a, b in zip(got, want))


def test_the_trial_waits_until_every_worker_is_up() -> None:
    class Pool:
        alternate = False
        warm = False

        def all_warm(self) -> bool:
            return self.warm

    pool = Pool()
    trial = FeedTrial(pool, clock=lambda: 0.0)
    for _ in range(3 * TRIAL_WARMUP):  # a worker still starting: no window opens, it keeps taking turns
        trial.taken(10)
    assert pool.alternate and trial.rates == {}
    pool.warm = True
    for _ in range(TRIAL_BATCHES):  # the first window opens after the next batch and ends TRIAL_BATCHES later
        trial.taken(10)
    assert trial.rates == {} and pool.alternate
    trial.taken(10)
    assert list(trial.rates) == ["turns"] and not pool.alternate


def test_a_cpu_extract_times_both_ways_to_feed_the_runtime_and_keeps_a_forced_setting(photos: Path, tmp_path: Path) -> None:
    # 128 batches: enough to time both ways once every decode worker is up (torch imported: 2-3 s)
    many = tmp_path / "photos"
    many.mkdir()
    for k in range(8):
        for f in sorted(photos.glob("*.jpg")):
            shutil.copyfile(f, many / f"{k}-{f.name}")
    photos = many
    kw = dict(layers="pre_logits", input_size=96, runtime="torch", precision="fp32", batch_size=1, part_size=8)
    default = deepfeat.extract(photos, tmp_path / "default", **kw)
    cores = min(os.cpu_count() or 1, CPU_MAX_WORKERS)
    m = re.fullmatch(
        rf"{cores} decode workers? \(one per core, (taking turns|overlapped) with the runtime: "
        r"measured ([\d,]+) img/s taking turns, ([\d,]+) overlapped\)",
        default.decode_workers,
    )
    assert m, default.decode_workers
    turns, overlapped = (float(g.replace(",", "")) for g in m.groups()[1:])
    assert m.group(1) == ("taking turns" if turns >= overlapped else "overlapped")
    forced = deepfeat.extract(photos, tmp_path / "forced", workers=1, **kw)
    assert re.fullmatch(
        r"1 decode worker \(forced, (taking turns|overlapped) with the runtime: measured [\d,]+ img/s taking turns, "
        r"[\d,]+ overlapped\)",
        forced.decode_workers,
    ), forced.decode_workers
    x1, _, m1 = deepfeat.open_store(tmp_path / "default").load("pre_logits")
    x2, _, m2 = deepfeat.open_store(tmp_path / "forced").load("pre_logits")
    order1, order2 = np.argsort(m1.column("id").to_pylist()), np.argsort(m2.column("id").to_pylist())
    assert np.array_equal(x1[order1], x2[order2])  # who decodes, and how they are fed, never changes the features


def test_where_the_runtime_has_its_own_cores_extract_balances_on_measured_rates(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GPU run does (this machine has none: the runtime stays on the CPU, the engine is told it
    does not share the decoders' cores): overlapped decoding, balanced once the first part is in."""
    monkeypatch.setattr(local, "shares_cores", lambda device: False)
    kw = dict(layers="pre_logits", input_size=96, runtime="torch", precision="fp32", batch_size=2, part_size=8)
    balanced = deepfeat.extract(photos, tmp_path / "balanced", **kw)
    head, _, why = balanced.decode_workers.partition(" (")
    assert why.startswith("measured: decode ") and " ms/img per worker, runtime " in why
    assert 1 <= int(head.split()[0]) <= (os.cpu_count() or 1)
    forced = deepfeat.extract(photos, tmp_path / "forced", workers=1, **kw)
    assert forced.decode_workers == "1 decode worker (forced)"


def test_alternating_sends_a_round_only_once_the_last_is_taken(photos: Path) -> None:
    pre = load_backbone("efficientnet_lite0", input_size=64).preprocess
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    batches = [[(str(i), f, 0)] for i, f in enumerate(files)]
    events: list[tuple[str, int]] = []

    def source():  # noqa: ANN202
        for k, b in enumerate(batches):
            events.append(("sent", k))
            yield b

    with DecodePool(3, pre.to_dict(), DecodePolicy(), alternate=True) as pool:
        for k, _ in enumerate(pool.map(source())):
            events.append(("taken", k))
    sent = [k for kind, k in events if kind == "sent"]
    assert sent == list(range(len(batches)))
    for pos, (kind, k) in enumerate(events):
        if kind == "sent":  # every batch of the rounds before this one was taken before it went out
            taken_before = {j for kd, j in events[:pos] if kd == "taken"}
            assert set(range(k // 3 * 3)) <= taken_before, (k, events)
            in_flight = sum(1 for kd, _ in events[:pos] if kd == "sent") - len(taken_before)
            assert in_flight < 3


def test_a_round_goes_to_the_ready_worker_while_another_is_still_starting(
    photos: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pre = load_backbone("efficientnet_lite0", input_size=64).preprocess
    files = sorted(str(p) for p in photos.glob("*.jpg"))
    batches = [[(str(i), f, 0)] for i, f in enumerate(files)]
    with DecodePool(0, pre.to_dict(), DecodePolicy()) as pool:
        want = [[d.pixels[0] for d in r] for _, r in pool.map(batches)]
    sends: list[tuple[int, int]] = []  # (which worker, batch)
    real_send = decode_pool._Worker.send

    def send(self, index, batch, args):  # noqa: ANN001, ANN202
        sends.append((workers.index(self), index))
        return real_send(self, index, batch, args)

    monkeypatch.setattr(decode_pool._Worker, "send", send)

    def until_ready(worker: decode_pool._Worker) -> None:
        deadline = time.monotonic() + 120
        while not worker.check_ready():
            assert time.monotonic() < deadline, "a decode worker never said it was ready"
            time.sleep(0.01)

    got = []
    with DecodePool(2, pre.to_dict(), DecodePolicy(), alternate=True).start(1) as pool:
        workers = pool._workers
        until_ready(workers[0])
        it = pool.map(batches)
        got += [[d.pixels[0] for d in next(it)[1]] for _ in range(2)]
        # the first round (two batches) went out as the second worker was started: the first decoded both
        assert len(workers) == 2 and sends == [(0, 0), (0, 1)]
        until_ready(workers[1])
        got += [[d.pixels[0] for d in r] for _, r in it]
    assert sends[2:4] == [(0, 2), (1, 3)]  # both ready: a batch each
    assert len(got) == len(want) and all(np.array_equal(a[0], b[0]) for a, b in zip(got, want))


def test_one_pool_started_before_the_model_decodes_the_guard_sample_and_the_job(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    real_worker, real_load = decode_pool._Worker.__init__, extraction.load_backbone

    def worker(self, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        order.append("worker")
        real_worker(self, *a, **k)

    def load(*a, **k):  # noqa: ANN002, ANN003, ANN202
        order.append("model")
        return real_load(*a, **k)

    monkeypatch.setattr(decode_pool._Worker, "__init__", worker)
    monkeypatch.setattr(extraction, "load_backbone", load)
    events: list[str] = []
    s = deepfeat.extract(
        photos,
        tmp_path / "st",
        layers="pre_logits",
        input_size=64,
        runtime="torch",
        precision="bf16",  # a reduced precision: the guard decodes a sample first
        min_agreement=0.5,
        workers=2,
        progress=lambda ev: events.append(ev["phase"]),
    )
    assert "guard" in events and s.embedded_total == 16
    # one worker started before the model loaded, the second when the guard's sample was split between
    # them (after the model), and no others: the guard and the job share them
    assert order == ["worker", "model", "worker"]


def _torch_loaded(worker: decode_pool._Worker) -> bool:
    """Whether torch's library is mapped into a decode worker's memory (read from /proc)."""
    return "libtorch" in Path(f"/proc/{worker.proc.pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads a worker's memory map (Linux)")
def test_a_worker_imports_torch_ahead_only_when_told(fm_dir: Path) -> None:
    """A worker started without the import ahead decodes Fashion-MNIST at 96 px (upscaled by Pillow)
    without ever loading torch; told to import ahead while it runs, it loads torch in the background
    and says so in its results until the import has ended (the feed trial waits for that)."""
    small = [(p.name, str(p), 0) for p in sorted(fm_dir.rglob("*.png"))]
    pre = load_backbone("efficientnet_lite0", input_size=96).preprocess.to_dict()
    with DecodePool(1, pre, DecodePolicy()).import_ahead(False).start(1) as pool:
        worker = pool._workers[0]
        assert all(isinstance(d, decode_pool.Decoded) for _, r in pool.map([small[:16]]) for d in r)
        assert pool.all_warm() and not _torch_loaded(worker)
        pool.import_ahead()
        list(pool.map([small[16:32]]))  # 16 small PNGs decode in milliseconds; the import takes seconds
        assert not pool.all_warm()
        deadline = time.monotonic() + 120
        while not pool.all_warm():
            assert time.monotonic() < deadline, "the worker's import ahead never ended"
            list(pool.map([small[:4]]))
            time.sleep(0.05)
        assert _torch_loaded(worker) and pool._workers == [worker]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads a worker's memory map (Linux)")
def test_extract_tells_its_workers_to_import_torch_only_for_a_job_that_downscales_with_it(
    fm_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first input's header decides: Fashion-MNIST at 96 px is upscaled by Pillow, so the workers
    of a job handed its backbone (nothing to load meanwhile) never load torch; photos at 224 px are
    downscaled by torch, so every worker imports it ahead. A job that loads its model imports it in
    the first worker meanwhile (a core is free then), whatever the inputs."""
    loaded: list[list[bool]] = []
    real_close = DecodePool.close

    def close(self: DecodePool) -> None:
        if self._workers:  # extract's own pool (the guard's and the job's), before its workers end
            loaded.append([_torch_loaded(w) for w in self._workers])
        real_close(self)

    monkeypatch.setattr(DecodePool, "close", close)

    def run(source: Path, size: int, given: bool) -> list[bool]:
        loaded.clear()
        bb = load_backbone("efficientnet_lite0", input_size=size) if given else None
        s = deepfeat.extract(
            source,
            tmp_path / f"st-{size}-{given}",
            layers="pre_logits",
            input_size=size,
            runtime="torch",
            precision="fp32",  # no guard: on a bf16 CPU too, the workers decode the job alone
            batch_size=16,
            workers=2,
            backbone=bb,
            progress=None,
        )
        assert s.failed_now == 0 and s.embedded_now > 0
        assert len(loaded) == 1 and len(loaded[0]) == 2, loaded
        return loaded[0]

    assert run(fm_dir, 96, given=True) == [False, False]
    assert run(photos, 224, given=True) == [True, True]
    assert run(fm_dir, 96, given=False) == [True, False]  # the second, started after the plan, did not


def test_needs_torch_reads_only_the_first_inputs_header(
    fm_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``extract`` asks of its first input: a photo downscaled by the torch resizer needs torch, a
    28 px PNG upscaled to 96 px does not, nor a photo resized by Pillow; an input whose header cannot
    be read says True (torch is imported ahead, as before; the workers record the fault)."""
    from deepfeat.data.preprocess import Preprocess
    from deepfeat.data.worker import needs_torch

    photo, png = str(sorted(photos.glob("*.jpg"))[0]), str(sorted(fm_dir.rglob("*.png"))[0])
    at_224, at_96 = Preprocess(input_size=(224, 224)), Preprocess(input_size=(96, 96))
    policy = DecodePolicy()
    assert needs_torch(photo, at_224, policy) and needs_torch(photo, at_96, policy)
    assert not needs_torch(png, at_96, policy) and not needs_torch(png, at_224, policy)
    assert not needs_torch(photo, Preprocess(input_size=(224, 224), resizer="pillow"), policy)
    assert not needs_torch(photo, Preprocess(input_size=(224, 224), interpolation="lanczos"), policy)
    garbage = tmp_path / "cut.jpg"
    garbage.write_bytes(Path(photo).read_bytes()[:20])
    assert needs_torch(str(garbage), at_96, policy) and needs_torch(str(tmp_path / "gone.jpg"), at_96, policy)
    # an object in a store is not fetched an extra time for this; a local file is read
    from deepfeat.data import worker
    from deepfeat.data.read import read_locator

    read: list[object] = []
    monkeypatch.setattr(worker, "read_locator", lambda loc, limit: read.append(loc) or Path(photo).read_bytes())
    assert needs_torch(("tar", "s3://lake/000.tar", 0, 512), at_96, policy) and needs_torch("s3://lake/a.jpg", at_96, policy)
    assert read == [] and not needs_torch(("tar", "local.tar", 0, 512), Preprocess(input_size=(999, 999)), policy)
    assert read == [("tar", "local.tar", 0, 512)]
    monkeypatch.setattr(worker, "read_locator", read_locator)
    assert needs_torch(("custom",), at_96, policy)  # a locator no reader knows: the workers report it
    # a first input over the limit is not read whole into the parent (its reader refuses it: too large)
    monkeypatch.undo()
    big = tmp_path / "big.png"
    big.write_bytes(Path(png).read_bytes() + bytes(worker.HEADER_READ_LIMIT))  # a 28 px PNG, padded
    assert needs_torch(str(big), at_96, policy) and not needs_torch(png, at_96, policy)

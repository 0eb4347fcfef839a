"""The Ray engine: whole parts are extracted by Ray actors, committed by this process.

The driver names every part before dispatch (:func:`~deepfeat.engines.parts.part_bounds` over the
pending inputs' columns, from the manifest's next index; a part's items and decode batches are made
when it is dispatched), deals the parts to workers with the pure
:func:`~deepfeat.engines.assign.assign_parts` (idle workers steal the tail of the longest
queue), and is the only caller of :meth:`Manifest.commit`. Each worker is an actor that loads
the backbone once, decodes a part's batches exactly as the local engine batches them, computes
features with the same runtime (:func:`deepfeat.runtimes.build_runtime`), writes the part with the same durable
:func:`write_part`, and returns the part's record. A Ray store therefore equals a local store,
and either engine resumes the other's.

A worker that dies (``kill -9``, OOM, a codec that segfaults) has its part resubmitted to a new
actor up to ``max_retries`` times; retries decode in a child process so that a crashing codec
fails its image (``worker_crash``) as in a local run instead of killing the worker again. A
part is committed once: it is only resubmitted after its worker is known dead, and
``Manifest.commit`` refuses a duplicate name anyway.

Requirements: deepfeat (same version) on every node, and ``out`` plus every input path
visible at the same absolute path on every node (NFS or another shared file system).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..data.decode import DecodePolicy
from ..data.decode_pool import DecodePool
from ..errors import DeepfeatError, EnvironmentFault, UsageError
from ..models.registry import load_backbone
from ..sources.items import SourceItem
from ..sources.table import ItemTable, as_table
from ..store import layout
from ..store.layerspec import LayerSpec
from ..store.manifest import Manifest, PartRecord
from .assign import assign_parts, steal, workers_for
from .parts import PartBuilder, add_batch, container_record, count_new, part_batches, part_bounds

log = logging.getLogger(__name__)

INSTALL_HINT = 'The Ray engine needs Ray: pip install "deepfeat[ray]"'
PROBE_TIMEOUT_S = 5.0
READY_TIMEOUT_S = 600.0
DEFAULT_PORTS = {"ray": 10001, "": 6379}


def import_ray() -> Any:
    """``import ray``, or a :class:`UsageError` with the exact install line."""
    try:
        import ray
    except ImportError:
        raise UsageError(INSTALL_HINT + " (or pip install 'ray>=2.9').") from None
    return ray


def probe_address(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Fail fast when a ``host:port`` / ``ray://host:port`` address does not answer.

    ``auto`` and ``local`` are left to Ray (``auto`` fails at once when no cluster runs here).
    """
    if address in ("auto", "local"):
        return
    scheme, _, rest = address.rpartition("://")
    hostport = rest.split("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep:
        host, port = hostport, str(DEFAULT_PORTS.get(scheme, 6379))
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as exc:
        raise EnvironmentFault(
            f"Cannot reach the Ray cluster at {address!r} ({exc}). Check that 'ray start --head' runs there "
            "and that the port is open from this machine, or leave --address out to start a local Ray instance."
        ) from None


def connect(ray: Any, address: str | None) -> bool:
    """Connect to (or start) Ray; returns True when this call did, so the caller shuts it down."""
    target = address or os.environ.get("RAY_ADDRESS") or None
    if target:
        probe_address(target)
    if ray.is_initialized():
        return False
    try:
        ray.init(address=target, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as exc:
        raise EnvironmentFault(f"Cannot connect to the Ray cluster at {target!r}: {exc}") from None
    return True


def node_capacity(nodes: Sequence[dict[str, Any]], cpus_per_worker: float, gpus_per_worker: float) -> int:
    """How many workers of that size the alive nodes of ``ray.nodes()`` can hold at once."""
    total = 0
    for node in nodes:
        if not node.get("Alive", True):
            continue
        res = node.get("Resources", {})
        fits = math.floor(res.get("CPU", 0) / cpus_per_worker + 1e-9) if cpus_per_worker > 0 else 1 << 30
        if gpus_per_worker > 0:
            fits = min(fits, math.floor(res.get("GPU", 0) / gpus_per_worker + 1e-9))
        total += max(0, fits)
    return total


class PartWorker:
    """The body of a Ray actor: one backbone, many parts (wrapped by ``ray.remote`` lazily).

    ``__init__`` never raises: an error (weights missing on this node, no CUDA...) is kept and
    raised by :meth:`ready`, so that the driver sees the original exception class.
    """

    def __init__(self, spec: dict[str, Any], backbone: Any = None) -> None:
        self.spec = spec
        self.error: BaseException | None = None
        try:
            self._setup(backbone)
        except Exception as exc:  # noqa: BLE001 - reported by ready()
            self.error = exc

    def _setup(self, backbone: Any) -> None:
        import torch

        from ..models.layers import describe_layers
        from ..runtimes import build_runtime

        spec = self.spec
        torch.set_num_threads(max(1, int(spec["cpus"])))
        if spec["device"] == "cuda" and not torch.cuda.is_available():
            raise UsageError(
                f"The Ray worker on {socket.gethostname()} has no CUDA device; "
                "use --gpus-per-worker 1 on GPU nodes, or --device cpu."
            )
        if backbone is None:
            load = spec["load"]
            backbone = load_backbone(
                load["model"],
                load["weights"],
                input_size=load["input_size"],
                crop_pct=load["crop_pct"],
                offline=load.get("offline"),
            )  # --offline holds on workers
        if backbone.weights_sha256 != spec["weights_sha256"]:
            raise EnvironmentFault(
                f"The Ray worker on {socket.gethostname()} loaded other weights for {backbone.name!r} "
                f"({backbone.weights_sha256} instead of {spec['weights_sha256']}); install the same weights on "
                "every node, or pass --weights with a path every node sees."
            )
        # the resizer comes from the store (a resume keeps the one it began with), not from the model
        resizer = spec["preprocess"].get("resizer", "pillow")
        if replace(backbone.preprocess, resizer=resizer).to_dict() != spec["preprocess"]:
            raise EnvironmentFault(
                f"The Ray worker on {socket.gethostname()} resolved another preprocessing "
                f"({backbone.preprocess.to_dict()} instead of {spec['preprocess']})."
            )
        self.specs = [LayerSpec.from_dict(d) for d in spec["layers"]]
        # The driver chose the runtime; a worker that cannot run it fails instead of silently falling back.
        self.computer = build_runtime(
            backbone,
            self.specs,
            describe_layers(backbone),
            runtime=spec["runtime"],
            device=spec["device"],
            precision=spec["precision"],
            dtype=spec["dtype"],
            channels_last=spec["channels_last"],
            fallback=False,
        )

    def ready(self) -> dict[str, Any]:
        """Raise the set-up error, if any; else say where this worker runs."""
        if self.error is not None:
            raise self.error
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def process(
        self, out: str, name: str, items: list[SourceItem], batches: list[list[tuple[str, Any, int]]], attempt: int
    ) -> dict[str, Any]:
        """Decode, embed and write one part; returns its :class:`PartRecord` as a dict (not committed)."""
        spec = self.spec
        # A retry decodes in a child process: a codec that kills its process fails one image, not the worker.
        decode_workers = spec["decode_workers"] if attempt == 0 else max(1, spec["decode_workers"])
        builder = PartBuilder(name, items, self.specs)
        with DecodePool(decode_workers, spec["preprocess"], spec["policy"], augment=spec["augment"]) as pool:
            for _, results in pool.map(batches):
                add_batch(builder, self.computer, results)
        return dict(builder.write(out).to_dict())


class _Slot:
    """One worker position: its actor, its queue of part indices, its task in flight."""

    def __init__(self, actor: Any, queue: Sequence[int]) -> None:
        self.actor = actor
        self.queue: collections.deque[int] = collections.deque(queue)
        self.ready = False
        self.busy: int | None = None


def run_ray(
    plan: Any,
    pending: Sequence[SourceItem],
    out: str,
    manifest: Manifest,
    *,
    batch_size: int,
    workers: int,
    device: str,
    precision: str,
    channels_last: bool,
    policy: DecodePolicy,
    progress: Callable[[dict[str, Any]], None] | None = None,
    address: str | None = None,
    num_workers: int | None = None,
    gpus_per_worker: float = 0,
    cpus_per_worker: float = 1,
    max_retries: int = 3,
) -> tuple[int, int, int]:
    """Process ``pending`` inputs into committed parts on Ray (what :class:`RayEngine` runs).

    Returns (embedded, failed, parts). Args:
        workers: decode processes inside each Ray worker (0 = decode in the worker itself).
        address: a running cluster (``auto``, ``host:port``, ``ray://host:port``); default: the
            ``RAY_ADDRESS`` variable, an already initialised Ray, or a new local instance.
        num_workers: Ray workers (actors); default: as many as the cluster holds, at most one per part.
        gpus_per_worker / cpus_per_worker: Ray resources of each worker (torch uses that many threads).
        max_retries: times one part is resubmitted after its worker died.

    """
    ray = import_ray()  # options were checked by RayEngine
    if not pending:
        return 0, 0, 0
    out = os.path.abspath(out)
    table = as_table(pending)
    first = manifest.next_index()
    parts = [(layout.part_name(first + k), s, e) for k, (s, e) in enumerate(part_bounds(table.groups(), plan.part_size))]
    started = connect(ray, address)
    try:
        capacity = node_capacity(ray.nodes(), cpus_per_worker, gpus_per_worker)
        n = workers_for(len(parts), capacity, num_workers)
        _Driver(
            ray,
            plan,
            table,
            parts,
            out,
            manifest,
            n,
            batch_size=batch_size,
            decode_workers=workers,
            device=device,
            precision=precision,
            channels_last=channels_last,
            policy=policy,
            progress=progress,
            gpus=gpus_per_worker,
            cpus=cpus_per_worker,
            max_retries=max_retries,
        ).run()
    finally:
        if started:
            ray.shutdown()
    return count_new(manifest, [name for name, _, _ in parts])


class _Driver:
    """Dispatches parts to actors, commits their records, replaces dead actors."""

    def __init__(
        self,
        ray: Any,
        plan: Any,
        table: ItemTable,
        parts: list[tuple[str, int, int]],
        out: str,
        manifest: Manifest,
        n_workers: int,
        *,
        batch_size: int,
        decode_workers: int,
        device: str,
        precision: str,
        channels_last: bool,
        policy: DecodePolicy,
        progress: Callable[[dict[str, Any]], None] | None,
        gpus: float,
        cpus: float,
        max_retries: int,
    ) -> None:
        self.ray, self.plan, self.parts, self.out, self.manifest = ray, plan, parts, out, manifest
        self.table, self.batch_size = table, batch_size  # a part's items and batches are made at its dispatch
        self.n_workers, self.progress, self.max_retries = n_workers, progress, max_retries
        self.spec = {
            "load": getattr(plan, "model_args", None),
            "weights_sha256": plan.backbone.weights_sha256,
            "preprocess": plan.backbone.preprocess.to_dict(),
            "layers": [s.to_dict() for s in plan.layers],
            "dtype": plan.dtype,
            "runtime": plan.runtime,
            "precision": precision,
            "device": device,
            "channels_last": channels_last,
            "policy": policy,
            "augment": (plan.augment, plan.augment_seed) if plan.views else None,
            "decode_workers": int(decode_workers),
            "cpus": cpus,
        }
        # A backbone handed over as an object (extract(backbone=...)) travels pickled; else it is loaded by name.
        self.backbone_ref = ray.put(plan.backbone) if self.spec["load"] is None else None
        self.actor_cls = ray.remote(PartWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0)
        # the containers each part holds inputs of, and how many parts of each are still to commit
        self.container_keys = as_table(plan.discovery.items).container_keys()  # codes are shared with ``table``
        self.holds = [np.unique(table.cont[s:e]).tolist() for _, s, e in parts]
        self.outstanding = collections.Counter(c for codes in self.holds for c in codes)
        self.attempts: collections.Counter[int] = collections.Counter()
        self.inflight: dict[Any, tuple[int, str, int]] = {}  # ref -> (slot, "ready" | "part", part index)
        self.slots: list[_Slot] = []

    def _new_actor(self, slot: int) -> Any:
        actor = self.actor_cls.remote(self.spec, self.backbone_ref)
        self.inflight[actor.ready.remote()] = (slot, "ready", -1)
        return actor

    def _dispatch(self) -> None:
        for i, slot in enumerate(self.slots):
            if not slot.ready or slot.busy is not None:
                continue
            if not slot.queue:
                # a worker that is not ready (starting, or replacing one lost with its node) cannot keep
                # even its last part from a worker that is idle
                orphaned = next((s for s in self.slots if not s.ready and s.queue), None)
                if orphaned is not None:
                    slot.queue.append(orphaned.queue.pop())
                else:
                    taken = steal([s.queue for s in self.slots])
                    if taken is None:
                        continue
                    self.slots[taken[0]].queue.pop()
                    slot.queue.append(taken[1])
            p = slot.queue.popleft()
            name, start, stop = self.parts[p]
            items = [self.table[i] for i in range(start, stop)]
            batches = part_batches(items, self.batch_size, self.plan)
            ref = slot.actor.process.remote(self.out, name, items, batches, self.attempts[p])
            self.inflight[ref] = (i, "part", p)
            slot.busy = p

    def _replace(self, i: int, p: int, exc: BaseException) -> None:
        name = self.parts[p][0]
        self.attempts[p] += 1
        if self.attempts[p] > self.max_retries:
            raise EnvironmentFault(
                f"Part {name}: its Ray worker died {self.attempts[p]} times (last: "
                f"{type(exc).__name__}); nothing of it was committed. Check the workers' "
                "memory and logs ('ray logs'), then rerun to resume."
            )
        log.warning(
            "the Ray worker of part %s died (%s); retrying it on a new worker (retry %d of %d)",
            name,
            type(exc).__name__,
            self.attempts[p],
            self.max_retries,
        )
        slot = self.slots[i]
        self.ray.kill(slot.actor, no_restart=True)  # make sure a half-dead actor writes nothing more
        slot.queue.appendleft(p)
        slot.busy = None
        slot.ready = False
        slot.actor = self._new_actor(i)

    def _raise_task_error(self, exc: Any) -> None:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, (DeepfeatError, MemoryError)):
            raise cause
        raise exc

    def run(self) -> None:
        ray = self.ray
        queues = assign_parts(len(self.parts), self.n_workers)
        self.slots = [_Slot(None, q) for q in queues]
        for i, slot in enumerate(self.slots):
            slot.actor = self._new_actor(i)
        log.info("Ray: %d parts on %d workers", len(self.parts), self.n_workers)
        waiting_since = time.monotonic()
        try:
            # the loop ends when every part is committed, even if a replacement worker is still waiting
            # for room (its node was lost and the others are full): it is killed below
            while self.inflight and any(s.queue or s.busy is not None for s in self.slots):
                done, _ = ray.wait(list(self.inflight), num_returns=1, timeout=5.0)
                if not done:
                    if not any(s.ready for s in self.slots) and time.monotonic() - waiting_since > READY_TIMEOUT_S:
                        raise EnvironmentFault(
                            f"No Ray worker started within {READY_TIMEOUT_S:.0f} s; the "
                            "cluster may lack the CPUs/GPUs asked for each worker."
                        )
                    continue
                ref = done[0]
                i, kind, p = self.inflight.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:
                    self._raise_task_error(exc)
                except ray.exceptions.RayError as exc:
                    if kind == "ready":
                        raise EnvironmentFault(f"A Ray worker died while loading the model ({exc}).") from None
                    self._replace(i, p, exc)
                    self._dispatch()  # an idle worker takes the lost part now, not after its next result
                    continue
                if kind == "ready":
                    self.slots[i].ready = True
                    log.debug("Ray worker %d ready on %s (pid %s)", i, result["host"], result["pid"])
                else:
                    record = PartRecord.from_dict(result)
                    self.outstanding.subtract(self.holds[p])
                    record.containers = container_record(
                        self.container_keys, self.holds[p], lambda c: self.outstanding[c] == 0
                    )
                    self._commit(record)
                    self.slots[i].busy = None
                self._dispatch()
        finally:
            for slot in self.slots:
                if slot.actor is not None:
                    ray.kill(slot.actor, no_restart=True)
        self._sort_manifest()

    def _commit(self, record: PartRecord) -> None:
        self.manifest.commit(record)
        if self.progress:
            self.progress({"phase": "batch", "done": record.items, "failed": record.failed})
            self.progress({"phase": "part", "name": record.name})

    def _sort_manifest(self) -> None:
        """Parts complete out of order; list them by name, as a local run does (same store, same manifest)."""
        ordered = sorted(self.manifest.parts, key=lambda r: r.name)
        if [r.name for r in ordered] != [r.name for r in self.manifest.parts]:
            self.manifest.parts[:] = ordered
            self.manifest.save()

"""The built-in engines as :class:`~deepfeat.engines.Engine` objects: their options, CLI flags and
protocol methods. This module imports only the standard library (the CLI builds its parser from it
on every start); the work is imported when an engine runs: :mod:`deepfeat.engines.local`,
:mod:`deepfeat.engines.ray_engine`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..devices import resolve_device
from ..errors import UsageError
from ..params import check_int, is_int
from . import RunSettings

if TYPE_CHECKING:  # pragma: no cover
    from ..sources.items import SourceItem
    from ..store.session import StoreWriter

__all__ = ["LocalEngine", "RayEngine", "default_workers"]


def default_workers() -> int:
    """Decode processes by default on this machine: one per spare core (at least one), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class LocalEngine:
    """This machine: decode worker processes feed one runtime in this process; parts are committed
    by size or, at a batch boundary, after ``part_seconds``.

    Example:
        >>> deepfeat.extract("data/", "feats/", engine=LocalEngine())   # doctest: +SKIP
    """

    name = "local"

    def __init__(self) -> None:
        self.runtime: Any = None
        #: the decode workers the last run used and why (``engines.local.Balance``), for the summary
        self.balance: Any = None

    def check(self) -> None:
        """The local engine runs wherever deepfeat is installed."""

    def default_workers(self) -> int:
        """One decode process per spare core (at least one), at most 8."""
        return default_workers()

    def resolve_device(self, device: str) -> str:

        return resolve_device(device)

    def prepare(self, plan: Any, settings: RunSettings) -> None:
        """Build the runtime here (falling back to torch when an export fails) and record what runs."""
        from ..runtimes import build_runtime

        self.runtime = build_runtime(
            plan.backbone,
            plan.layers,
            plan.infos,
            runtime=plan.runtime,
            device=settings.device,
            precision=plan.precision,
            dtype=plan.dtype,
            channels_last=settings.channels_last,
            calibration=getattr(plan, "calibration", None),
        )
        plan.use_runtime(self.runtime.describe())

    def run(
        self, plan: Any, pending: "Sequence[SourceItem]", writer: "StoreWriter", settings: RunSettings
    ) -> tuple[int, int, int]:
        if self.runtime is None:
            self.prepare(plan, settings)
        from .local import run_local

        assert writer.manifest is not None

        def chosen(balance: Any) -> None:
            self.balance = balance

        return run_local(
            plan,
            pending,
            writer.path,
            writer.manifest,
            batch_size=settings.batch_size,
            workers=settings.workers,
            runtime=self.runtime,
            policy=settings.policy,
            progress=settings.progress,
            part_seconds=settings.part_seconds,
            balance=settings.balance_workers,
            chosen=chosen,
            pool=settings.decode_pool,
        )

    def __repr__(self) -> str:
        return "LocalEngine()"


class RayEngine:
    """Ray actors on a cluster compute and write whole parts; the driver (this process) commits them.

    Args:
        address: a running cluster (``auto``, ``host:port``, ``ray://host:port``); default: the
            ``RAY_ADDRESS`` variable, an already initialised Ray, or a new local instance.
        workers: Ray workers (actors); default: as many as the cluster holds, at most one per part.
        gpus_per_worker / cpus_per_worker: Ray resources of each worker (torch uses that many threads).
        max_retries: times one part is resubmitted after its worker died.

    Parts are planned by size only (``part_seconds`` does not apply): a worker writes a whole part.

    Example:
        >>> deepfeat.extract("data/", "feats/", engine=RayEngine(address="auto", workers=8))  # doctest: +SKIP
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        gpus_per_worker: float = 0,
        cpus_per_worker: float = 1,
        max_retries: int = 3,
    ) -> None:
        if gpus_per_worker < 0 or cpus_per_worker < 0 or (cpus_per_worker == 0 and gpus_per_worker == 0):
            raise UsageError(
                "Each Ray worker needs CPUs or GPUs: --cpus-per-worker and --gpus-per-worker must be >= 0 and not both 0."
            )
        if workers is not None and (not is_int(workers) or workers < 1):
            # named by its flag: on the command line 'workers' would read as extract's --workers
            raise UsageError(f"--ray-workers (the 'workers' of RayEngine) must be an int >= 1; got {workers!r} instead.")
        check_int(max_retries, "max_retries", minimum=0, where="RayEngine")
        self.address, self.workers = address, workers
        self.gpus_per_worker, self.cpus_per_worker, self.max_retries = gpus_per_worker, cpus_per_worker, max_retries

    @classmethod
    def add_arguments(cls, parser: Any) -> None:
        """The CLI flags of this engine (used with ``--engine ray``)."""
        parser.add_argument(
            "--address",
            default=None,
            help="Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default: a new local Ray instance)",
        )
        parser.add_argument("--ray-workers", type=int, default=None, help="Ray workers (default: as many as fit)")
        parser.add_argument("--gpus-per-worker", type=float, default=0, help="GPUs of each Ray worker")
        parser.add_argument(
            "--cpus-per-worker", type=float, default=1, help="CPUs of each Ray worker; torch uses that many threads"
        )

    @classmethod
    def from_arguments(cls, args: Any) -> "RayEngine":
        return cls(
            address=args.address,
            workers=args.ray_workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
        )

    def default_workers(self) -> int:
        """Decode processes inside each Ray worker: none (the worker decodes; a retry uses one)."""
        return 0

    def resolve_device(self, device: str) -> str:
        if device == "auto":  # the GPUs are on the workers, not necessarily here
            return "cuda" if self.gpus_per_worker > 0 else "cpu"
        return device

    def check(self) -> None:
        """Ray must be installed: the install hint comes before any work."""
        from .ray_engine import import_ray

        import_ray()

    def prepare(self, plan: Any, settings: Any) -> None:
        """Nothing to build here: the workers build ``plan.runtime`` strictly (no fallback)."""

    def run(self, plan: Any, pending: "Sequence[SourceItem]", writer: Any, settings: Any) -> tuple[int, int, int]:
        from .ray_engine import run_ray

        assert writer.manifest is not None
        return run_ray(
            plan,
            pending,
            writer.path,
            writer.manifest,
            batch_size=settings.batch_size,
            workers=settings.workers,
            device=settings.device,
            precision=plan.precision,
            channels_last=settings.channels_last,
            policy=settings.policy,
            progress=settings.progress,
            address=self.address,
            num_workers=self.workers,
            gpus_per_worker=self.gpus_per_worker,
            cpus_per_worker=self.cpus_per_worker,
            max_retries=self.max_retries,
        )

    def __repr__(self) -> str:
        return (
            f"RayEngine(address={self.address!r}, workers={self.workers!r}, "
            f"gpus_per_worker={self.gpus_per_worker}, cpus_per_worker={self.cpus_per_worker})"
        )

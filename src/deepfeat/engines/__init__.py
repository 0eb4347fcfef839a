"""Engines decide who processes which part; they never change what a part contains.

An engine takes a planned job (:class:`~deepfeat.extraction.ExtractPlan`), the inputs still to do
and the open :class:`~deepfeat.store.session.StoreWriter`, and commits parts through the writer.
Every engine writes the same store: either resumes the other's.

====== ====================================================== ==============================
name   where the parts are computed                           its options (CLI flags)
====== ====================================================== ==============================
local  this process (forward) + decode worker processes        none
ray    Ray actors on a cluster, each writing whole parts       ``--address``, ``--ray-workers``,
                                                               ``--gpus-per-worker``,
                                                               ``--cpus-per-worker``
====== ====================================================== ==============================

Adding an engine: a class with the :class:`Engine` methods in a new module that imports its work
lazily, and one line in :data:`ENGINES` (or :func:`register_engine` from outside the package).

Example:
    >>> from deepfeat.engines import get_engine
    >>> get_engine("local").name
    'local'
    >>> deepfeat.extract("data/", "feats/", engine=RayEngine(address="auto", workers=8))  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast, runtime_checkable

from ..errors import UsageError
from ..params import check_choice
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..data.decode import DecodePolicy
    from ..sources.items import SourceItem
    from ..store.session import StoreWriter

__all__ = ["Engine", "RunSettings", "ENGINES", "register_engine", "get_engine", "engine_names"]


@dataclass
class RunSettings:
    """How the parts are computed, the same for every engine."""

    batch_size: int
    workers: int  #: decode processes (per Ray worker with the ray engine)
    device: str
    channels_last: bool
    policy: "DecodePolicy"
    progress: Callable[[dict[str, Any]], None] | None = None
    #: commit a part once it has been open this long (engines that can; None: by size only)
    part_seconds: float | None = None
    #: ``workers`` is the engine's default: engines that can balance it on measured rates (local)
    balance_workers: bool = False
    #: decode workers started before the model loaded (the local engine's ``start_decoders``), or None
    decode_pool: Any = None


@runtime_checkable
class Engine(Protocol):
    """What ``extract`` asks of an engine, in this order."""

    name: ClassVar[str]

    def check(self) -> None:
        """Raise early (before the model is loaded) when the engine cannot run here, e.g. not installed."""
        ...  # pragma: no cover - protocol

    def default_workers(self) -> int:
        """Decode processes when the user names none."""
        ...  # pragma: no cover - protocol

    def resolve_device(self, device: str) -> str:
        """``auto``/``cpu``/``cuda`` -> the device the features are computed on."""
        ...  # pragma: no cover - protocol

    def prepare(self, plan: Any, settings: RunSettings) -> None:
        """Before the store is opened: check the engine can run, and record in ``plan`` (``use_runtime``)
        the runtime that will compute the features (part of the store's fingerprint)."""
        ...  # pragma: no cover - protocol

    def run(
        self, plan: Any, pending: "Sequence[SourceItem]", writer: "StoreWriter", settings: RunSettings
    ) -> tuple[int, int, int]:
        """Compute and commit every pending input; returns (embedded, failed, parts committed)."""
        ...  # pragma: no cover - protocol


#: name -> "module:Class", imported on first use. The CLI imports every engine class to add its flags,
#: so an engine class's module imports only the standard library and defers its work to ``run``.
ENGINES: Registry[str | type[Any]] = Registry("engine")
ENGINES.register("deepfeat.engines.builtin:LocalEngine", name="local")
ENGINES.register("deepfeat.engines.builtin:RayEngine", name="ray")
#: class decorator: make an engine available by ``cls.name`` (``extract(engine=name)``, ``--engine``)
register_engine = ENGINES.register


def engine_names() -> list[str]:
    return list(ENGINES)


def engine_class(name: str) -> type:
    """The engine class registered as ``name``."""
    check_choice(name, "engine", ENGINES)
    ref = ENGINES[name]
    if isinstance(ref, str):
        module, _, cls_name = ref.partition(":")
        ref = getattr(importlib.import_module(module), cls_name)
        ENGINES[name] = ref
    return ref


def get_engine(engine: "str | Engine") -> "Engine":
    """An engine object: ``engine`` itself, or the named engine with its default options."""
    if isinstance(engine, str):
        return cast("Engine", engine_class(engine)())
    if not isinstance(engine, Engine):
        raise UsageError(
            f"The 'engine' parameter must be an engine name ({', '.join(ENGINES)}) or an Engine; "
            f"got {type(engine).__name__} instead."
        )
    return engine


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``--engine`` plus every registered engine's own flags (each engine class's ``add_arguments``)."""
    parser.add_argument(
        "--engine",
        default="local",
        choices=engine_names(),
        help="where parts are computed: local (this machine), or ray (Ray workers write the "
        'parts; pip install "deepfeat[ray]"; docs/RAY.md)',
    )
    for name in engine_names():
        add = getattr(engine_class(name), "add_arguments", None)
        if add is not None:
            add(parser)


def engine_from_arguments(args: argparse.Namespace) -> "Engine":
    """The engine the CLI flags describe (its ``from_arguments``, else its defaults)."""
    cls = engine_class(args.engine)
    build = getattr(cls, "from_arguments", None)
    return cast("Engine", build(args) if build is not None else cls())

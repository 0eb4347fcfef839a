"""The extraction runner: source -> decode -> backbone taps -> pooling -> committed parts.

Example:
    >>> import deepfeat
    >>> summary = deepfeat.extract("data/fm", out="feats/", layers="blocks.4,pre_logits",
    ...                            pool="avg", dtype="float16")          # doctest: +SKIP
    >>> summary.embedded, summary.failed                                  # doctest: +SKIP
    (4000, 0)
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa

from ._version import __version__
from .data.augment import DEFAULT_AUGMENT, parse_augment
from .data.decode import DecodePolicy
from .data.preprocess import Preprocess
from .data.remote import is_url
from .data.worker import needs_torch
from .devices import DEVICES
from .embed import decode_pixels
from .engines import Engine, RunSettings, get_engine
from .engines.builtin import default_workers  # noqa: F401 - part of this module's API (benchmarks, users)
from .engines.local import start_decoders
from .errors import EnvironmentFault, UsageError
from .models.hub import is_offline
from .models.layers import PRE_LOGITS, describe_layers
from .models.registry import DEFAULT_MODEL, Backbone, load_backbone
from .params import check_choice, check_int, check_number
from .progress import ProgressFn
from .progress import note as progress_note
from .runtimes import (
    CALIBRATION_IMAGES,
    CALIBRATION_SEED,
    PRECISIONS,
    Calibration,
    layer_specs,
    prefer_recorded,
    resolve_runtime,
)
from .runtimes.guard import DEFAULT_MIN_AGREEMENT, check_min_agreement, guard_backbone, sample_indices
from .sources import Source, open_source
from .sources.items import Discovery, SourceItem
from .sources.table import ItemTable, as_table, hex_keys, members
from .store import layout, trust
from .store.manifest import Manifest, PartRecord
from .store.reader import FeatureStore, LayerSpec
from .store.session import StoreWriter
from .units import count_or_size, format_size, parse_size

log = logging.getLogger(__name__)

DTYPES = ("float16", "float32")
DEFAULT_PART_BYTES = 256 << 20
#: a part is also committed once it has been open this long (local engine): an interrupt loses at most about this much
DEFAULT_PART_SECONDS = 30.0


@dataclass
class ExtractSummary:
    """What a run did and what the store holds afterwards (counts add up: see ``accounted``)."""

    out: str
    discovered: int = 0
    excluded: int = 0
    embedded_total: int = 0
    failed_total: int = 0
    embedded_now: int = 0
    failed_now: int = 0
    already_done: int = 0
    vanished_since: int = 0
    parts_committed: int = 0
    rows_total: int = 0
    bytes_on_disk: int = 0
    seconds: float = 0.0
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    resumed: bool = False
    #: exclusions at discovery by reason (this run's source)
    excluded_by_reason: dict[str, int] = field(default_factory=dict)
    #: warnings about the source a user should see (e.g. a mixed layout: images embedded unlabeled)
    notes: list[str] = field(default_factory=list)
    #: the decode workers this run used and why, e.g. "2 decode workers (measured: decode 4.4 ms/img per
    #: worker, runtime 2.9 ms/img)" or "(forced)"; empty when the engine does not say
    decode_workers: str = ""

    @property
    def images_per_second(self) -> float:
        return (self.embedded_now + self.failed_now) / self.seconds if self.seconds > 0 else 0.0

    @property
    def accounted(self) -> bool:
        """Invariant I1 for the current source: embedded + failed + excluded == discovered + excluded."""
        return self.embedded_total + self.failed_total - self.vanished_since == self.discovered


@dataclass
class ExtractPlan:
    """Everything decided before the first image is read (printed as the job estimate)."""

    discovery: Discovery
    backbone: Backbone
    layers: list[LayerSpec]
    config: dict[str, Any]
    metadata: dict[str, Any]
    part_size: int
    dtype: str
    views: int = 0
    augment: str = ""
    augment_seed: int = 0
    views_splits: tuple[str, ...] = ("train",)
    #: every tappable layer of the backbone (from the one probing pass at planning time)
    infos: Any = None
    #: how to load the backbone again elsewhere (Ray workers): model, weights, input_size, crop_pct;
    #: None when the backbone was handed over as an object
    model_args: dict[str, Any] | None = None
    #: the inference runtime and precision that compute the features (part of the fingerprint)
    runtime: str = "torch"
    precision: str = "fp32"
    #: the precision guard's measurement (:class:`deepfeat.runtimes.guard.Agreement` as a dict) or None
    agreement: dict[str, Any] | None = None
    #: the images an int8 runtime is calibrated on (:class:`deepfeat.runtimes.Calibration`), else None
    calibration: Any = None

    def use_runtime(self, described: Mapping[str, Any]) -> None:
        """Record the runtime that actually runs (after any fallback) in the config and metadata."""
        self.runtime, self.precision = str(described["runtime"]), str(described["precision"])
        self.config.update(runtime=self.runtime, precision=self.precision)
        runtime = dict(described)
        if self.agreement and self.agreement.get("precision") == self.precision:
            runtime["agreement"] = self.agreement
        self.metadata.update(runtime=runtime, precision=self.precision)

    @property
    def row_bytes(self) -> int:
        return sum(s.dims for s in self.layers) * np.dtype(self.dtype).itemsize

    def views_for(self, item: SourceItem) -> int:
        """Augmented views stored for ``item``: K for the chosen splits (and unsplit inputs), else 0."""
        if not self.views:
            return 0
        return self.views if item.split is None or item.split in self.views_splits else 0

    def estimate(self, items: Sequence[SourceItem] | None = None) -> dict[str, int]:
        """rows x dims x bytes of the job (augmented views included), from the counts per split."""
        chosen = as_table(self.discovery.items if items is None else items)
        viewed = (
            sum(n for split, n in chosen.split_counts().items() if split is None or split in self.views_splits)
            if self.views
            else 0
        )
        rows = len(chosen) + self.views * viewed
        return {
            "items": len(chosen),
            "rows": rows,
            "dims": sum(s.dims for s in self.layers),
            "bytes_per_value": np.dtype(self.dtype).itemsize,
            "bytes": rows * self.row_bytes,
        }


def validate_extract_args(
    dtype: str, device: str, precision: str, batch_size: int, workers: int, part_size: int | str | None
) -> None:
    """One up-front check of the arguments that do not need the model or the data."""
    check_choice(dtype, "dtype", DTYPES, where="extract")
    check_choice(device, "device", DEVICES, where="extract")
    check_choice(precision, "precision", PRECISIONS, where="extract")
    check_int(batch_size, "batch_size", minimum=1, where="extract")
    check_int(workers, "workers", minimum=0, where="extract")
    if part_size is not None:
        count_or_size(part_size, "part_size", where="extract")


def _recorded_metadata(out: str) -> dict[str, Any] | None:
    """The metadata document of a store at ``out`` (its ``config`` inside); None when there is no readable store."""
    if not os.path.isfile(os.path.join(out, layout.METADATA_FILE)):
        return None
    try:
        doc = trust.read_store_json(out, layout.METADATA_FILE)  # inside the store, bounded
    except Exception:  # noqa: BLE001 - an unreadable or hostile store is reported by prepare_store_dir
        return None
    return doc if isinstance(doc, dict) else None


def _recorded_config(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The config a store's metadata (:func:`_recorded_metadata`) records."""
    config = metadata.get("config", {}) if metadata else None
    return config if isinstance(config, dict) else None


def _recorded_choice(config: dict[str, Any] | None) -> tuple[Any, Any] | None:
    """The (runtime, precision) a store's ``config`` (:func:`_recorded_config`) records."""
    return None if config is None else (config.get("runtime"), config.get("precision"))


def _keep_recorded_resizer(plan: "ExtractPlan", config: dict[str, Any] | None) -> None:
    """On a resume, resize as the store began: the resizer is how the same preprocessing is computed
    (:data:`~deepfeat.data.preprocess.RESIZERS`), so a store written with Pillow's resize (every store
    from before the torch resizer) goes on with it and stays bit-identical to an uninterrupted run."""
    recorded = config.get("preprocess") if config else None
    if not isinstance(recorded, dict):
        return
    pre = plan.backbone.preprocess
    try:
        kept = replace(pre, resizer=Preprocess.from_dict(recorded).resizer)
    except (KeyError, TypeError, ValueError, UsageError):
        return  # a malformed record: the fingerprint check reports the difference
    if kept != pre and kept.to_dict() == recorded:
        log.info("resuming with the store's resizer %r", kept.resizer)
        plan.backbone = replace(plan.backbone, preprocess=kept)
        plan.config["preprocess"], plan.metadata["preprocess"] = kept.to_dict(), kept.to_dict()


def _resume_choice(recorded: tuple[Any, Any] | None, runtime: str, precision: str, device: str) -> tuple[str, str]:
    """On a resume, ``auto`` means the runtime and precision the store was written with (``recorded``, from
    :func:`_recorded_choice`; when they run here).

    Features of one store come from one runtime and precision: a resume that would mix them is
    refused by the fingerprint, so ``auto`` must not pick differently on another machine or after
    an install.
    """
    if runtime != "auto" or recorded is None:
        return runtime, precision
    return prefer_recorded(runtime, precision, device, *recorded)


def _calibrate(plan: ExtractPlan, settings: RunSettings, recorded: dict[str, Any] | None = None) -> None:
    """int8: decode the calibration sample (a seeded sample of the job's own inputs) into ``plan.calibration``.

    A job with fewer inputs than :data:`~deepfeat.runtimes.CALIBRATION_IMAGES` is calibrated on all of
    them, and says so; the store records how many were used and the sample's digest. A resume whose
    sample changed (inputs were added) keeps the store's calibration: its export is loaded from the
    cache by the recorded digest (where that export is gone, the int8 runtime cannot be rebuilt and
    the resume is refused by the fingerprint rather than mixing two quantisations).
    """
    items = plan.discovery.items
    picked = sample_indices(len(items), CALIBRATION_IMAGES, CALIBRATION_SEED)
    pixels = decode_pixels(
        [items[i].locator for i in picked],
        preprocess=plan.backbone.preprocess,
        policy=settings.policy,
        workers=settings.workers,
        pool=settings.decode_pool,
    )
    if not len(pixels):
        raise UsageError(
            "int8 is calibrated on the job's own images, and none of them decodes; use --precision fp32 or bf16."
        )
    plan.calibration = Calibration.of(pixels, CALIBRATION_IMAGES)
    runtime = recorded.get("runtime") if recorded else None
    before = runtime.get("calibration") if isinstance(runtime, dict) and runtime.get("precision") == "int8" else None
    if isinstance(before, dict) and before.get("sha256") not in (None, plan.calibration.digest):
        log.info("int8: the store was calibrated on another sample (inputs changed since); keeping its calibration")
        plan.calibration = Calibration(
            str(before["sha256"]), int(before.get("images", 0)), int(before.get("wanted", CALIBRATION_IMAGES))
        )
        return
    if plan.calibration.short:
        message = (
            f"int8: calibrated on all {len(pixels)} decodable images of this job (fewer than the "
            f"{CALIBRATION_IMAGES} it wants: the quantisation may agree less with fp32; the guard measures it)"
        )
        log.warning("%s", message)
        progress_note(message)


def _guard(plan: ExtractPlan, settings: RunSettings, requested: str, min_agreement: float) -> None:
    """Run the precision guard (:mod:`deepfeat.runtimes.guard`) on a seeded sample of the job's inputs and
    settle ``plan.runtime`` / ``plan.precision``; the measurement goes into the store metadata."""
    if plan.precision == "fp32":
        return
    items = plan.discovery.items
    pixels = decode_pixels(
        [items[i].locator for i in sample_indices(len(items))],
        preprocess=plan.backbone.preprocess,
        policy=settings.policy,
        workers=settings.workers,
        pool=settings.decode_pool,
    )

    if settings.progress:
        settings.progress({"phase": "guard", "images": len(pixels), "precision": plan.precision})
    runtime, precision, agreement = guard_backbone(
        plan.backbone,
        plan.layers,
        plan.infos,
        pixels,
        runtime=plan.runtime,
        precision=plan.precision,
        auto=requested == "auto",
        device=settings.device,
        min_agreement=min_agreement,
        channels_last=settings.channels_last,
        batch_size=settings.batch_size,
        calibration=plan.calibration,
    )
    plan.runtime, plan.precision = runtime, precision
    plan.config.update(runtime=runtime, precision=precision)
    plan.agreement = agreement.to_dict() if agreement else None


def plan_extraction(
    source: str | os.PathLike | Source,
    *,
    model: str = DEFAULT_MODEL,
    layers: str | Sequence[str] = PRE_LOGITS,
    pool: str | Mapping[str, str] = "avg",
    dtype: str = "float32",
    weights: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    precision: str = "fp32",
    runtime: str = "torch",
    part_size: int | str | None = None,
    policy: DecodePolicy | None = None,
    backbone: Backbone | None = None,
    views: int = 0,
    augment: str | None = None,
    views_splits: Sequence[str] | str = ("train",),
    augment_seed: int = 0,
    skip_dirs: Sequence[str | os.PathLike] = (),
) -> ExtractPlan:
    """Discover the inputs, load the backbone and resolve layers into an :class:`ExtractPlan`.

    ``skip_dirs`` are never searched for inputs (``extract`` passes its output store).
    """
    check_int(views, "views", minimum=0, where="extract")
    if augment is not None and not views:
        raise UsageError("The 'augment' parameter needs 'views' >= 1 (augmented views per image).")
    augment_spec = parse_augment(augment or DEFAULT_AUGMENT) if views else ""
    if isinstance(views_splits, str):
        views_splits = [s.strip() for s in views_splits.split(",") if s.strip()]
    views_splits = tuple(sorted(views_splits))
    discovery = open_source(source).discover(skip_dirs=skip_dirs)
    discovery.items = as_table(discovery.items)  # a custom source's list too: planning reads columns
    bb = backbone or load_backbone(model, weights, input_size=input_size, crop_pct=crop_pct)
    infos = describe_layers(bb)
    specs = layer_specs(bb, layers, pool, infos)
    policy = policy or DecodePolicy()
    config = {
        "model": {k: v for k, v in bb.describe().items() if k != "weights"},
        "preprocess": bb.preprocess.to_dict(),
        "layers": [s.to_dict() for s in specs],
        "dtype": dtype,
        "runtime": runtime,
        "precision": precision,
        "decode_policy": policy.to_dict(),
        "views": {"count": views, "augment": augment_spec, "splits": list(views_splits), "seed": augment_seed}
        if views
        else 0,
    }
    import timm
    import torch

    metadata = {
        "model": bb.describe(),
        "preprocess": bb.preprocess.to_dict(),
        "layers": [s.to_dict() for s in specs],
        "dtype": dtype,
        "runtime": {"runtime": runtime, "precision": precision},
        "precision": precision,
        "class_names_of_backbone": None,
        "source": {"root": discovery.root, "layout": discovery.layout},
        "versions": {"deepfeat": __version__, "torch": torch.__version__, "timm": timm.__version__, "numpy": np.__version__},
    }
    row_bytes = sum(s.dims for s in specs) * np.dtype(dtype).itemsize * (1 + views)
    if part_size is None:
        part_size = int(max(16, min(4096, DEFAULT_PART_BYTES // max(1, row_bytes))))
    elif isinstance(count_or_size(part_size, "part_size", where="extract"), str):  # "64MiB": bytes of features a part
        part_size = int(max(1, parse_size(part_size, "part_size") // max(1, row_bytes)))
    metadata["views"] = config["views"]
    model_args = (
        None
        if backbone is not None
        else {
            "model": model,
            "weights": os.fspath(weights) if weights is not None else None,
            "input_size": input_size,
            "crop_pct": crop_pct,
            "offline": True if is_offline() else None,
        }
    )  # Ray workers keep --offline
    return ExtractPlan(
        discovery,
        bb,
        specs,
        config,
        metadata,
        part_size,
        dtype,
        views=views,
        augment=augment_spec,
        augment_seed=augment_seed,
        views_splits=views_splits,
        model_args=model_args,
        infos=infos,
        runtime=runtime,
        precision=precision,
    )


def _downscales_with_torch(plan: ExtractPlan, policy: DecodePolicy) -> bool:
    """Whether the job's first input is downscaled with torch (its decode workers import torch ahead)."""
    items = plan.discovery.items
    return bool(len(items)) and needs_torch(items[0].locator, plan.backbone.preprocess, policy)


def _excluded_table(discovery: Discovery) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in layout.LEDGER_SCHEMA}
    for ex in discovery.excluded:
        pb = os.fsencode(ex.path)
        for k, v in (
            ("id", None),
            ("path", layout.display_path(pb)),
            ("path_bytes", pb),
            ("label", None),
            ("split", None),
            ("status", "excluded"),
            ("reason", ex.reason),
            ("message", ex.message),
        ):
            cols[k].append(v)
    return pa.table(cols, schema=layout.LEDGER_SCHEMA)


def extract(
    source: str | os.PathLike | Source,
    out: str | os.PathLike,
    *,
    model: str = DEFAULT_MODEL,
    layers: str | Sequence[str] = PRE_LOGITS,
    pool: str | Mapping[str, str] = "avg",
    dtype: str = "float32",
    weights: str | None = None,
    input_size: int | tuple[int, int] | None = None,
    crop_pct: float | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    device: str = "auto",
    runtime: str = "auto",
    precision: str = "auto",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    channels_last: bool = True,
    part_size: int | str | None = None,
    part_seconds: float | None = DEFAULT_PART_SECONDS,
    overwrite: bool = False,
    ignore_free_space: bool = False,
    policy: DecodePolicy | None = None,
    engine: str | Engine = "local",
    progress: ProgressFn | None = None,
    backbone: Backbone | None = None,
    views: int = 0,
    augment: str | None = None,
    views_splits: Sequence[str] | str = ("train",),
    augment_seed: int = 0,
) -> ExtractSummary:
    """Extract features of ``layers`` for every image under ``source`` into the store ``out``.

    Rerunning the same call resumes: committed parts are kept, only missing inputs are
    processed. A different configuration on the same ``out`` is refused unless ``overwrite``.

    Args:
        source: image folder (``split/class/*``, ``class/*`` or flat), a CSV/TXT list file,
            WebDataset ``.tar`` shards (a path, glob or ``{000..099}`` braces), Parquet files,
            ``hf:PATH`` (a saved Hugging Face dataset), or a :class:`deepfeat.sources.Source`
            built with options, e.g. ``ParquetSource("lake/*.parquet", image_field="jpg")``.
        out: store directory (created if needed).
        model: backbone name (see :func:`deepfeat.list_models`); ``weights`` a local file or "random".
        layers: names as ``deepfeat layers`` prints them, comma-separated, or shortcuts.
        pool: ``none|avg|max|avgmax``, optionally per layer: ``"avg,blocks.4=none"``.
        dtype: ``float16`` or ``float32`` storage.
        workers: decode processes (default: one per core with a runtime on the CPU, which they feed
            taking turns or overlapped, whichever the first batches timed faster; with a GPU runtime,
            spare cores to start with, then balanced against the runtime on the rates measured over
            the first part -- the summary's ``decode_workers`` says what ran; a number given here is
            kept; 0 = decode in this process). With ``engine="ray"``: decode
            processes inside each Ray worker (default 0: the worker decodes).
        engine: ``"local"`` (this machine), ``"ray"``, or an engine object with its own options,
            e.g. ``RayEngine(address="auto", workers=8)`` (see :mod:`deepfeat.engines`, docs/RAY.md).
            The store is the same, and either engine resumes the other's store.
        views: augmented views stored per image of ``views_splits`` (and of unsplit inputs), besides
            view 0; ``augment`` is their spec (see :mod:`deepfeat.data.augment`), seeded per
            (``augment_seed``, image id, view) so that reruns and resumes give the same features.
        runtime: ``auto`` (the fastest installed runtime that runs the model here; on a resume, the
            store's own runtime), ``torch``, ``openvino`` or ``onnxruntime``; ``precision``: ``auto``,
            ``fp32``, ``bf16``, ``fp16`` or ``int8`` (OpenVINO + NNCF, quantised on a seeded sample of 300
            of the job's images; never chosen by ``auto``). Both are recorded in the store and its
            fingerprint.
        min_agreement: the precision guard's threshold. A reduced precision (bf16, fp16) is first
            measured against torch fp32 on a seeded sample of 64 of the job's images; it is used only
            when every tap's minimum per-row cosine is >= ``min_agreement`` and its median >=
            ``1 - (1 - min_agreement) / 4``. Below it ``precision="auto"`` falls back (to fp32) and an
            explicit precision is refused. The measurement is recorded in the store
            (``deepfeat info``); a resume keeps the store's precision without measuring again.
        progress: callback receiving dicts with a ``phase`` key ("plan", "batch", "part").
        part_size: inputs per part, or a size of features per part such as ``"64MiB"`` (default: about
            256 MiB of features, 16 to 4096 inputs);
            ``part_seconds``: the local engine also commits a part once it has been open that long
            (default 30; None: by size only), so an interrupt loses at most about that much work.
            The Ray engine keeps parts of ``part_size`` inputs.
        ignore_free_space: start even when the job's estimated size exceeds the free space on the
            output's filesystem (otherwise an :class:`EnvironmentFault` before any image is read).

    Returns:
        An :class:`ExtractSummary`.
    """
    if is_url(os.fspath(out)):
        raise UsageError(
            f"The output {os.fspath(out)!r} is a URL; a store lives on a POSIX file system (its commits "
            "rely on fsync, atomic rename and flock, which object stores lack). Write it to a local or "
            "shared file system (mounted at the same path on every node) and copy the finished store."
        )
    eng = get_engine(engine)
    eng.check()
    balance_workers = workers is None  # the default is balanced on measured rates; a given number is kept
    workers = eng.default_workers() if workers is None else check_int(workers, "workers", minimum=0, where="extract")
    validate_extract_args(dtype, device, precision, batch_size, workers, part_size)
    check_min_agreement(min_agreement, where="extract")
    check_number(part_seconds, "part_seconds", minimum=0, min_open=True, where="extract", optional=True)
    check_int(views, "views", minimum=0, where="extract")
    device = eng.resolve_device(device)
    requested = precision
    recorded_metadata = None if overwrite else _recorded_metadata(os.fspath(out))
    recorded_config = _recorded_config(recorded_metadata)
    recorded = _recorded_choice(recorded_config)
    runtime, precision = _resume_choice(recorded, runtime, precision, device)
    choice = resolve_runtime(runtime, device, precision)
    settings = RunSettings(
        batch_size=batch_size,
        workers=workers,
        device=device,
        channels_last=channels_last,
        policy=policy or DecodePolicy(),
        progress=progress,
        part_seconds=part_seconds,
        balance_workers=balance_workers,
    )
    # start-up overlaps the model load; torch's import too, when a model is to load (docs/DECISIONS.md)
    decoders = start_decoders(settings, import_ahead=backbone is None) if eng.name == "local" else None
    try:
        start = time.perf_counter()
        plan = plan_extraction(
            source,
            model=model,
            layers=layers,
            pool=pool,
            dtype=dtype,
            weights=weights,
            input_size=input_size,
            crop_pct=crop_pct,
            precision=choice.precision,
            runtime=choice.runtime,
            part_size=part_size,
            policy=policy,
            backbone=backbone,
            views=views,
            augment=augment,
            views_splits=views_splits,
            augment_seed=augment_seed,
            skip_dirs=(out,),
        )
        _keep_recorded_resizer(plan, recorded_config)
        if decoders is not None:  # the other workers, as many as the job has batches, start now (before the guard)
            decoders.import_ahead(_downscales_with_torch(plan, settings.policy))
            decoders.start(math.ceil(len(plan.discovery.items) / max(1, batch_size)))
        out = os.fspath(out)
        if os.path.exists(out) and not os.path.isdir(out):
            raise UsageError(f"The output {out!r} exists and is not a directory.")
        if plan.precision == "int8":
            if eng.name != "local":
                raise UsageError(
                    f"The precision 'int8' runs on the local engine only (it is calibrated on the job's "
                    f"images where the runtime is built); got engine {eng.name!r}."
                )
            _calibrate(plan, settings, recorded_metadata)  # also on a resume: the digest finds the cached export
        if recorded != (choice.runtime, choice.precision):  # a resume keeps the store's precision unmeasured
            _guard(plan, settings, requested, min_agreement)
        eng.prepare(plan, settings)  # e.g. the local runtime is built (and any fallback recorded) before the store opens
        summary = ExtractSummary(
            out=out,
            discovered=len(plan.discovery.items),
            excluded=len(plan.discovery.excluded),
            notes=list(plan.discovery.notes),
        )
        for ex in plan.discovery.excluded:
            summary.excluded_by_reason[ex.reason] = summary.excluded_by_reason.get(ex.reason, 0) + 1
        with StoreWriter(out) as writer:
            summary.resumed = writer.open(plan.config, plan.metadata, overwrite)
            manifest = writer.manifest
            writer.write_excluded(_excluded_table(plan.discovery))
            finished, to_read = finished_containers(plan.discovery.items, manifest.parts)
            pending, summary.vanished_since = resume_filter(plan.discovery.items, lambda: writer.done_id_chunks(to_read))
            pending = without_containers(pending, finished)
            summary.already_done = len(plan.discovery.items) - len(pending)
            if summary.vanished_since:
                log.warning(
                    "%d inputs stored earlier are no longer in the source (kept in the store)", summary.vanished_since
                )
            est = plan.estimate(pending)
            if not ignore_free_space:
                check_free_space(out, est)
            if progress:
                progress(
                    {
                        "phase": "plan",
                        "estimate": est,
                        "total": len(plan.discovery.items),
                        "pending": len(pending),
                        "already_done": summary.already_done,
                        "excluded": summary.excluded,
                        "layers": plan.layers,
                        "part_size": plan.part_size,
                        "device": device,
                        "runtime": plan.runtime,
                        "precision": plan.precision,
                        "agreement": plan.metadata.get("runtime", {}).get("agreement"),
                    }
                )
            summary.embedded_now, summary.failed_now, summary.parts_committed = eng.run(plan, pending, writer, settings)
        balance = getattr(eng, "balance", None)
        summary.decode_workers = balance.summary() if hasattr(balance, "summary") else ""
        _fill_totals(summary, manifest, out)
        summary.seconds = time.perf_counter() - start
        log.info(
            "extract: %d embedded, %d failed, %d excluded in %.1f s",
            summary.embedded_total,
            summary.failed_total,
            summary.excluded,
            summary.seconds,
        )
    finally:
        if decoders is not None:
            decoders.close()
    return summary


def finished_containers(items: Sequence[SourceItem], parts: Sequence[PartRecord]) -> tuple[list[int], list[PartRecord]]:
    """The containers of ``items`` (codes) that the store's parts finished -- matched by
    :meth:`~deepfeat.sources.table.ItemTable.container_keys`: the same container, the same ids -- and
    the parts whose ledgers a resume must still read: all but those holding only finished containers
    the source still lists. No codes and every part when nothing is skipped (a fresh store, loose
    files, a store written before parts named their containers).

    A resume compares the read ledgers' ids with every discovered input (so ids that vanished are
    counted as before) and then leaves the finished containers out (:func:`without_containers`). At
    10 M inputs in finished containers: 0.24 s instead of 66 s reading every ledger (docs/SCALE.md).
    """
    finished = {k for p in parts for k, done in p.containers.items() if done}
    if not finished:
        return [], list(parts)
    keys = as_table(items).container_keys()
    listed = {k for k in keys if k is not None}
    codes = [c for c, k in enumerate(keys) if k is not None and k in finished]
    to_read = [p for p in parts if not p.containers or not all(k in finished and k in listed for k in p.containers)]
    log.info("resume: %d finished containers skipped; %d of %d ledgers read", len(codes), len(to_read), len(parts))
    return codes, to_read


def without_containers(items: ItemTable, codes: Sequence[int]) -> ItemTable:
    """``items`` without the inputs of the containers ``codes`` (``items`` itself when there are none)."""
    if not len(codes):
        return items
    keep = ~np.isin(items.cont, np.asarray(codes, dtype=np.int64))
    return items.take(np.flatnonzero(keep))


def resume_filter(items: Sequence[SourceItem], done: Callable[[], Iterable[pa.Array]]) -> tuple[ItemTable, int]:
    """The inputs of ``items`` whose id is not in ``done`` (what a run still has to do, as an
    :class:`~deepfeat.sources.table.ItemTable`), and how many of the ``done`` ids the source no longer lists.

    ``done()``: the ids a store's committed parts record, as Arrow string arrays read one ledger at a
    time (:meth:`~deepfeat.store.reader.FeatureStore.done_id_chunks`); called again only for ids that
    are not deepfeat's. deepfeat's ids are 20 hex digits
    (:func:`~deepfeat.sources.items.item_id`, a blake2b-80 digest), so both sides are compared as their
    10 digest bytes -- a sorted uint64 of the first 8 and a uint16 of the last 2; the discovered ones
    are already held that way (:meth:`ItemTable.keys`): ~10 bytes per done id held, instead of a
    Python set of strings (~200 bytes per id at its peak; docs/SCALE.md). Ids of another shape (a
    custom :class:`~deepfeat.sources.Source`) are compared as strings. A fresh store (nothing done)
    returns ``items`` itself.

    Example:
        >>> import pyarrow as pa
        >>> from deepfeat.sources.items import SourceItem, item_id
        >>> items = [SourceItem(item_id(n), n, n, None, None, 0) for n in ("a.jpg", "b.jpg", "c.jpg")]
        >>> todo, vanished = resume_filter(items, lambda: [pa.array([item_id("b.jpg"), item_id("gone.jpg")])])
        >>> [it.relpath for it in todo], vanished
        (['a.jpg', 'c.jpg'], 1)
    """
    table = as_table(items)
    done_keys = hex_keys(done())
    if done_keys is not None and len(done_keys[0]) == 0:
        return table, 0
    current_keys = table.keys()
    if done_keys is None or current_keys is None:  # ids that are not deepfeat's digests: compare the strings
        done_set = {i for d in done() for i in d.to_pylist()}
        current = {i for chunk in table.id_chunks() for i in chunk.to_pylist()}
        keep = np.fromiter((it.id not in done_set for it in table), dtype=bool, count=len(table))
        return table.take(np.flatnonzero(keep)), len(done_set - current)
    is_done = members(current_keys, done_keys)
    vanished = int(len(done_keys[0]) - members(done_keys, current_keys).sum())  # a store records an id once
    return table.take(np.flatnonzero(~is_done)), vanished


def check_free_space(out: str, estimate: Mapping[str, int]) -> None:
    """Refuse a job whose estimated feature bytes exceed the free space on ``out``'s filesystem.

    Raises:
        EnvironmentFault: with the estimate, the free space and the ways out.
    """
    need = int(estimate["bytes"])
    free = shutil.disk_usage(out).free
    log.info("job estimate %d bytes, %d bytes free on the filesystem of %s", need, free, out)
    if need > free:
        raise EnvironmentFault(
            f"the job needs about {format_size(need)} ({estimate['rows']:,} rows x {estimate['dims']:,} dims x "
            f"{estimate['bytes_per_value']} B) but the filesystem of {out!r} has {format_size(free)} free; free some "
            "space, choose another --out, make the rows smaller (--dtype float16, pooling, fewer layers), or pass "
            "--ignore-free-space (ignore_free_space=True) to start anyway"
        )


def _fill_totals(summary: ExtractSummary, manifest: Manifest, out: str) -> None:
    summary.embedded_total = sum(p.embedded for p in manifest.parts)
    summary.failed_total = sum(p.failed for p in manifest.parts)
    summary.rows_total = sum(p.rows for p in manifest.parts)
    summary.bytes_on_disk = sum(f["bytes"] for p in manifest.parts for f in p.files.values())
    summary.failures_by_reason = FeatureStore(out, verify=False).failures_by_reason()

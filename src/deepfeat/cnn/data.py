"""Images for network training: splits, a decode-once memory cache, streaming, batched augmentation.

Images go through the one decode policy and the model's own ``resize_crop`` (the same as at
extraction time). When all of them fit ``memory_budget`` as ``uint8`` pixels they are decoded
once, by worker processes, into one array (one channel when every image is gray); otherwise
every epoch decodes them again in worker processes, in the same seeded order. Augmentation runs
batched in torch on the training device, drawn from a seeded generator, so a run is
reproducible and a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.augment import parse_augment
from ..data.decode import DecodePolicy
from ..data.decode_pool import DecodePool
from ..data.preprocess import Preprocess
from ..errors import UsageError
from ..params import check_choice, param_error
from ..sources.items import Discovery

log = logging.getLogger(__name__)

#: Augmentations the training loop applies (a subset of :mod:`deepfeat.data.augment`'s vocabulary).
TRAIN_AUGMENTATIONS = ("flip", "vflip", "crop", "rotate", "translate", "color", "grayscale")


@dataclass
class Split:
    """The labelled items of one split: paths, ids and class indices (aligned lists)."""

    name: str
    paths: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, name: str, idx: np.ndarray) -> "Split":
        return Split(name, [self.paths[i] for i in idx], [self.ids[i] for i in idx], [self.labels[i] for i in idx])


@dataclass
class Splits:
    classes: list[str]
    train: Split
    val: Split
    test: Split | None
    val_source: str  #: "val", "held-out" or (asked for) "test"
    unlabelled: int = 0


#: where train-cnn / finetune validate: ``auto`` = the ``val`` split when the source has one, else a
#: hashed hold-out of the training images; ``test`` only when asked for by name
VALIDATION_CHOICES: tuple[str, ...] = ("auto", "val", "held-out", "test")


def make_splits(discovery: Discovery, val_fraction: float, seed: int, validation: str = "auto") -> Splits:
    """Training / validation (/ test) items of a discovered source.

    ``validation``: ``auto`` validates on the source's ``val`` split, else on a ``val_fraction``
    hold-out of the training items; never on ``test`` (which early stopping would then tune on:
    an optimistic test accuracy) unless ``validation="test"`` asks for it. ``val`` and ``held-out``
    force one of the two. The hold-out is stratified and hashed: per class, the items whose keyed
    hash of their id (keyed by ``seed``) is smallest, so adding images moves few others. ``test``
    is kept apart whenever it is not the validation set. Items without a label are left out.
    """
    check_choice(validation, "validation", VALIDATION_CHOICES, where="make_splits")
    labelled = [it for it in discovery.items if it.label is not None]
    unlabelled = len(discovery.items) - len(labelled)
    classes = sorted({it.label for it in labelled})  # type: ignore[type-var]
    if len(classes) < 2:
        raise UsageError(
            f"Training needs labelled images of at least 2 classes; the source {discovery.root!r} has "
            f"{len(classes)} class(es) ({discovery.layout} layout). Use class folders (root/<class>/...) or "
            "split folders (root/train/<class>/...), or a list file with a label column."
        )
    index = {c: i for i, c in enumerate(classes)}
    by_split: dict[str | None, Split] = {}
    for it in labelled:
        sp = by_split.setdefault(it.split, Split(str(it.split)))
        sp.paths.append(it.path)
        sp.ids.append(it.id)
        sp.labels.append(index[it.label])  # type: ignore[index]
    train = Split("train")
    for key in ("train", None):
        if key in by_split:
            s = by_split[key]
            train.paths += s.paths
            train.ids += s.ids
            train.labels += s.labels
    ignored = sorted(str(k) for k in by_split if k not in ("train", None, "val", "test"))
    if ignored:
        log.warning("items of the splits %s are not used for training", ", ".join(ignored))
    if not len(train):
        raise UsageError(f"The source {discovery.root!r} has no training images (split 'train' or no split).")
    test = by_split.get("test")
    if validation == "test":
        if test is None:
            raise UsageError(f"validation='test' (--validation test) but the source {discovery.root!r} has no test split.")
        val, source, test = test, "test", None
    elif validation == "val" or (validation == "auto" and "val" in by_split):
        if "val" not in by_split:
            raise UsageError(
                f"validation='val' (--validation val) but the source {discovery.root!r} has no val "
                "split; use 'auto' to hold out part of train."
            )
        val, source = by_split["val"], "val"
    else:
        if not 0.0 < val_fraction < 1.0:
            raise param_error("val_fraction", "a number in (0, 1)", val_fraction)
        held = _hashed_holdout(train.ids, train.labels, len(classes), val_fraction, seed)
        held_set = set(held)
        keep = np.asarray([i for i in range(len(train)) if i not in held_set], dtype=np.int64)
        val = train.subset("val", np.asarray(sorted(held), dtype=np.int64))
        train = train.subset("train", keep)
        source = "held-out"
    val.name = "val"
    if not len(val):
        raise UsageError("The validation set is empty; add a val split or raise 'val_fraction'.")
    missing = sorted(set(range(len(classes))) - set(train.labels))
    if missing:
        log.warning("classes without training images: %s", ", ".join(classes[i] for i in missing))
    return Splits(classes, train, val, test, source, unlabelled)


def _hashed_holdout(ids: list[str], labels: list[int], num_classes: int, fraction: float, seed: int) -> list[int]:
    """Per class, the ``round(fraction * n)`` items (at least 1, at most n - 1; none of a class of one)
    with the smallest keyed hash of their id."""
    key = f"deepfeat-holdout-{seed}".encode()[:64]
    rank = [hashlib.blake2b(i.encode("utf-8", "surrogateescape"), digest_size=8, key=key).digest() for i in ids]
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, y in enumerate(labels):
        by_class[y].append(i)
    held: list[int] = []
    for idx in by_class:
        k = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1) if len(idx) >= 2 else 0
        held.extend(sorted(idx, key=rank.__getitem__)[:k])
    return held


class ImageSet:
    """The pixels of one split, as uint8 NHWC batches of 3 channels (see the module docstring)."""

    def __init__(self, split: Split, preprocess: Preprocess, policy: DecodePolicy, workers: int) -> None:
        self.split = split
        self.preprocess = preprocess
        self.policy = policy
        self.workers = workers
        self.pixels: torch.Tensor | None = None  # N x H x W x C (C = 1 or 3) when cached
        self.labels = torch.tensor(split.labels, dtype=torch.int64)
        self.keep = np.arange(len(split))  # items that decoded (cache) -- all until known
        self.failed: dict[str, str] = {}

    @property
    def cached(self) -> bool:
        return self.pixels is not None

    def __len__(self) -> int:
        return len(self.keep)

    def nbytes(self) -> int:
        h, w = self.preprocess.input_size
        return len(self.split) * h * w * 3

    def _pool(self):

        return DecodePool(self.workers, self.preprocess.to_dict(), self.policy)

    def build_cache(self, chunk: int = 256) -> None:
        """Decode every image once into memory (failures are logged and left out)."""
        h, w = self.preprocess.input_size
        arr = np.empty((len(self.split), h, w, 3), dtype=np.uint8)
        ok = np.zeros(len(self.split), dtype=bool)
        items = [(self.split.ids[i], self.split.paths[i], 0) for i in range(len(self.split))]
        pos = {item_id: i for i, item_id in enumerate(self.split.ids)}
        with self._pool() as pool:
            batches = (items[s : s + chunk] for s in range(0, len(items), chunk))
            for _batch, results in pool.map(batches):
                for r in results:
                    i = pos[r.id]
                    if hasattr(r, "pixels"):
                        arr[i] = r.pixels[0]
                        ok[i] = True
                    else:
                        self.failed[self.split.paths[i]] = f"{r.reason}: {r.message}"
        self._log_failures()
        keep = np.flatnonzero(ok)
        arr = arr[keep] if len(keep) < len(arr) else arr
        if arr.size and _is_gray(arr):
            arr = np.ascontiguousarray(arr[..., :1])
        self.pixels = torch.from_numpy(arr)
        self.labels = self.labels[torch.from_numpy(keep)]
        self.keep = keep

    def _log_failures(self) -> None:
        if self.failed:
            first = next(iter(self.failed.items()))
            log.warning("%d %s images could not be used (first: %s: %s)", len(self.failed), self.split.name, *first)

    def is_gray(self, sample: int = 64) -> bool:
        """Whether the images are gray (R = G = B): the cache, or the first ``sample`` images."""
        if self.pixels is not None:
            return self.pixels.shape[-1] == 1
        batch = next(self.batches(np.arange(min(sample, len(self.split))), sample), None)
        return batch is not None and _is_gray(batch[0].numpy())

    def to(self, device: torch.device) -> None:
        """Move the cache (and labels) to ``device`` (e.g. the GPU, when it fits)."""
        if self.pixels is not None:
            self.pixels = self.pixels.to(device)
            self.labels = self.labels.to(device)

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 N x H x W x 3, int64 labels) for positions ``order`` (0..len-1), in that order."""
        if self.pixels is not None:
            for s in range(0, len(order), batch_size):
                idx = torch.as_tensor(order[s : s + batch_size], dtype=torch.int64, device=self.pixels.device)
                px = self.pixels.index_select(0, idx)
                yield px.expand(-1, -1, -1, 3) if px.shape[-1] == 1 else px, self.labels.index_select(0, idx)
            return
        sel = self.keep[order]
        pos = {self.split.ids[i]: i for i in sel}
        chunks = (
            [(self.split.ids[i], self.split.paths[i], 0) for i in sel[s : s + batch_size]]
            for s in range(0, len(sel), batch_size)
        )
        with self._pool() as pool:
            for _batch, results in pool.map(chunks):
                px, ys = [], []
                for r in results:
                    if hasattr(r, "pixels"):
                        px.append(r.pixels[0])
                        ys.append(self.split.labels[pos[r.id]])
                    elif self.split.paths[pos[r.id]] not in self.failed:
                        self.failed[self.split.paths[pos[r.id]]] = f"{r.reason}: {r.message}"
                        log.warning(
                            "%s image %s could not be used: %s: %s",
                            self.split.name,
                            self.split.paths[pos[r.id]],
                            r.reason,
                            r.message,
                        )
                if px:
                    yield torch.from_numpy(np.stack(px)), torch.tensor(ys, dtype=torch.int64)


def _is_gray(arr: np.ndarray) -> bool:
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]))


def to_unit_float(batch: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def normalize(x: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """[0, 1] NCHW -> normalised, exactly as :meth:`Preprocess.normalize` does."""
    mean = torch.tensor(preprocess.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean).div_(std)


class BatchAugment:
    """Seeded, batched augmentation of [0, 1] NCHW tensors (one random draw per image).

    Geometric options (``flip``, ``vflip``, ``crop``, ``rotate``, ``translate``) are combined
    into one affine resampling per image; ``color`` jitters brightness, contrast and saturation;
    ``grayscale`` converts with its probability. Values mean what they mean in
    :mod:`deepfeat.data.augment` (e.g. ``crop=0.8`` keeps at least 80 % of the area).

    Example:
        >>> aug = BatchAugment("flip,crop=0.9,rotate=10")
        >>> aug(torch.rand(4, 3, 28, 28), torch.Generator().manual_seed(0)).shape
        torch.Size([4, 3, 28, 28])
    """

    def __init__(self, spec: str | None) -> None:
        self.spec = parse_augment(spec) if spec and spec.strip().lower() not in ("none", "off") else ""
        self.params = {k: float(v) for k, v in (t.split("=") for t in self.spec.split(","))} if self.spec else {}
        unsupported = sorted(set(self.params) - set(TRAIN_AUGMENTATIONS))
        if unsupported:
            raise UsageError(
                f"The augmentations {unsupported} are not available for training; use {', '.join(TRAIN_AUGMENTATIONS)}."
            )

    def __bool__(self) -> bool:
        return bool(self.params)

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        if not self.params:
            return x
        p = self.params
        n, _c, h, w = x.shape

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=gen)  # drawn on the CPU: same numbers on every device

        geometric = any(k in p for k in ("flip", "vflip", "crop", "rotate", "translate"))
        # Draw every random number in a fixed order, whether or not it is used.
        u = rand(n, 10)
        if geometric:
            sx = torch.ones(n)
            sy = torch.ones(n)
            tx = torch.zeros(n)
            ty = torch.zeros(n)
            if "crop" in p:
                area = p["crop"] + (1.0 - p["crop"]) * u[:, 0]
                ratio = torch.exp((u[:, 1] * 2 - 1) * math.log(4 / 3))
                sx = torch.sqrt(area * ratio).clamp(max=1.0)
                sy = torch.sqrt(area / ratio).clamp(max=1.0)
                tx = (1 - sx) * (u[:, 2] * 2 - 1)
                ty = (1 - sy) * (u[:, 3] * 2 - 1)
            if "translate" in p:
                tx = tx + p["translate"] * 2 * (u[:, 7] * 2 - 1)
                ty = ty + p["translate"] * 2 * (u[:, 8] * 2 - 1)
            fx = torch.where(u[:, 4] < p.get("flip", 0.0), -1.0, 1.0)
            fy = torch.where(u[:, 5] < p.get("vflip", 0.0), -1.0, 1.0)
            angle = (u[:, 6] * 2 - 1) * math.radians(p.get("rotate", 0.0))
            cos, sin = torch.cos(angle), torch.sin(angle)
            # Rotation in pixel space expressed in normalised coordinates (non-square images stay undistorted).
            ar = w / h
            theta = torch.zeros(n, 2, 3)
            theta[:, 0, 0] = cos * sx * fx
            theta[:, 0, 1] = -sin * sy * fy / ar
            theta[:, 1, 0] = sin * sx * fx * ar
            theta[:, 1, 1] = cos * sy * fy
            theta[:, 0, 2] = tx
            theta[:, 1, 2] = ty
            grid = torch.nn.functional.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
            x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        v = rand(n, 4)
        if "color" in p:
            s = p["color"]
            b = (1 + s * (v[:, 0] * 2 - 1)).view(n, 1, 1, 1).to(x.device)
            c = (1 + s * (v[:, 1] * 2 - 1)).view(n, 1, 1, 1).to(x.device)
            sat = (1 + s * (v[:, 2] * 2 - 1)).view(n, 1, 1, 1).to(x.device)
            x = x * b
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * c + mean
            gray = _luma(x)
            x = (x - gray) * sat + gray
        if "grayscale" in p:
            to_gray = (v[:, 3] < p["grayscale"]).view(n, 1, 1, 1).to(x.device)
            x = torch.where(to_gray, _luma(x).expand_as(x), x)
        return x.clamp_(0.0, 1.0)


def _luma(x: torch.Tensor) -> torch.Tensor:
    wts = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * wts).sum(dim=1, keepdim=True)

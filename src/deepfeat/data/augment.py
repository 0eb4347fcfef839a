"""Augmented views: a small, documented vocabulary of seeded augmentations (torchvision v2).

A spec is a comma-separated list of ``name`` or ``name=value``:

==============  =========  ==================================================================
name            default    effect
==============  =========  ==================================================================
``flip``        0.5        horizontal flip with this probability
``vflip``       0.5        vertical flip with this probability
``crop``        0.8        random resized crop keeping at least this fraction of the area
``rotate``      15         rotation by up to +/- this many degrees
``translate``   0.1        shift by up to this fraction of width/height
``color``       0.2        brightness / contrast / saturation jitter of this strength
``grayscale``   0.2        convert to grayscale with this probability
``blur``        1.0        Gaussian blur with sigma up to this value
==============  =========  ==================================================================

Each view is seeded by ``(seed, image id, view index)``, so reruns, resumes and other
engines produce the same augmented pixels whatever the batch or worker.

Example:
    >>> parse_augment("flip,crop=0.8,rotate=15")
    'flip=0.5,crop=0.8,rotate=15'
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, cast

from PIL import Image

from ..errors import UsageError
from ..params import param_error

DEFAULT_AUGMENT = "flip,crop=0.8"
VOCABULARY: dict[str, tuple[float, float, float]] = {
    # name: (default, min, max)
    "flip": (0.5, 0.0, 1.0),
    "vflip": (0.5, 0.0, 1.0),
    "crop": (0.8, 0.05, 1.0),
    "rotate": (15.0, 0.0, 180.0),
    "translate": (0.1, 0.0, 0.5),
    "color": (0.2, 0.0, 1.0),
    "grayscale": (0.2, 0.0, 1.0),
    "blur": (1.0, 0.1, 10.0),
}


def _fmt(v: float) -> str:
    return f"{v:g}"


def parse_augment(spec: str) -> str:
    """Validate a spec and return its canonical form (defaults filled in, order kept)."""
    if not isinstance(spec, str) or not spec.strip():
        raise param_error("augment", f"a non-empty spec like {DEFAULT_AUGMENT!r}", spec)
    out: list[str] = []
    seen: set[str] = set()
    for token in spec.split(","):
        token = token.strip()
        if not token:
            continue
        name, _, raw = token.partition("=")
        name = name.strip().lower()
        if name not in VOCABULARY:
            raise UsageError(
                f"Unknown augmentation {name!r} in {spec!r}; valid: "
                + ", ".join(f"{k}[={_fmt(v[0])}]" for k, v in VOCABULARY.items())
                + "."
            )
        if name in seen:
            raise UsageError(f"The augmentation {name!r} appears twice in {spec!r}.")
        seen.add(name)
        default, lo, hi = VOCABULARY[name]
        try:
            value = float(raw) if raw.strip() else default
        except ValueError:
            raise UsageError(f"The value of {name!r} in {spec!r} must be a number; got {raw!r}.") from None
        if not lo <= value <= hi:
            raise UsageError(f"The value of {name!r} must be in [{_fmt(lo)}, {_fmt(hi)}]; got {_fmt(value)}.")
        out.append(f"{name}={_fmt(value)}")
    if not out:
        raise UsageError(f"The 'augment' spec {spec!r} names no augmentation.")
    return ",".join(out)


def view_seed(seed: int, item_id: str, view: int) -> int:
    """Deterministic 63-bit seed of one (image, view)."""
    digest = hashlib.blake2b(f"{seed}:{item_id}:{view}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & ((1 << 63) - 1)


class Augmenter:
    """Applies a canonical spec to PIL images, seeded per (image id, view).

    torch/torchvision are imported on first use, so decode workers of runs without views
    never load them.
    """

    def __init__(self, spec: str, seed: int = 0) -> None:
        self.spec = parse_augment(spec)
        self.seed = int(seed)
        self.params = {k: float(v) for k, v in (t.split("=") for t in self.spec.split(","))}

    def _transforms(self, size: tuple[int, int]) -> Any:
        import torchvision.transforms.v2 as T

        w, h = size
        steps: list[Any] = []
        p = self.params
        if "crop" in p:
            steps.append(T.RandomResizedCrop((h, w), scale=(p["crop"], 1.0), antialias=True))
        if "flip" in p:
            steps.append(T.RandomHorizontalFlip(p["flip"]))
        if "vflip" in p:
            steps.append(T.RandomVerticalFlip(p["vflip"]))
        if "rotate" in p or "translate" in p:
            t = p.get("translate", 0.0)
            steps.append(
                T.RandomAffine(
                    degrees=p.get("rotate", 0.0), translate=(t, t) if t else None, interpolation=T.InterpolationMode.BILINEAR
                )
            )
        if "color" in p:
            c = p["color"]
            steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c))
        if "grayscale" in p:
            steps.append(T.RandomGrayscale(p["grayscale"]))
        if "blur" in p:
            k = max(3, (int(min(w, h) * 0.05) // 2) * 2 + 1)
            steps.append(T.GaussianBlur(k, sigma=(0.1, p["blur"])))
        return T.Compose(steps)

    def __call__(self, image: Image.Image, item_id: str, view: int) -> Image.Image:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view_seed(self.seed, item_id, view))
            out = self._transforms(image.size)(image)
        return cast(Image.Image, out.convert("RGB") if out.mode != "RGB" else out)


@lru_cache(maxsize=8)
def get_augmenter(spec: str, seed: int = 0) -> Augmenter:
    """A cached :class:`Augmenter` (one per worker process and spec)."""
    return Augmenter(spec, seed)

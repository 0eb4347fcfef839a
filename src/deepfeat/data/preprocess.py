"""The model's evaluation preprocessing, as data: resize, centre crop, normalise.

A :class:`Preprocess` is stored in every feature store and model bundle, so the same
transform is applied at extraction, training and prediction time. The resize/crop half runs
in decode workers on PIL images and yields ``uint8`` HWC arrays (cheap to ship between
processes); the normalise half runs batched in torch in the main process.

Both resizers (:data:`RESIZERS`) compute the same thing -- the shorter side resized with an
antialiased filter, then the centre crop -- and stores and bundles record which one they used:

* ``"pillow"`` (everything written before ``"torch"`` existed): Pillow resizes the whole image,
  then the crop is cut out;
* ``"torch"`` (the default): a downscale by the bilinear or bicubic filter runs torch's antialiased
  uint8 kernel (SIMD on x86, Pillow's filter shape) over only the rows and columns the crop needs,
  on the same sampling grid (about 4x faster; within 1 grey level of ``"pillow"`` on photographs --
  where the first pass overshoots 0..255, e.g. noise, the two pass orders can differ more); anything
  else runs Pillow on the crop box alone (``Image.resize(box=)``, within 1 grey level).

Example:
    >>> p = Preprocess(input_size=(224, 224), crop_pct=0.875)
    >>> p.resize_size
    256
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..errors import UsageError
from ..interrupts import import_held
from ..units import format_size

if TYPE_CHECKING:  # torch is imported lazily: decode workers only need PIL + numpy
    import torch

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


#: who computes the resize (see the module docstring); stores and bundles that record none used "pillow"
RESIZERS = ("torch", "pillow")

#: interpolations torch's antialiased uint8 kernel computes like Pillow (a = -0.5 cubic), with their support
_TORCH_MODES = {"bilinear": 1.0, "bicubic": 2.0}

#: the largest input side: a 4096x4096 image is 192 MiB as float32 before the first layer's
#: activations (several GiB); larger sizes are mistakes (issue 12: --input-size 100000 = 112 GiB)
MAX_INPUT_SIZE = 4096


@dataclass(frozen=True)
class Preprocess:
    """Evaluation preprocessing of one backbone.

    The shorter side is resized to ``floor(size / crop_pct)`` with ``interpolation``, then a
    centre crop of ``input_size`` (height, width) is taken, pixels are scaled to [0, 1] and
    normalised with ``mean``/``std`` per channel.
    """

    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 0.875
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: decode JPEGs at 1/2..1/8 scale when they are at least three times the resize size (recorded
    #: in stores and bundles; False in those written before it existed)
    jpeg_draft: bool = True
    #: ``"torch"``: torch's SIMD kernel computes a downscale; ``"pillow"``: Pillow resizes the whole image
    #: (recorded in stores and bundles; "pillow" in those written before "torch" existed)
    resizer: str = "torch"

    def __post_init__(self) -> None:
        h, w = self.input_size
        if h < 1 or w < 1:
            raise UsageError(f"The 'input_size' must be positive; got {self.input_size} instead.")
        if max(h, w) > MAX_INPUT_SIZE:
            raise UsageError(
                f"The 'input_size' (--input-size) must be at most {MAX_INPUT_SIZE} pixels a side; got "
                f"{h}x{w}, whose input tensor alone is {format_size(3 * h * w * 4)} per image."
            )
        if not 0.05 <= self.crop_pct <= 1.0:
            raise UsageError(f"The 'crop_pct' must be in [0.05, 1]; got {self.crop_pct} instead.")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(
                f"The 'interpolation' must be one of {sorted(INTERPOLATIONS)}; got {self.interpolation!r} instead."
            )
        if self.resizer not in RESIZERS:
            raise UsageError(f"The 'resizer' must be one of {list(RESIZERS)}; got {self.resizer!r} instead.")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise UsageError(f"The 'mean'/'std' must have 3 values and std > 0; got {self.mean}/{self.std}.")

    @property
    def resize_size(self) -> int:
        """Length the shorter image side is resized to before the crop."""
        return int(math.floor(min(self.input_size) / self.crop_pct))

    @property
    def draft_size(self) -> int | None:
        """Smallest side a JPEG may be DCT-downscaled to: three times what the resize needs.

        A reducing gap of 3 keeps features within cosine 0.9997 of a full decode down to 64 px
        inputs (gap 2, Pillow's thumbnail default, gave 0.998 there).
        """
        if not self.jpeg_draft:
            return None
        h, w = self.input_size
        return 3 * max(self.resize_size, int(math.ceil(max(h, w) / self.crop_pct)))

    def to_dict(self) -> dict[str, Any]:
        """The record stored in stores and bundles (``resizer`` only when not "pillow", so the
        preprocessing of stores written before it existed keeps its fingerprint)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.resizer == "pillow":
            del d["resizer"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(
            input_size=tuple(int(v) for v in d["input_size"]),  # type: ignore[arg-type]
            crop_pct=float(d["crop_pct"]),
            interpolation=str(d["interpolation"]),
            mean=tuple(float(v) for v in d["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in d["std"]),  # type: ignore[arg-type]
            jpeg_draft=bool(d.get("jpeg_draft", False)),
            resizer=str(d.get("resizer", "pillow")),
        )

    def with_overrides(self, input_size: int | tuple[int, int] | None = None, crop_pct: float | None = None) -> "Preprocess":
        """A copy with ``input_size`` (int = square) and/or ``crop_pct`` replaced."""
        out = self
        if input_size is not None:
            size = (int(input_size), int(input_size)) if isinstance(input_size, int) else tuple(input_size)
            out = replace(out, input_size=size)  # type: ignore[arg-type]
        if crop_pct is not None:
            out = replace(out, crop_pct=float(crop_pct))
        return out

    # -- the two halves -------------------------------------------------------------
    def crop_region(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """Where the centre crop of a ``width`` x ``height`` image lies: the size the whole image is
        resized to and the crop box (left, top, right, bottom) in that resized image."""
        out_h, out_w = self.input_size
        target = self.resize_size
        if height <= 0 or width <= 0:
            raise UsageError("Cannot preprocess an empty image.")
        if width <= height:
            new_w, new_h = target, max(1, int(round(height * target / width)))
        else:
            new_w, new_h = max(1, int(round(width * target / height))), target
        # Preserve the crop ratio for non-square inputs.
        if out_h != out_w:
            scale = max(out_w / self.crop_pct / width, out_h / self.crop_pct / height)
            new_w, new_h = max(out_w, int(round(width * scale))), max(out_h, int(round(height * scale)))
        left = int(round((new_w - out_w) / 2.0))
        top = int(round((new_h - out_h) / 2.0))
        return (new_w, new_h), (left, top, left + out_w, top + out_h)

    def downscales_with_torch(self, width: int, height: int) -> bool:
        """Whether :meth:`resize_crop` resizes a ``width`` x ``height`` image with torch (a downscale by
        the torch resizer's bilinear or bicubic kernel): decode workers import torch for it.

        Example:
            >>> p = Preprocess(input_size=(96, 96), crop_pct=0.875)
            >>> p.downscales_with_torch(640, 480), p.downscales_with_torch(28, 28)
            (True, False)
        """
        (new_w, new_h), _ = self.crop_region(width, height)
        return self.resizer == "torch" and self.interpolation in _TORCH_MODES and new_w < width and new_h < height

    def resize_crop(self, image: Image.Image) -> np.ndarray:
        """Resize the shorter side and centre-crop a PIL image (by :attr:`resizer`); returns uint8 HxWx3.

        An RGB image is used as it is, an 8-bit grey one ("L") gives the pixels of its RGB conversion
        (Pillow resizes each band alike, so one band is resized and repeated), any other mode is
        converted to RGB first.
        """
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        w, h = image.size
        (new_w, new_h), crop = self.crop_region(w, h)
        if (new_w, new_h) == (w, h):
            return _rgb_array(image.crop(crop))
        if self.resizer == "pillow":
            return _rgb_array(image.resize((new_w, new_h), INTERPOLATIONS[self.interpolation]).crop(crop))
        if self.downscales_with_torch(w, h):
            # the SIMD kernel takes RGBX, so a grey image is converted first (as every image was before)
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            out = _torch_resize_crop(rgb, (new_w, new_h), crop, self.interpolation)
            if out is not None:
                return out
        sx, sy = w / new_w, h / new_h
        box = (crop[0] * sx, crop[1] * sy, crop[2] * sx, crop[3] * sy)
        out_h, out_w = self.input_size
        return _rgb_array(image.resize((out_w, out_h), INTERPOLATIONS[self.interpolation], box=box))

    def normalize(self, batch: "torch.Tensor", channels_last: bool = False) -> "torch.Tensor":
        """uint8 NHWC batch -> float32 NCHW normalised tensor (optionally channels-last memory)."""
        import torch

        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = x.sub_(mean).div_(std)
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)

    def __call__(self, image: Image.Image) -> "torch.Tensor":
        """Full preprocessing of one RGB image into a 1x3xHxW float tensor."""
        import torch

        arr = torch.from_numpy(self.resize_crop(image).copy()).unsqueeze(0)
        return self.normalize(arr)


def _rgb_array(image: Image.Image) -> np.ndarray:
    """uint8 HxWx3 pixels of an "RGB" or "L" image (the grey band repeated: what ``convert("RGB")`` gives)."""
    arr = np.asarray(image, dtype=np.uint8)
    return arr if arr.ndim == 3 else np.stack((arr, arr, arr), axis=-1)


_torch_module: ModuleType | None = None


def _torch() -> ModuleType:
    """torch, imported on first use (decode workers that never downscale never load it)."""
    global _torch_module
    if _torch_module is None:
        _torch_module = import_held("torch")
    return _torch_module


def _torch_resize_crop(
    image: Image.Image, size: tuple[int, int], crop: tuple[int, int, int, int], mode: str
) -> np.ndarray | None:
    """``crop`` of the RGB ``image`` resized (downscaled) to ``size`` (w, h) by torch's antialiased uint8
    kernel; returns uint8 HxWx3 (None in the rare case where torch's rounding of the output size cuts
    into a crop that touches the image's edge: the caller then resizes the crop box with Pillow).

    Only the rows and columns that the crop's filter taps reach are read, and the sampling grid is the
    whole image's (``scale_factor`` with ``recompute_scale_factor=False``): the crop comes out as if the
    whole image had been resized.
    """
    torch = _torch()
    w, h = image.size
    sx, sy = w / size[0], h / size[1]
    reach = _TORCH_MODES[mode]
    x_end = min(w, int(math.ceil(crop[2] * sx + reach * sx)) + 1)
    y_end = min(h, int(math.ceil(crop[3] * sy + reach * sy)) + 1)
    # RGBX: Pillow's own pixel layout, and four channels are what the SIMD kernel takes as they are
    # (three channels are first copied into four)
    x = torch.from_numpy(_rgbx_region(image, x_end, y_end)).unsqueeze(0).permute(0, 3, 1, 2)
    y = torch.nn.functional.interpolate(
        x, scale_factor=(1 / sy, 1 / sx), mode=mode, antialias=True, align_corners=False, recompute_scale_factor=False
    )
    if y.shape[2] < crop[3] or y.shape[3] < crop[2]:
        return None
    rows = y[0].permute(1, 2, 0)[crop[1] : crop[3], crop[0] : crop[2]].contiguous().numpy()
    # RGBX -> RGB by Pillow's packer (~5x faster than a strided copy dropping every fourth byte)
    out_h, out_w = rows.shape[:2]
    packed = Image.frombuffer("RGBX", (out_w, out_h), rows, "raw", "RGBX", 0, 1).tobytes("raw", "RGB")
    return np.frombuffer(packed, dtype=np.uint8).reshape(out_h, out_w, 3)


def _rgbx_region(image: Image.Image, x_end: int, y_end: int) -> np.ndarray:
    """A writable uint8 ``y_end`` x ``x_end`` x 4 copy of the RGB ``image``'s top-left region in Pillow's
    RGBX layout: one copy out of Pillow's memory where it exports one contiguous block to Arrow
    (Pillow >= 11.2; images up to its 16 MiB block size), else a crop packed by ``tobytes``."""
    try:
        import pyarrow as pa

        values = pa.array(image).values  # zero-copy: fixed_size_list<uint8>[4] per pixel
        if values.type == pa.uint8() and len(values) == image.width * image.height * 4:
            pixels = values.to_numpy(zero_copy_only=True).reshape(image.height, image.width, 4)
            return np.array(pixels[:y_end, :x_end])
    except (AttributeError, TypeError, ValueError):  # no Arrow export, or the image spans several blocks
        pass
    raw = bytearray(image.crop((0, 0, x_end, y_end)).tobytes("raw", "RGBX"))
    return np.frombuffer(raw, dtype=np.uint8).reshape(y_end, x_end, 4)

"""The one image decode policy of deepfeat.

Every image that enters deepfeat -- from a file, from bytes, or handed over in memory -- goes
through this module, so every path gets the same answers to the same questions:

* **Format** is sniffed by Pillow from the bytes, never taken from the file name, and must be in
  :attr:`DecodePolicy.formats`; anything else fails with reason ``"unsupported_format"``.
* **Size** is decided from the header, before any pixel is decoded: more than
  :attr:`DecodePolicy.max_pixels` fails with ``"too_large"``, a side ratio above
  :attr:`DecodePolicy.max_aspect_ratio` with ``"aspect_ratio"``. Memory stays bounded.
* **Truncation** is an error: Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off (this module never
  touches Pillow's globals) and the image is fully decoded, so a cut file fails with
  ``"truncated"`` instead of becoming a silently gray image.
* **Orientation**: EXIF orientations 2..8 are applied (the result equals the physically
  transposed image).
* **Colour**: the result is always 8-bit ``RGB``. 16-bit gray is scaled (``v >> 8``), never
  clipped; float images are clipped to [0, 1] and scaled by 255 when their maximum is <= 1, else
  clipped to [0, 255]; transparent pixels are alpha-composited onto
  :attr:`DecodePolicy.background` (white by default). Multi-frame files (animated GIF,
  multi-page TIFF, MPO) use frame 0 and report their frame count.

Failures of one item raise :class:`~deepfeat.errors.InputError` with a ``reason`` from
:data:`FAILURE_REASONS`; machine faults (I/O error, out of memory, too many open files) raise
:class:`~deepfeat.errors.EnvironmentFault`. Nothing else escapes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import logging
import os
import stat
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from deepfeat.errors import EnvironmentFault, InputError, UsageError
from deepfeat.params import check_number, param_error

logger = logging.getLogger(__name__)

__all__ = [
    "FAILURE_REASONS",
    "DecodePolicy",
    "DecodedImage",
    "read_file_bytes",
    "decode_bytes",
    "decode_file",
    "decode_data",
    "decode_image",
    "to_rgb",
]

#: Every ``InputError.reason`` this module raises.
FAILURE_REASONS: tuple[str, ...] = (
    "unidentified",  # not an image at all (0 bytes, text, HTML...)
    "truncated",  # the image data ends early
    "too_large",  # too many pixels, or the file is over max_file_bytes
    "aspect_ratio",  # max(w, h) / min(w, h) above the policy's limit
    "unsupported_format",  # a real image in a format outside the allowlist
    "vanished",  # the file was deleted (or its folder) after discovery
    "decode_error",  # any other failure while decoding
    "not_regular_file",  # a FIFO, socket, device or directory where a file was expected
    "unreadable",  # permission denied, symlink loop, name too long
)

#: EXIF orientation -> the transpose that shows the image upright (same table as
#: ``PIL.ImageOps.exif_transpose``).
_ORIENTATION_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION_TAG = 0x0112

#: Pillow messages that mean "the data stops early".
_TRUNCATION_MARKERS = (
    "truncated",
    "broken data stream",
    "premature end",
    "unexpected end",
    "end of file",
    "not enough data",
    "buffer is not large enough",
)

#: errno values that describe the file itself rather than the machine.
_UNREADABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG}
_VANISHED_ERRNOS = {errno.ENOENT, errno.ENOTDIR}
_SPECIAL_FILE_ERRNOS = {errno.ENXIO, errno.ENODEV, errno.EOPNOTSUPP, errno.EISDIR}

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;16LS", "I;16BS"}
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


@dataclass(frozen=True)
class DecodePolicy:
    """Limits and conversion choices applied to every decoded image.

    Example:
        >>> policy = DecodePolicy(max_pixels=10_000_000, background=(0, 0, 0))
        >>> policy.max_aspect_ratio
        50.0
    """

    max_pixels: int = 64_000_000
    max_aspect_ratio: float = 50.0
    background: tuple[int, int, int] = (255, 255, 255)
    formats: frozenset[str] = field(
        default_factory=lambda: frozenset({"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "MPO"})
    )
    max_file_bytes: int = 1 << 30

    def __post_init__(self) -> None:
        # numbers, not only ints: a limit such as max_pixels=1e8 is accepted as before
        check_number(self.max_pixels, "max_pixels", minimum=0, min_open=True, where="DecodePolicy")
        check_number(self.max_aspect_ratio, "max_aspect_ratio", minimum=1, where="DecodePolicy")
        if len(self.background) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in self.background):
            raise param_error("background", "three ints in 0..255", self.background, "DecodePolicy")
        check_number(self.max_file_bytes, "max_file_bytes", minimum=0, min_open=True, where="DecodePolicy")
        object.__setattr__(self, "formats", frozenset(f.upper() for f in self.formats))

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-able data (store config and fingerprint, bundles).

        ``max_file_bytes`` is written only when it differs from the default, so stores written
        before it was recorded keep their fingerprint.

        Example:
            >>> DecodePolicy(max_file_bytes=1000).to_dict()["max_file_bytes"]
            1000
        """
        d: dict[str, Any] = {
            "max_pixels": self.max_pixels,
            "max_aspect_ratio": self.max_aspect_ratio,
            "background": list(self.background),
            "formats": sorted(self.formats),
        }
        if self.max_file_bytes != type(self).max_file_bytes:
            d["max_file_bytes"] = self.max_file_bytes
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "DecodePolicy":
        """The policy :meth:`to_dict` wrote; missing keys take the defaults, a malformed one gives the default policy."""
        d = d or {}
        try:
            return cls(
                max_pixels=int(d.get("max_pixels", cls.max_pixels)),
                max_aspect_ratio=float(d.get("max_aspect_ratio", cls.max_aspect_ratio)),
                background=tuple(int(v) for v in d.get("background", cls.background)),  # type: ignore[arg-type]
                formats=frozenset(str(f) for f in d["formats"]) if d.get("formats") else cls().formats,
                max_file_bytes=int(d.get("max_file_bytes", cls.max_file_bytes)),
            )
        except (TypeError, ValueError, UsageError):
            return cls()


_DEFAULT_POLICY = DecodePolicy()


@dataclass(frozen=True)
class DecodedImage:
    """A decoded file: the RGB image plus what was learnt on the way."""

    #: mode "RGB" (or "L" for an 8-bit grey file when ``keep_grey`` was asked), fully loaded, EXIF
    #: orientation applied
    image: Image.Image
    format: str  #: the sniffed Pillow format name, e.g. "PNG"
    mode: str  #: the original Pillow mode, e.g. "CMYK", "I;16", "RGBA", "P", "1"
    n_frames: int  #: 1, or the frame count of an animated / multi-page file (frame 0 is used)
    sha256: str  #: hex sha256 of the file's bytes
    #: (width, height) of the full-resolution image, orientation applied; ``image`` is smaller when a
    #: JPEG was decoded at reduced scale (``draft``)
    size: tuple[int, int] | None = None


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def _os_error(path: str, exc: OSError, action: str) -> Exception:
    """Classify an OSError raised while touching one input file."""
    code = exc.errno
    if isinstance(exc, FileNotFoundError) or code in _VANISHED_ERRNOS:
        return InputError("vanished", f"{path!r} no longer exists ({exc.strerror or exc})")
    if code in _UNREADABLE_ERRNOS:
        return InputError("unreadable", f"cannot {action} {path!r}: {exc.strerror or exc}")
    if code in _SPECIAL_FILE_ERRNOS:
        return InputError("not_regular_file", f"cannot {action} {path!r}: {exc.strerror or exc}")
    return EnvironmentFault(f"cannot {action} {path!r}: {exc.strerror or exc} (errno {code})")


def read_file_bytes(path: str | os.PathLike[str], max_bytes: int = _DEFAULT_POLICY.max_file_bytes) -> bytes:
    """Read a whole regular file, refusing FIFOs, sockets, devices and directories without blocking.

    The file is opened with ``O_NONBLOCK`` and checked with ``fstat`` on the open descriptor, so a
    FIFO swapped in after discovery can never hang the reader.

    Raises:
        InputError: ``vanished``, ``not_regular_file``, ``unreadable`` or ``too_large``.
        EnvironmentFault: I/O errors, too many open files, out of memory...

    Example:
        >>> data = read_file_bytes("photo.jpg")  # doctest: +SKIP
    """
    path = os.fspath(path)
    shown = os.fsdecode(path)
    # A cheap pre-check so we never even open a device node or a FIFO (opening some devices
    # has side effects); the fstat below is the race-free check.
    try:
        pre = os.stat(path)
    except OSError as exc:
        raise _os_error(shown, exc, "stat") from exc
    if not stat.S_ISREG(pre.st_mode):
        raise InputError("not_regular_file", f"{shown!r} is not a regular file")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _os_error(shown, exc, "open") from exc
    try:
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise _os_error(shown, exc, "stat") from exc
        if not stat.S_ISREG(st.st_mode):
            raise InputError("not_regular_file", f"{shown!r} is not a regular file")
        if st.st_size > max_bytes:
            raise InputError("too_large", f"{shown!r} has {st.st_size} bytes, more than the limit of {max_bytes}")
        chunks: list[bytes] = []
        total = 0
        want = max(st.st_size, 1 << 16)
        while True:
            try:
                chunk = os.read(fd, min(want, max_bytes + 1 - total) or 1)
            except BlockingIOError as exc:  # cannot happen for a regular file; refuse rather than spin
                raise InputError("not_regular_file", f"{shown!r} would block on read") from exc
            except OSError as exc:
                raise _os_error(shown, exc, "read") from exc
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise InputError("too_large", f"{shown!r} grew past the limit of {max_bytes} bytes while being read")
            want = 1 << 20
        return b"".join(chunks)
    except MemoryError as exc:
        raise EnvironmentFault(f"out of memory while reading {shown!r}") from exc
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------------


_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "WEBP"),
)


def _magic_format(data: bytes | bytearray | memoryview) -> str | None:
    """The format whose signature starts ``data`` (only unambiguous signatures)."""
    head = bytes(data[:8])
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _riff_truncated(data: bytes | bytearray | memoryview | None) -> bool:
    """A RIFF (WebP) container whose declared length runs past the end of the data."""
    if data is None or len(data) < 12 or bytes(data[:4]) != b"RIFF" or bytes(data[8:12]) != b"WEBP":
        return False
    return int.from_bytes(bytes(data[4:8]), "little") + 8 > len(data)


def _pillow_error(exc: BaseException, fmt: str | None, data: bytes | bytearray | memoryview | None = None) -> InputError:
    """Turn an exception raised by Pillow for one item into an InputError."""
    if isinstance(exc, Image.DecompressionBombError):
        return InputError("too_large", str(exc))
    text = str(exc)
    low = text.lower()
    if isinstance(exc, EOFError) or any(m in low for m in _TRUNCATION_MARKERS):
        return InputError("truncated", text or type(exc).__name__)
    if _riff_truncated(data):
        return InputError("truncated", f"WebP data ends before its declared length ({text})")
    if fmt in ("JPEG", "MPO") and "cannot load this image" in low:
        # A JPEG whose headers parse but that has no scan at all: header only.
        return InputError("truncated", f"no image data after the JPEG header ({text})")
    return InputError("decode_error", f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _check_geometry(width: int, height: int, policy: DecodePolicy) -> None:
    if width <= 0 or height <= 0:
        raise InputError("decode_error", f"image has an empty size {width}x{height}")
    if width * height > policy.max_pixels:
        raise InputError(
            "too_large", f"image is {width}x{height} = {width * height} pixels, over the limit of {policy.max_pixels}"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > policy.max_aspect_ratio:
        raise InputError(
            "aspect_ratio",
            f"image is {width}x{height}, aspect ratio {ratio:.1f} over the limit of {policy.max_aspect_ratio:g}",
        )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation tag of a loaded image (1 when absent or invalid)."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except Exception as exc:  # a broken EXIF block must not lose an otherwise good image
        logger.debug("ignoring unreadable EXIF: %s", exc)
        return 1
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def _composite(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = img.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _gray_array_to_rgb(gray: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(gray, dtype=np.uint8), mode="L").convert("RGB")


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float64, copy=False), nan=0.0, posinf=0.0, neginf=0.0)
    if values.size and values.max() <= 1.0:
        return np.asarray(np.rint(np.clip(values, 0.0, 1.0) * 255.0), dtype=np.uint8)
    return np.asarray(np.rint(np.clip(values, 0.0, 255.0)), dtype=np.uint8)


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert a loaded Pillow image of any mode to 8-bit RGB by the rules of this module.

    Example:
        >>> to_rgb(Image.new("LA", (2, 2), (0, 0))).getpixel((0, 0))
        (255, 255, 255)
    """
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img)
        if arr.dtype.kind == "i":  # signed 16-bit: shift into 0..65535 first
            arr = arr.astype(np.int32) + 32768
        return _gray_array_to_rgb((arr.astype(np.uint32) >> 8).astype(np.uint8))
    if mode == "I":
        # 32-bit ints: Pillow's representation of 16-bit gray (PNG/TIFF); scaled as 16-bit.
        arr = np.clip(np.asarray(img, dtype=np.int64), 0, 65535)
        return _gray_array_to_rgb((arr >> 8).astype(np.uint8))
    if mode == "F":
        return _gray_array_to_rgb(_float_to_uint8(np.asarray(img)))
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _composite(img, background)
    return img.convert("RGB")


def _finish(img: Image.Image, policy: DecodePolicy, orientation: int, keep_grey: bool, owned: bool) -> Image.Image:
    """Orientation and colour conversion of a loaded image (an 8-bit grey one stays "L" with ``keep_grey``);
    a new image, never ``img`` itself: where nothing changed, an ``owned`` image (a decoded file, closed
    right after) hands its pixels over without a copy (0.3 ms for a 640x480 photo), a caller's is copied."""
    if keep_grey and img.mode == "L" and "transparency" not in img.info:
        rgb = img
    else:
        rgb = to_rgb(img, policy.background)
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        rgb = rgb.transpose(method)
    if rgb is img:
        rgb = img._new(img.im) if owned else img.copy()
    return rgb


def decode_bytes(
    data: bytes | bytearray | memoryview, policy: DecodePolicy = _DEFAULT_POLICY, draft: int | None = None
) -> tuple[Image.Image, str, str, int]:
    """Decode an encoded image held in memory by the policy.

    Returns ``(rgb_image, format, original_mode, n_frames)``. With ``draft``, a JPEG is decoded at
    1/2, 1/4 or 1/8 scale when both sides stay >= ``draft`` pixels (the full image is still read and
    checked; see :func:`decode_file` for its full-resolution size).

    Raises:
        InputError: the bytes are not a usable image (``reason`` in :data:`FAILURE_REASONS`).
        EnvironmentFault: out of memory.

    Example:
        >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
        >>> img, fmt, mode, n = decode_bytes(buf.getvalue())
        >>> img.mode, fmt, mode, n, img.size
        ('RGB', 'PNG', 'L', 1, (4, 3))
    """
    return _decode(data, policy, draft, keep_grey=False)[:4]


def _decode(
    data: bytes | bytearray | memoryview, policy: DecodePolicy, draft: int | None, keep_grey: bool
) -> tuple[Image.Image, str, str, int, tuple[int, int]]:
    """:func:`decode_bytes` plus the (width, height) of the full-resolution image, orientation applied
    (``keep_grey``: see :func:`decode_data`)."""
    if len(data) == 0:
        raise InputError("unidentified", "empty file (0 bytes)")
    if len(data) > policy.max_file_bytes:
        raise InputError("too_large", f"{len(data)} bytes, more than the limit of {policy.max_file_bytes}")
    fmt: str | None = None
    img: Image.Image | None = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            # Pillow's warnings are about this one item: collected here, not printed. The
            # policy's own pixel limit decides, so DecompressionBombWarning is just dropped.
            warnings.simplefilter("always")
            try:
                img = Image.open(io.BytesIO(data))
            except UnidentifiedImageError as exc:
                if _riff_truncated(data):
                    raise InputError("truncated", "WebP data ends before its declared length") from exc
                known = _magic_format(data)
                if known is not None:
                    raise InputError(
                        "decode_error", f"starts like a {known} file but its header cannot be parsed (cut or corrupt)"
                    ) from exc
                raise InputError("unidentified", "not a recognised image format") from exc
            fmt = (img.format or "").upper()
            if fmt not in policy.formats:
                raise InputError(
                    "unsupported_format", f"format {fmt or 'unknown'} is not in the allowed formats {sorted(policy.formats)}"
                )
            width, height = img.size
            _check_geometry(width, height, policy)  # from the header: nothing decoded yet
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames > 1:
                img.seek(0)
            mode = img.mode
            if draft and fmt == "JPEG" and n_frames == 1:
                # DCT-domain downscale by 1/2, 1/4 or 1/8 while decoding, keeping both sides >= draft
                img.draft(None, (int(draft), int(draft)))
            img.load()
            if img.size != (width, height) and not draft:  # some plugins only know the size after loading
                _check_geometry(*img.size, policy)
            orientation = _orientation(img)
            result = _finish(img, policy, orientation, keep_grey, owned=True)
            full = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        for w in caught:
            if issubclass(w.category, Image.DecompressionBombWarning):
                continue
            if "truncated" in str(w.message).lower():  # e.g. TIFF "Truncated File Read"
                raise InputError("truncated", f"{fmt} data is cut short ({w.message})")
            logger.debug("decode warning: %s", w.message)
        return result, fmt, mode, n_frames, full
    except (InputError, EnvironmentFault):
        raise
    except MemoryError as exc:
        raise EnvironmentFault("out of memory while decoding an image") from exc
    except Exception as exc:  # every other Pillow failure belongs to this one item
        raise _pillow_error(exc, fmt, data) from exc
    finally:
        if img is not None:
            img.close()


def decode_file(
    path: str | os.PathLike[str], policy: DecodePolicy = _DEFAULT_POLICY, draft: int | None = None
) -> DecodedImage:
    """Read and decode one image file by the policy (``draft``: see :func:`decode_bytes`).

    Example:
        >>> d = decode_file("photo.jpg")  # doctest: +SKIP
        >>> d.image.mode, d.format, d.sha256[:8]  # doctest: +SKIP
        ('RGB', 'JPEG', '3f0c9a1b')
    """
    return decode_data(read_file_bytes(path, policy.max_file_bytes), policy, draft)


def decode_data(
    data: bytes | bytearray | memoryview,
    policy: DecodePolicy = _DEFAULT_POLICY,
    draft: int | None = None,
    *,
    keep_grey: bool = False,
) -> DecodedImage:
    """Decode an encoded image held in memory (a file's bytes, a tar member, a Parquet cell).

    The same checks, hash and result as :func:`decode_file`, so an image gives the same features
    whichever source holds it. With ``keep_grey`` an 8-bit grey image (mode "L", no transparency)
    stays "L": :meth:`Preprocess.resize_crop <deepfeat.data.preprocess.Preprocess.resize_crop>` then
    resizes one band instead of three and returns the very pixels of its RGB conversion (the decode
    workers ask for it; everything else gets RGB).

    Example:
        >>> buf = io.BytesIO(); Image.new("RGB", (5, 4)).save(buf, "PNG")
        >>> decode_data(buf.getvalue()).size
        (5, 4)
    """
    digest = hashlib.sha256(data).hexdigest()
    image, fmt, mode, n_frames, size = _decode(data, policy, draft, keep_grey)
    return DecodedImage(image=image, format=fmt, mode=mode, n_frames=n_frames, sha256=digest, size=size)


def _array_to_image(arr: np.ndarray, policy: DecodePolicy) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise UsageError(
            "The 'source' parameter of decode_image must be an HxW or HxWxC (C in 1, 3, 4) array; "
            f"got shape {arr.shape} instead."
        )
    _check_geometry(arr.shape[1], arr.shape[0], policy)
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.astype(np.uint8) * 255
    elif kind == "f":
        finite = np.isfinite(arr)
        lo = float(arr[finite].min()) if finite.any() else 0.0
        hi = float(arr[finite].max()) if finite.any() else 0.0
        if not finite.all() or lo < -1e-6 or hi > 1 + 1e-6:
            raise UsageError(
                "Float arrays passed to decode_image must hold finite values in [0, 1]; "
                f"got range [{lo:g}, {hi:g}]{' with NaN/Inf' if not finite.all() else ''} instead. "
                "Pass a uint8 array for 0..255 data."
            )
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise UsageError(
            "The 'source' parameter of decode_image must be a uint8, uint16, bool or float array; "
            f"got dtype {arr.dtype} instead."
        )
    arr = np.ascontiguousarray(arr)
    if arr.ndim == 2:
        return Image.fromarray(arr, mode="L").convert("RGB")
    if arr.shape[2] == 3:
        return Image.fromarray(arr, mode="RGB")
    return _composite(Image.fromarray(arr, mode="RGBA"), policy.background)


ImageSource = Union[str, os.PathLike[str], bytes, bytearray, memoryview, Image.Image, np.ndarray]


def decode_image(source: ImageSource, policy: DecodePolicy = _DEFAULT_POLICY) -> Image.Image:
    """Any supported image source -> an 8-bit RGB Pillow image, by the one decode policy.

    ``source`` may be a path, encoded bytes, a Pillow image, or a numpy array: ``uint8`` (or
    ``uint16``, scaled ``>> 8``; or ``bool``) HxW / HxWx1 / HxWx3 / HxWx4, or float in [0, 1]
    (scaled by 255). HxWx4 arrays and transparent images are composited onto
    ``policy.background``.

    Raises:
        InputError: a bad item (same reasons as :func:`decode_file`).
        UsageError: an array of an unsupported shape/dtype, or an unsupported source type.

    Example:
        >>> decode_image(np.zeros((2, 3), dtype=np.uint8)).size
        (3, 2)
    """
    if isinstance(source, (str, os.PathLike)):
        return decode_file(source, policy).image
    if isinstance(source, (bytes, bytearray, memoryview)):
        return decode_bytes(source, policy)[0]
    if isinstance(source, Image.Image):
        try:
            _check_geometry(*source.size, policy)
            source.load()
            return _finish(source, policy, _orientation(source), keep_grey=False, owned=False)
        except (InputError, EnvironmentFault):
            raise
        except MemoryError as exc:
            raise EnvironmentFault("out of memory while converting an image") from exc
        except Exception as exc:
            raise _pillow_error(exc, source.format) from exc
    if isinstance(source, np.ndarray):
        try:
            return _array_to_image(source, policy)
        except MemoryError as exc:
            raise EnvironmentFault("out of memory while converting an array") from exc
    raise UsageError(
        "The 'source' parameter of decode_image must be a path, bytes, a PIL.Image.Image or a numpy array; "
        f"got {type(source).__name__} instead."
    )

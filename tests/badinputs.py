"""Builders for the "Bad inputs" of docs/RELIABILITY.md (decoding and discovery).

``make_bad_inputs(root)`` writes every case as a file (or special file) directly in ``root``
-- a flat folder -- and returns ``{name: expected outcome}``, where the outcome is
``"embedded"``, ``"failed:<reason>"`` or ``"excluded:<reason>"``. Names are ``str`` as
``os.fsdecode`` gives them (``os.path.join(root, name)`` reopens the file). The only file written
outside ``root`` is the target of the out-of-root symlink, in the sibling folder
``<root>_outside``. Output is deterministic; images come from real photos (scikit-image),
resized to 64x48.

The case "file deleted between discovery and read" cannot be a static file: tests make it by
deleting an item after ``discover``.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (64, 48)  # (width, height): not square, so rotations change the shape

#: inverse of each EXIF orientation's transpose: raw = INVERSE[k](upright)
EXIF_INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # orientation 6 is shown with ROTATE_270
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # orientation 8 is shown with ROTATE_90
}


@functools.lru_cache(maxsize=None)
def _photo_array(name: str, size: tuple[int, int]) -> np.ndarray:
    from skimage import data

    img = Image.fromarray(getattr(data, name)())
    return np.asarray(img.convert("RGB").resize(size, Image.Resampling.BILINEAR))


def photo(name: str = "chelsea", size: tuple[int, int] = SIZE) -> Image.Image:
    """A real photo from scikit-image (chelsea, astronaut, coffee, camera, ...) as small RGB."""
    return Image.fromarray(_photo_array(name, size))


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def jpeg_header_only(jpeg: bytes) -> bytes:
    """The JPEG cut right after its start-of-scan header: headers, no image data."""
    i = jpeg.find(b"\xff\xda")
    (length,) = struct.unpack(">H", jpeg[i + 2 : i + 4])
    return jpeg[: i + 2 + length]


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=None)
def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of width x height: tiny file, huge pixel count."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    rows_per_chunk = 1000
    parts = []
    done = 0
    while done < height:
        n = min(rows_per_chunk, height - done)
        parts.append(comp.compress(row * n))
        done += n
    parts.append(comp.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def rgba_photo() -> Image.Image:
    """Photo with an alpha ramp: left column transparent, right column opaque."""
    rgba = photo("coffee").convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, SIZE[0]).astype(np.uint8), (SIZE[1], 1))
    rgba.putalpha(Image.fromarray(alpha, mode="L"))
    return rgba


def gray16_ramp() -> Image.Image:
    """16-bit gray whose values span 0..65535 (a ramp over all pixels)."""
    n = SIZE[0] * SIZE[1]
    ramp = np.round(np.linspace(0, 65535, n)).astype(np.uint16).reshape(SIZE[1], SIZE[0])
    return Image.fromarray(ramp)  # mode "I;16"


def _write(root: Path, name: str | bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), os.fsencode(name))
    with open(path, "wb") as fh:
        fh.write(data)


def _make_socket(path: Path) -> bool:
    """Create a Unix socket file at ``path`` (bound in a short temp dir, then renamed in)."""
    if not hasattr(socket, "AF_UNIX"):
        return False
    short = tempfile.mkdtemp(prefix="dfs", dir="/tmp" if os.path.isdir("/tmp") else None)
    tmp = os.path.join(short, "s")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.bind(tmp)
        os.rename(tmp, path)
        return True
    except OSError:
        return False
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.rmdir(short)


def make_bad_inputs(root: Path) -> dict[str, str]:
    """Create every decode/discovery bad input of RELIABILITY.md in ``root``; return expectations.

    Example:
        >>> expected = make_bad_inputs(tmp_path / "in")  # doctest: +SKIP
        >>> expected["trunc_half.jpg"]  # doctest: +SKIP
        'failed:truncated'
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str) -> None:
        _write(root, name, data)
        out[name] = outcome

    cat = photo("chelsea")
    jpeg = encode(cat, "JPEG", quality=90)
    png = encode(cat, "PNG")

    # --- not images / truncated -------------------------------------------------------------
    put("empty.jpg", b"", "failed:unidentified")
    put(
        "html.jpg",
        b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>\n",
        "failed:unidentified",
    )
    put("trunc_half.jpg", jpeg[: len(jpeg) // 2], "failed:truncated")
    put("header_only.jpg", jpeg_header_only(jpeg), "failed:truncated")
    put("trunc.png", png[: int(len(png) * 0.6)], "failed:truncated")

    # --- sniffed formats ----------------------------------------------------------------------
    put("png_named.jpg", encode(photo("astronaut"), "PNG"), "embedded")
    put("jpeg_named.png", encode(photo("astronaut"), "JPEG", quality=90), "embedded")
    put("plain.jpg", jpeg, "embedded")

    # --- EXIF orientation 2..8 (stored raw so that the upright view is the photo) ----------------
    for k, inverse in EXIF_INVERSE.items():
        put(f"exif_{k}.jpg", encode(cat.transpose(inverse), "JPEG", quality=95, exif=exif_bytes(k)), "embedded")

    # --- modes --------------------------------------------------------------------------------
    put("cmyk.jpg", encode(photo("coffee").convert("CMYK"), "JPEG", quality=95), "embedded")
    put("gray16.png", encode(gray16_ramp(), "PNG"), "embedded")
    put("rgba.png", encode(rgba_photo(), "PNG"), "embedded")
    put("la.png", encode(rgba_photo().convert("LA"), "PNG"), "embedded")
    put("p_trns.png", encode(cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=32), "PNG", transparency=0), "embedded")
    put("bilevel.png", encode(photo("camera").convert("1"), "PNG"), "embedded")
    put("gray.png", encode(photo("camera").convert("L"), "PNG"), "embedded")
    put("palette.png", encode(cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "PNG"), "embedded")
    frames = [cat, photo("astronaut"), photo("coffee")]
    put("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0), "embedded")
    put("multipage.tif", encode(frames[0], "TIFF", save_all=True, append_images=frames[1:2]), "embedded")

    # --- size limits, allowlist ----------------------------------------------------------------
    put("bomb.png", png_bomb(30000, 30000), "failed:too_large")  # 900 Mpx, ~110 kB
    put("bomb_80mp.png", png_bomb(10000, 8000), "failed:too_large")  # under Pillow's own limit
    put("wide.png", encode(Image.new("L", (100000, 1), 128), "PNG"), "failed:aspect_ratio")
    put("icon.jpg", encode(cat, "ICO"), "failed:unsupported_format")  # ICO: Pillow reads it, policy refuses

    # --- odd file names (each a different image so that reopening proves identity) -------------
    odd = {
        "caf\udce9.jpg": "chelsea",  # b"caf\xe9.jpg": not UTF-8
        "new\nline.jpg": "astronaut",
        "-dash.jpg": "coffee",
        "l" * 220 + ".jpg": "camera",
        "A.jpg": "chelsea",
        "a.jpg": "astronaut",
        "\u00e9t\u00e9.jpg": "coffee",  # NFC
        "e\u0301te\u0301.jpg": "camera",  # NFD twin
    }
    for i, (name, source) in enumerate(odd.items()):
        img = photo(source).rotate(90 * (i % 4), expand=False)  # distinct content per name
        try:
            put(name, encode(img, "PNG"), "embedded")
        except (OSError, UnicodeError):  # file system refuses the name (e.g. utf8-only ZFS)
            out.pop(name, None)

    # --- discovery exclusions -------------------------------------------------------------------
    put("notes.txt", b"not an image\n", "excluded:not_image_extension")
    put(".hidden.jpg", jpeg, "excluded:hidden")
    os.mkfifo(root / "fifo.jpg")
    out["fifo.jpg"] = "excluded:not_regular_file"
    (root / "dir.jpg").mkdir()
    out["dir.jpg"] = "excluded:not_regular_file"
    if _make_socket(root / "socket.jpg"):
        out["socket.jpg"] = "excluded:not_regular_file"
    os.symlink("does-not-exist.jpg", root / "broken_link.jpg")
    out["broken_link.jpg"] = "excluded:broken_symlink"
    os.symlink("loop.jpg", root / "loop.jpg")
    out["loop.jpg"] = "excluded:symlink_loop"
    outside = root.parent / f"{root.name}_outside"
    outside.mkdir(exist_ok=True)
    (outside / "target.jpg").write_bytes(jpeg)
    os.symlink(outside / "target.jpg", root / "outside_link.jpg")
    out["outside_link.jpg"] = "embedded"  # followed wherever it points (excluded with symlinks_inside_root)
    os.symlink("plain.jpg", root / "inside_link.jpg")
    out["inside_link.jpg"] = "embedded"
    return out


def expected_reason(outcome: str) -> str | None:
    """``"failed:truncated"`` -> ``"truncated"``; ``"embedded"`` -> ``None``."""
    return outcome.split(":", 1)[1] if ":" in outcome else None

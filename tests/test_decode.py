"""The one decode policy: every bad input of RELIABILITY.md gets its documented outcome."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import resource
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_array
from PIL import Image, ImageFile, ImageOps

from deepfeat.data import decode
from deepfeat.data.decode import (
    FAILURE_REASONS,
    DecodePolicy,
    decode_bytes,
    decode_data,
    decode_file,
    decode_image,
    read_file_bytes,
)
from deepfeat.data.preprocess import Preprocess
from deepfeat.data.worker import Decoded, prepare_batch
from deepfeat.errors import EnvironmentFault, InputError, UsageError

try:
    import badinputs as bi
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests import badinputs as bi


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("bad") / "in"
    return root, bi.make_bad_inputs(root)


def _outcome(path: str) -> str:
    try:
        decoded = decode_file(path)
    except InputError as exc:
        return f"failed:{exc.reason}"
    assert decoded.image.mode == "RGB"
    return "embedded"


def _arr(img: Image.Image) -> np.ndarray:
    return np.asarray(img).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# the RELIABILITY matrix
# ---------------------------------------------------------------------------------------------


def test_every_decodable_bad_input_gets_its_outcome(bad):
    root, expected = bad
    for name, outcome in expected.items():
        if outcome.startswith("excluded:"):
            continue
        assert _outcome(os.path.join(root, name)) == outcome, name


def test_all_reasons_are_declared(bad):
    root, expected = bad
    for outcome in expected.values():
        if outcome.startswith("failed:"):
            assert outcome.split(":", 1)[1] in FAILURE_REASONS


@pytest.mark.parametrize(
    "name, reason",
    [
        ("fifo.jpg", "not_regular_file"),
        ("dir.jpg", "not_regular_file"),
        ("socket.jpg", "not_regular_file"),
        ("broken_link.jpg", "vanished"),
        ("loop.jpg", "unreadable"),
    ],
)
def test_special_files_fail_fast_at_read_time(bad, name, reason):
    """A file swapped for a FIFO/socket/... after discovery fails at once, never blocks."""
    root, expected = bad
    if name not in expected:
        pytest.skip(f"{name} could not be created here")
    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(_outcome(os.path.join(root, name))), daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), f"decoding {name} blocked"
    assert result == [f"failed:{reason}"]


def test_fifo_swapped_in_after_stat_is_refused_by_fstat(tmp_path, monkeypatch):
    """Race: the pre-check saw a regular file, then a FIFO took its place; fstat catches it."""
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    regular = os.stat(__file__)
    real_stat = os.stat
    monkeypatch.setattr(
        decode.os, "stat", lambda p, *a, **k: regular if os.fspath(p) == str(fifo) else real_stat(p, *a, **k)
    )
    with pytest.raises(InputError) as err:
        read_file_bytes(str(fifo))
    assert err.value.reason == "not_regular_file"


def test_file_deleted_after_discovery_is_vanished(tmp_path):
    path = tmp_path / "gone.jpg"
    path.write_bytes(bi.encode(bi.photo(), "JPEG"))
    path.unlink()
    with pytest.raises(InputError) as err:
        decode_file(str(path))
    assert err.value.reason == "vanished"
    with pytest.raises(InputError) as err:  # its folder vanished too
        decode_file(str(tmp_path / "no-dir" / "x.jpg"))
    assert err.value.reason == "vanished"


def test_format_is_sniffed_and_sha256_recorded(bad):
    root, _ = bad
    for name, fmt in [("png_named.jpg", "PNG"), ("jpeg_named.png", "JPEG"), ("multipage.tif", "TIFF")]:
        d = decode_file(os.path.join(root, name))
        assert d.format == fmt
        assert d.sha256 == hashlib.sha256((root / name).read_bytes()).hexdigest()


def test_truncated_jpeg_is_never_a_gray_image():
    jpeg = bi.encode(bi.photo(), "JPEG", quality=90)
    for cut in (len(jpeg) // 2, len(jpeg) - 40, len(bi.jpeg_header_only(jpeg))):
        with pytest.raises(InputError) as err:
            decode_bytes(jpeg[:cut])
        assert err.value.reason == "truncated"
    before_scan = jpeg[: jpeg.find(b"\xff\xda")]  # headers only, not even the scan header
    with pytest.raises(InputError) as err:
        decode_bytes(before_scan)
    assert err.value.reason == "truncated"


def test_pillow_globals_are_untouched(bad):
    root, expected = bad
    max_pixels = Image.MAX_IMAGE_PIXELS
    for name in expected:
        try:
            decode_file(os.path.join(root, name))
        except InputError:
            pass
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == max_pixels


def test_unsupported_format_by_policy():
    png = bi.encode(bi.photo(), "PNG")
    with pytest.raises(InputError) as err:
        decode_bytes(png, DecodePolicy(formats=frozenset({"JPEG"})))
    assert err.value.reason == "unsupported_format"
    for fmt in ("ICO", "TGA", "PCX"):
        with pytest.raises(InputError) as err:
            decode_bytes(bi.encode(bi.photo(), fmt))
        assert err.value.reason in ("unsupported_format", "unidentified")


# ---------------------------------------------------------------------------------------------
# size limits: decided from the header
# ---------------------------------------------------------------------------------------------


def test_bomb_is_refused_from_the_header(monkeypatch):
    def no_load(self, *a, **k):
        raise AssertionError("load() called on a decompression bomb")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_load)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for w, h in [(30000, 30000), (10000, 8000)]:
        with pytest.raises(InputError) as err:
            decode_bytes(bi.png_bomb(w, h))
        assert err.value.reason == "too_large"
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mib < 50


def test_policy_limits():
    png = bi.encode(bi.photo(), "PNG")  # 64 x 48
    with pytest.raises(InputError) as err:
        decode_bytes(png, DecodePolicy(max_pixels=64 * 48 - 1))
    assert err.value.reason == "too_large"
    assert decode_bytes(png, DecodePolicy(max_pixels=64 * 48))[0].size == (64, 48)
    with pytest.raises(InputError) as err:
        decode_bytes(png, DecodePolicy(max_aspect_ratio=1.2))
    assert err.value.reason == "aspect_ratio"
    with pytest.raises(InputError) as err:
        decode_bytes(png, DecodePolicy(max_file_bytes=10))
    assert err.value.reason == "too_large"
    tall = bi.encode(Image.new("L", (1, 51)), "PNG")
    with pytest.raises(InputError) as err:
        decode_bytes(tall)
    assert err.value.reason == "aspect_ratio"
    assert decode_bytes(bi.encode(Image.new("L", (1, 50)), "PNG"))[0].size == (1, 50)
    with pytest.raises(UsageError):
        DecodePolicy(max_aspect_ratio=0.5)


# ---------------------------------------------------------------------------------------------
# orientation and colour
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", range(2, 9))
def test_exif_orientation_png_is_pixel_exact(k):
    upright = bi.photo()
    raw = upright.transpose(bi.EXIF_INVERSE[k])
    data = bi.encode(raw, "PNG", exif=bi.exif_bytes(k))
    img = decode_bytes(data)[0]
    assert img.size == upright.size
    assert np.array_equal(np.asarray(img), np.asarray(upright))
    assert np.array_equal(np.asarray(img), np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data)))))


def test_exif_orientation_jpeg_matches_the_rotated_copy(bad):
    root, _ = bad
    upright = _arr(bi.photo())
    for k in range(2, 9):
        img = decode_file(os.path.join(root, f"exif_{k}.jpg")).image
        assert img.size == (64, 48)
        err = np.abs(_arr(img) - upright).mean()
        flipped = np.abs(_arr(img) - upright[:, ::-1]).mean()
        assert err < 4 and flipped > 3 * err, (k, err, flipped)


def test_16bit_gray_is_scaled_not_clipped(bad):
    root, _ = bad
    d = decode_file(os.path.join(root, "gray16.png"))
    assert d.mode.startswith("I")
    out = np.asarray(d.image)
    ramp = np.asarray(bi.gray16_ramp()).astype(np.uint32)
    assert np.array_equal(out[..., 0], (ramp >> 8).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255 and len(np.unique(out)) == 256
    assert np.array_equal(out[..., 0], out[..., 2])


def test_int32_and_float_modes():
    vals = np.array([[0, 255, 256, 65535, 70000, -5]], dtype=np.int32)
    out = np.asarray(decode_image(Image.fromarray(vals, mode="I")))[..., 0]
    assert out.tolist() == [[0, 0, 1, 255, 255, 0]]
    unit = np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32)
    assert np.asarray(decode_image(Image.fromarray(unit, mode="F")))[..., 0].tolist() == [[0, 128, 255, 0]]
    big = np.array([[0.0, 2.0, 300.0, -1.0]], dtype=np.float32)
    assert np.asarray(decode_image(Image.fromarray(big, mode="F")))[..., 0].tolist() == [[0, 2, 255, 0]]


def test_rgba_is_composited_on_the_background(bad):
    root, _ = bad
    src = np.asarray(bi.rgba_photo()).astype(np.float64)
    alpha = src[..., 3:] / 255.0
    for bg in [(255, 255, 255), (0, 0, 0), (10, 200, 30)]:
        img = decode_file(os.path.join(root, "rgba.png"), DecodePolicy(background=bg)).image
        out = _arr(img)
        want = src[..., :3] * alpha + np.array(bg) * (1 - alpha)
        assert np.abs(out - want).max() <= 1
        assert (out[:, 0] == bg).all()  # fully transparent column
        assert np.array_equal(out[:, -1], src[:, -1, :3].astype(np.int32))  # opaque column


def test_la_and_palette_transparency_composited(bad):
    root, _ = bad
    la = decode_file(os.path.join(root, "la.png"), DecodePolicy(background=(0, 0, 0)))
    assert la.mode == "LA"
    assert (np.asarray(la.image)[:, 0] == 0).all()
    p = decode_file(os.path.join(root, "p_trns.png"), DecodePolicy(background=(1, 2, 3)))
    assert p.mode == "P"
    idx = np.asarray(Image.open(os.path.join(root, "p_trns.png")))
    out = np.asarray(p.image)
    assert (idx == 0).any()
    assert (out[idx == 0] == (1, 2, 3)).all()
    assert not (out[idx != 0] == (1, 2, 3)).all(axis=-1).any()


@pytest.mark.parametrize("name, mode", [("bilevel.png", "1"), ("gray.png", "L"), ("palette.png", "P")])
def test_simple_modes_match_pillow_conversion(bad, name, mode):
    root, _ = bad
    d = decode_file(os.path.join(root, name))
    assert d.mode == mode
    assert np.array_equal(np.asarray(d.image), np.asarray(Image.open(os.path.join(root, name)).convert("RGB")))


def test_cmyk_jpeg_converts_to_rgb(bad):
    root, _ = bad
    d = decode_file(os.path.join(root, "cmyk.jpg"))
    assert d.mode == "CMYK" and d.image.mode == "RGB"
    assert np.abs(_arr(d.image) - _arr(bi.photo("coffee"))).mean() < 4


def test_multi_frame_uses_frame_zero(bad):
    root, _ = bad
    gif = decode_file(os.path.join(root, "animated.gif"))
    assert gif.n_frames == 3 and gif.format == "GIF"
    first, second = _arr(bi.photo("chelsea")), _arr(bi.photo("astronaut"))
    assert np.abs(_arr(gif.image) - first).mean() < np.abs(_arr(gif.image) - second).mean() / 3
    tif = decode_file(os.path.join(root, "multipage.tif"))
    assert tif.n_frames == 2
    assert np.array_equal(np.asarray(tif.image), np.asarray(bi.photo("chelsea")))
    assert decode_file(os.path.join(root, "plain.jpg")).n_frames == 1


# ---------------------------------------------------------------------------------------------
# errors: nothing escapes but InputError / EnvironmentFault
# ---------------------------------------------------------------------------------------------


def test_corrupted_bytes_only_raise_input_error():
    rng = random.Random(1234)
    originals = [
        bi.encode(bi.photo(), "JPEG", quality=80),
        bi.encode(bi.photo(), "PNG"),
        bi.encode(bi.photo(), "GIF"),
        bi.encode(bi.photo(), "TIFF"),
        bi.encode(bi.photo(), "BMP"),
        bi.encode(bi.photo(), "WEBP"),
    ]
    for data in originals:
        for _ in range(40):
            buf = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            if rng.random() < 0.3:
                buf = buf[: rng.randrange(1, len(buf))]
            try:
                img = decode_bytes(bytes(buf))[0]
            except InputError as exc:
                assert exc.reason in FAILURE_REASONS
            else:
                assert img.mode == "RGB"


def test_memory_error_is_an_environment_fault(monkeypatch):
    def oom(*a, **k):
        raise MemoryError

    monkeypatch.setattr(decode.Image, "open", oom)
    with pytest.raises(EnvironmentFault):
        decode_bytes(b"\x89PNG not really")


@pytest.mark.parametrize(
    "code, expected",
    [
        (errno.EIO, EnvironmentFault),
        (errno.EMFILE, EnvironmentFault),
        (errno.ENFILE, EnvironmentFault),
        (errno.ENOMEM, EnvironmentFault),
        (errno.EACCES, "unreadable"),
        (errno.EPERM, "unreadable"),
        (errno.ENOENT, "vanished"),
    ],
)
def test_open_errors_are_classified(tmp_path, monkeypatch, code, expected):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"x")

    def failing_open(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(decode.os, "open", failing_open)
    if expected is EnvironmentFault:
        with pytest.raises(EnvironmentFault):
            read_file_bytes(str(path))
    else:
        with pytest.raises(InputError) as err:
            read_file_bytes(str(path))
        assert err.value.reason == expected


def test_read_io_error_is_an_environment_fault(tmp_path, monkeypatch):
    path = tmp_path / "x.jpg"
    path.write_bytes(b"x" * 100)

    def eio(*a, **k):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(decode.os, "read", eio)
    with pytest.raises(EnvironmentFault):
        read_file_bytes(str(path))


def test_read_file_bytes_reads_everything(tmp_path):
    path = tmp_path / "big.bin"
    payload = os.urandom(3 << 20)
    path.write_bytes(payload)
    assert read_file_bytes(str(path)) == payload
    assert read_file_bytes(path) == payload
    with pytest.raises(InputError) as err:
        read_file_bytes(str(path), max_bytes=1 << 20)
    assert err.value.reason == "too_large"


# ---------------------------------------------------------------------------------------------
# decode_image: in-memory sources, same rules
# ---------------------------------------------------------------------------------------------


def test_decode_image_arrays():
    photo = np.asarray(bi.photo())
    assert np.array_equal(np.asarray(decode_image(photo)), photo)
    gray = photo[..., 0]
    assert np.array_equal(np.asarray(decode_image(gray))[..., 1], gray)
    assert np.array_equal(np.asarray(decode_image(gray[..., None]))[..., 2], gray)
    assert np.array_equal(np.asarray(decode_image(photo / 255.0)), photo)
    assert np.array_equal(np.asarray(decode_image(photo.astype(np.float32) / 255.0)), photo)
    rgba = np.dstack([photo, np.zeros_like(gray)])
    assert (np.asarray(decode_image(rgba)) == 255).all()
    assert (np.asarray(decode_image(rgba, DecodePolicy(background=(0, 0, 0)))) == 0).all()
    assert np.asarray(decode_image(np.full((4, 4), 0x1234, np.uint16)))[0, 0, 0] == 0x12


@pytest.mark.parametrize(
    "bad_array",
    [
        np.zeros((4, 4, 2), np.uint8),
        np.zeros((4, 4, 5), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((4,), np.uint8),
        np.full((4, 4), 2.0),
        np.full((4, 4), np.nan),
        np.zeros((4, 4), np.int64),
    ],
)
def test_decode_image_rejects_bad_arrays(bad_array):
    with pytest.raises(UsageError):
        decode_image(bad_array)


def test_decode_image_other_sources(bad):
    root, _ = bad
    path = os.path.join(root, "rgba.png")
    from_path = np.asarray(decode_image(path))
    assert np.array_equal(np.asarray(decode_image(Path(path).read_bytes())), from_path)
    pil = Image.open(path)
    assert np.array_equal(np.asarray(decode_image(pil)), from_path)
    assert pil.mode == "RGBA"  # the caller's image is not modified
    rgb = bi.photo()
    out = decode_image(rgb)
    assert out is not rgb and np.array_equal(np.asarray(out), np.asarray(rgb))
    with pytest.raises(InputError) as err:
        decode_image(Image.new("L", (1000, 1)))
    assert err.value.reason == "aspect_ratio"
    with pytest.raises(UsageError):
        decode_image(12)  # type: ignore[arg-type]


def test_decode_workers_keep_a_grey_file_one_band_and_give_the_pixels_of_its_rgb_conversion(
    fm_dir: Path, tmp_path: Path
) -> None:
    # Fashion-MNIST's PNGs are mode L: a worker resizes one band instead of three, with the same pixels
    files = sorted(fm_dir.rglob("*.png"))[:24]
    assert decode_file(files[0]).image.mode == "RGB"
    assert decode_data(files[0].read_bytes(), keep_grey=True).image.mode == "L"
    # grey with transparency, grey + alpha and 16-bit grey are converted by the usual rules
    src = Image.open(files[0])
    others = {"la.png": src.convert("LA"), "i16.png": src.convert("I;16"), "trns.png": src}
    for name, img in others.items():
        img.save(tmp_path / name, transparency=0) if name == "trns.png" else img.save(tmp_path / name)
        assert decode_data((tmp_path / name).read_bytes(), keep_grey=True).image.mode == "RGB", name
    # an EXIF-rotated grey JPEG stays grey and is rotated
    rotated = tmp_path / "rot.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo_array("camera")[:300, :200, 0]).save(rotated, exif=exif.tobytes())
    dec = decode_data(rotated.read_bytes(), keep_grey=True)
    assert dec.image.mode == "L" and dec.image.size == (300, 200) == dec.size
    paths = [*files, rotated, *(tmp_path / n for n in others)]
    for size, interpolation in ((96, "bicubic"), (224, "bicubic"), (28, "bilinear")):
        pre = Preprocess(input_size=(size, size), interpolation=interpolation)
        done = prepare_batch([(p.name, str(p), 0) for p in paths], pre.to_dict(), DecodePolicy())
        for p, d in zip(paths, done, strict=True):
            assert isinstance(d, Decoded), d
            ref = decode_file(p, draft=pre.draft_size).image
            assert np.array_equal(d.pixels[0], pre.resize_crop(ref)), (p.name, size)

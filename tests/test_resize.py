"""The torch resizer: the same preprocessing as Pillow's resize, computed faster, recorded per store.

A downscale runs torch's antialiased uint8 kernel over the rows and columns the centre crop needs,
on the whole image's sampling grid; pixels stay within one grey level of Pillow's resize-then-crop and
features within cosine 0.999 (real photos, sharp textures, Fashion-MNIST). Stores and bundles that
record no resizer used Pillow's, keep their fingerprint, and a store begun with it resumes with it.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_array
from PIL import Image

import deepfeat
from deepfeat.data.decode import decode_data, decode_file
from deepfeat.data.preprocess import RESIZERS, Preprocess
from deepfeat.errors import UsageError
from deepfeat.models import load_backbone
from deepfeat.runtimes import build_runtime, layer_specs

#: real photos and sharp textures (the hardest case for a resize: fine detail everywhere)
SAMPLES = ("astronaut", "coffee", "rocket", "chelsea", "brick", "grass", "gravel", "camera")


def sample_jpeg(name: str, size: tuple[int, int]) -> bytes:
    img = Image.fromarray(np.ascontiguousarray(photo_array(name)[..., :3])).resize(size, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pillow(pre: Preprocess) -> Preprocess:
    return dataclasses.replace(pre, resizer="pillow")


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize(
    "pre",
    [
        Preprocess(input_size=(224, 224), crop_pct=0.875, interpolation="bicubic"),
        Preprocess(input_size=(96, 96), crop_pct=0.875, interpolation="bilinear"),
        Preprocess(input_size=(160, 224), crop_pct=1.0, interpolation="bicubic"),  # non-square input
        Preprocess(input_size=(224, 224), crop_pct=0.875, interpolation="lanczos"),  # Pillow on the crop box
    ],
    ids=["bicubic-224", "bilinear-96", "bicubic-160x224", "lanczos-224"],
)
def test_the_torch_resizer_is_pillows_resize_within_one_grey_level(pre: Preprocess) -> None:
    assert pre.resizer == "torch"
    # (3000, 2000) spans several of Pillow's memory blocks: its pixels are read by a crop, not through Arrow
    sizes = ((640, 480), (480, 640), (500, 375), (2048, 1536), (3000, 2000), (300, 301), (120, 90), (224, 224), (28, 28))
    for size in sizes:
        for name in ("coffee", "brick"):
            img = decode_data(sample_jpeg(name, size)).image
            new, old = pre.resize_crop(img), pillow(pre).resize_crop(img)
            assert new.shape == old.shape == (*pre.input_size, 3) and new.dtype == np.uint8
            assert np.abs(new.astype(int) - old).max() <= 1, (size, name)
    # a grey input too (converted to RGB for torch's kernel, resized as one band by Pillow)
    gray = Image.fromarray(photo_array("camera")[..., 0])
    assert np.abs(pre.resize_crop(gray).astype(int) - pillow(pre).resize_crop(gray)).max() <= 1


def test_features_agree_with_pillows_resize_on_photos_and_fashion_mnist(fm_dir: Path) -> None:
    for input_size in (224, 96):
        bb = load_backbone("efficientnet_lite0", input_size=input_size)
        rt = build_runtime(bb, layer_specs(bb, "blocks.4,pre_logits"), runtime="torch", precision="fp32")
        images = [
            decode_data(sample_jpeg(n, s), draft=bb.preprocess.draft_size).image
            for n in SAMPLES
            for s in ((640, 480), (480, 640), (1024, 768))
        ]
        if input_size == 96:  # Fashion-MNIST: 28 px PNGs, upscaled
            images += [decode_file(p).image for p in sorted(fm_dir.rglob("*.png"))[:40]]
        new = rt(np.stack([bb.preprocess.resize_crop(i) for i in images]))
        old = rt(np.stack([pillow(bb.preprocess).resize_crop(i) for i in images]))
        for layer in new:
            assert row_cosines(new[layer], old[layer]).min() >= 0.999, (input_size, layer)


def test_records_without_a_resizer_mean_pillow_and_keep_their_fingerprint() -> None:
    old = {
        "input_size": [224, 224],
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": [0.5] * 3,
        "std": [0.5] * 3,
        "jpeg_draft": True,
    }
    pre = Preprocess.from_dict(old)
    assert pre.resizer == "pillow" and pre.to_dict() == old  # the fingerprint of an old store is unchanged
    assert Preprocess().resizer == "torch" and Preprocess().to_dict()["resizer"] == "torch"
    assert Preprocess.from_dict(Preprocess().to_dict()) == Preprocess()
    assert RESIZERS == ("torch", "pillow")
    with pytest.raises(UsageError, match="resizer"):
        Preprocess(resizer="opencv")


def _photo_folder(root: Path, names: tuple[str, ...]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / f"{name}.jpg").write_bytes(sample_jpeg(name, (640, 480)))
    return root


def _features(store: Path) -> dict[str, np.ndarray]:
    x, _, meta = deepfeat.open_store(store).load("pre_logits")
    return dict(zip(meta.column("id").to_pylist(), x))


def test_a_store_begun_with_pillows_resize_resumes_with_it_bit_identically(tmp_path: Path) -> None:
    first, later = SAMPLES[:3], SAMPLES[3:6]
    kw = dict(layers="pre_logits", runtime="torch", precision="fp32", batch_size=1, workers=1)
    bb = load_backbone("efficientnet_lite0")
    old_bb = dataclasses.replace(bb, preprocess=pillow(bb.preprocess))
    # a store begun as deepfeat wrote them before the torch resizer: no "resizer" in its record
    data = _photo_folder(tmp_path / "data", first)
    resumed = tmp_path / "resumed"
    deepfeat.extract(data, resumed, backbone=old_bb, **kw)
    assert "resizer" not in deepfeat.open_store(resumed).metadata["preprocess"]
    _photo_folder(data, later)
    s = deepfeat.extract(data, resumed, **kw)  # today's default backbone: resizer "torch"
    assert s.resumed and s.embedded_now == len(later)
    assert "resizer" not in deepfeat.open_store(resumed).metadata["preprocess"]
    # the same inputs in one uninterrupted run with Pillow's resize, and with the torch resizer
    ref, fresh = tmp_path / "ref", tmp_path / "fresh"
    deepfeat.extract(data, ref, backbone=old_bb, **{**kw, "workers": 0})
    deepfeat.extract(data, fresh, **{**kw, "workers": 0})
    assert deepfeat.open_store(fresh).metadata["preprocess"]["resizer"] == "torch"
    got, want, other = _features(resumed), _features(ref), _features(fresh)
    assert sorted(got) == sorted(want) == sorted(other)
    assert all(np.array_equal(got[i], want[i]) for i in want)
    assert not all(np.array_equal(got[i], other[i]) for i in want)  # the resizers really differ


def test_a_bundle_of_a_pillow_store_predicts_with_pillows_resize(fm_dir: Path, tmp_path: Path) -> None:
    bb = load_backbone("efficientnet_lite0", input_size=64)
    store, bundle = tmp_path / "feats", tmp_path / "m.dfm"
    deepfeat.extract(
        fm_dir / "train",
        store,
        layers="pre_logits",
        runtime="torch",
        precision="fp32",
        workers=0,
        backbone=dataclasses.replace(bb, preprocess=pillow(bb.preprocess)),
    )
    deepfeat.train(store, layers="pre_logits", solver="exact", out=bundle)
    b = deepfeat.load_bundle(bundle)
    assert b.preprocess.resizer == "pillow" and b.load_backbone().preprocess.resizer == "pillow"
    photo = tmp_path / "coffee.jpg"
    photo.write_bytes(sample_jpeg("coffee", (640, 480)))
    got = deepfeat.predict_images(bundle, [photo], top_k=3)[0]
    assert got.error is None and len(got.labels) == 3


@pytest.mark.parametrize("resizer", RESIZERS)
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "lanczos", "box", "hamming"])
def test_a_grey_image_resized_as_one_band_gives_the_pixels_of_its_rgb_conversion(resizer: str, interpolation: str) -> None:
    grey = [Image.fromarray(photo_array("camera")[..., 0]).resize(s) for s in ((512, 384), (300, 301), (28, 28), (109, 109))]
    for pre in (
        Preprocess(input_size=(96, 96), interpolation=interpolation, resizer=resizer),  # 28 px: upscaled
        Preprocess(input_size=(224, 224), interpolation=interpolation, resizer=resizer),
        Preprocess(input_size=(160, 224), crop_pct=1.0, interpolation=interpolation, resizer=resizer),
    ):
        for img in grey:
            assert img.mode == "L"
            out = pre.resize_crop(img)
            assert out.shape == (*pre.input_size, 3) and out.dtype == np.uint8
            assert np.array_equal(out, pre.resize_crop(img.convert("RGB"))), (pre, img.size)


def test_the_torch_resizer_reads_the_same_pixels_through_arrow_and_through_a_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepfeat.data import preprocess

    if not hasattr(Image.Image, "__arrow_c_array__"):
        pytest.skip("this Pillow exports no Arrow arrays (Pillow < 11.2): every image is read by a crop")
    pre = Preprocess(input_size=(224, 224), interpolation="bicubic")
    images = [decode_data(sample_jpeg(n, s)).image for n in ("coffee", "brick") for s in ((640, 480), (481, 641))]
    region = preprocess._rgbx_region(images[0], 500, 400)
    assert region.shape == (400, 500, 4) and region.flags.writeable
    assert np.array_equal(region[..., :3], np.asarray(images[0])[:400, :500])
    by_arrow = [pre.resize_crop(i) for i in images]

    def no_arrow(self: Image.Image) -> None:
        raise ValueError("Image rows are not contiguous in memory.")  # what Pillow says of a multi-block image

    monkeypatch.setattr(Image.Image, "__arrow_c_array__", no_arrow, raising=False)
    assert np.array_equal(preprocess._rgbx_region(images[0], 500, 400), region)
    for img, arrow in zip(images, by_arrow, strict=True):
        assert np.array_equal(pre.resize_crop(img), arrow)

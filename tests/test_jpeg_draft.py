"""Large JPEGs are decoded at reduced scale (DCT draft) when the model's input allows it.

The draft keeps both sides >= three times the resize size, so features stay within cosine 0.999 of a
full-resolution decode; the ledger and row metadata still describe the full image; a truncated
file still fails as truncated; stores and bundles written before the draft existed keep decoding
at full size.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import photo_array
from PIL import Image

import deepfeat
from deepfeat.data.decode import decode_file
from deepfeat.data.preprocess import Preprocess
from deepfeat.errors import InputError
from deepfeat.models import load_backbone
from deepfeat.runtimes import build_runtime, layer_specs


def big_jpeg(path: Path, name: str, size=(2400, 1800), exif_orientation: int | None = None) -> Path:
    img = Image.fromarray(photo_array(name)[..., :3]).resize(size, Image.Resampling.BICUBIC)
    kw = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    img.save(path, quality=92, **kw)
    return path


@pytest.fixture(scope="module")
def big_photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("big") / "photos"
    root.mkdir()
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        big_jpeg(root / f"{name}.jpg", name)
    return root


def test_draft_decodes_smaller_but_reports_the_full_size(big_photos, tmp_path) -> None:
    pre = load_backbone("efficientnet_lite0").preprocess
    assert pre.jpeg_draft and pre.draft_size == 3 * pre.resize_size == 768
    d = decode_file(big_photos / "coffee.jpg", draft=pre.draft_size)
    assert d.image.size == (1200, 900) and d.size == (2400, 1800)
    assert min(d.image.size) >= pre.draft_size
    full = decode_file(big_photos / "coffee.jpg")
    assert full.image.size == (2400, 1800) and full.sha256 == d.sha256
    # EXIF orientation 6 (rotate 90): the reported size is the upright one.
    rotated = decode_file(big_jpeg(tmp_path / "r.jpg", "coffee", exif_orientation=6), draft=768)
    assert rotated.size == (1800, 2400) and rotated.image.size == (900, 1200)
    # Small JPEGs and PNGs are untouched.
    small = tmp_path / "small.jpg"
    Image.fromarray(photo_array("chelsea")[..., :3]).save(small, quality=92)
    assert decode_file(small, draft=768).image.size == decode_file(small).image.size


def test_a_truncated_big_jpeg_still_fails_as_truncated(big_photos, tmp_path) -> None:
    data = (big_photos / "rocket.jpg").read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as exc:
        decode_file(cut, draft=768)
    assert exc.value.reason == "truncated"


def test_drafted_features_agree_with_full_decode_and_rows_keep_the_full_size(big_photos, tmp_path) -> None:
    out = tmp_path / "feats"
    deepfeat.extract(big_photos, out, layers="blocks.4,pre_logits", workers=1, runtime="torch", precision="fp32")
    store = deepfeat.open_store(out)
    assert store.metadata["preprocess"]["jpeg_draft"] is True
    X, _, meta = store.load(["blocks.4", "pre_logits"], views=0)
    rows = store.rows()
    assert set(rows.column("width").to_pylist()) == {2400} and set(rows.column("height").to_pylist()) == {1800}
    path_of = dict(zip(rows.column("id").to_pylist(), rows.column("path_bytes").to_pylist()))
    paths = [os.fsdecode(path_of[i]) for i in meta.column("id").to_pylist()]
    bb = load_backbone("efficientnet_lite0")
    rt = build_runtime(bb, layer_specs(bb, "blocks.4,pre_logits"), runtime="torch", precision="fp32")
    full = rt(np.stack([bb.preprocess.resize_crop(decode_file(p).image) for p in paths]))
    ref = np.concatenate([full["blocks.4"], full["pre_logits"]], axis=1).astype(np.float64)
    got = X.astype(np.float64)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() >= 0.999
    assert not np.array_equal(got, ref)  # the draft really ran


def test_preprocessing_recorded_before_the_draft_decodes_at_full_size() -> None:
    old = {"input_size": [224, 224], "crop_pct": 0.875, "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    pre = Preprocess.from_dict(old)
    assert pre.jpeg_draft is False and pre.draft_size is None
    assert Preprocess.from_dict(Preprocess().to_dict()).jpeg_draft is True

"""A new user's mistakes and surprises (issue 12): nothing silently dropped, no traceback, clear exits.

Every test here failed on the code before its fix. Real photos (scikit-image) and the real bundled
backbone (EfficientNet-Lite0) wherever the behaviour depends on them.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import deepfeat
from deepfeat.cli import main
from deepfeat.data.sources import discover

FAST = ["--input-size", "32", "--workers", "0", "-q"]


def _copy(photo_files: dict[str, Path], where: dict[str, str]) -> None:
    """Copy the sample photos: {'cat': 'F/cat.jpg', ...}."""
    for key, dest in where.items():
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photo_files[key], dest)


# --------------------------------------------------------------------------------------------- item 4
def test_flat_folder_with_one_subfolder_embeds_every_image(photo_files, tmp_path, capsys):
    """F/*.jpg + F/thumbs/x.jpg: the top-level photos are embedded unlabeled, not excluded, and the
    run says so; the store written inside F (--out F/feats) never becomes an input on a rerun."""
    src = tmp_path / "F"
    _copy(photo_files, {"cat": f"{src}/cat.jpg", "coffee": f"{src}/coffee.jpg", "astronaut": f"{src}/astronaut.jpg",
                        "rocket": f"{src}/thumbs/rocket.jpg"})
    out = src / "feats"
    assert main(["extract", str(src), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "4 embedded" in printed and "0 excluded" in printed
    assert "mixed layout: 3 image files directly in the source folder" in printed
    store = deepfeat.open_store(out)
    assert store.num_rows() == 4
    # rerun: the store's own folder (parts/*.npy, *.parquet, manifest.json) is neither an input nor an exclusion
    s = deepfeat.extract(src, out, input_size=32, workers=0)
    assert (s.discovered, s.excluded, s.already_done, s.embedded_now, s.embedded_total) == (4, 0, 4, 0, 4)
    assert s.notes and "mixed layout" in s.notes[0]


def test_store_inside_a_flat_source_keeps_it_flat(photo_files, tmp_path):
    src = tmp_path / "flat"
    _copy(photo_files, {"cat": f"{src}/cat.jpg", "coffee": f"{src}/coffee.jpg"})
    out = src / "feats"
    deepfeat.extract(src, out, input_size=32, workers=0)
    assert discover(src).layout == "class"  # without skip_dirs the store looks like a class folder
    d = discover(src, skip_dirs=[out])
    assert (d.layout, len(d.items), d.excluded, d.notes) == ("flat", 2, [], [])
    s = deepfeat.extract(src, out, input_size=32, workers=0)
    assert (s.discovered, s.excluded, s.already_done, s.notes) == (2, 0, 2, [])

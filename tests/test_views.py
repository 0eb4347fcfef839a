"""Augmented views: seeded per (image, view), train split only by default, stable across kill -9."""

from __future__ import annotations

import signal

import numpy as np
import pytest
from test_crash import cli, committed_parts, snapshot, wait_for

import deepfeat
from deepfeat.errors import UsageError

COMMON = {"layers": "pre_logits", "input_size": 32, "workers": 1, "batch_size": 8, "part_size": 16}


def by_key(path) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for b in deepfeat.open_store(path).batches(batch_size=64):
        for i, v, row in zip(b.ids, b.meta.column("view").to_pylist(), b.features["pre_logits"]):
            out[(i, v)] = row
    return out


@pytest.fixture(scope="module")
def plain_and_views(fm_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("views")
    deepfeat.extract(fm_dir, root / "plain", **COMMON)
    s = deepfeat.extract(fm_dir, root / "views", views=2, augment="flip,crop=0.7,rotate=15,color=0.2", **COMMON)
    return by_key(root / "plain"), by_key(root / "views"), s, root


def test_view0_equals_plain_extraction_and_test_rows_untouched(plain_and_views):
    plain, views, summary, root = plain_and_views
    assert summary.rows_total == 40 * 3 + 40  # 40 train images x 3 rows, 40 test images x 1 row
    for (item, _view), row in plain.items():
        np.testing.assert_array_equal(views[(item, 0)], row)
    store = deepfeat.open_store(root / "views")
    meta = store.rows(["split", "view"]).to_pylist()
    assert {r["view"] for r in meta if r["split"] == "test"} == {0}
    assert sorted({r["view"] for r in meta if r["split"] == "train"}) == [0, 1, 2]
    # Augmented views differ from the original and from each other.
    train_ids = {i for (i, v) in views if v == 1}
    for i in list(train_ids)[:10]:
        assert not np.array_equal(views[(i, 1)], views[(i, 0)])
        assert not np.array_equal(views[(i, 1)], views[(i, 2)])
    assert store.metadata["views"]["augment"] == "flip=0.5,crop=0.7,rotate=15,color=0.2"


def test_views_are_reproducible_across_runs(plain_and_views, fm_dir, tmp_path):
    _, views, _, _ = plain_and_views
    deepfeat.extract(
        fm_dir,
        tmp_path / "again",
        views=2,
        augment="flip,crop=0.7,rotate=15,color=0.2",
        **{**COMMON, "batch_size": 5, "part_size": 7, "workers": 0},
    )
    again = by_key(tmp_path / "again")
    assert again.keys() == views.keys()
    for k, row in views.items():
        np.testing.assert_array_equal(again[k], row)


def test_views_survive_kill9_and_resume(fm_dir, tmp_path):
    extra = ("--views", "2", "--augment", "flip,rotate=20", "--workers", "0")
    clean = tmp_path / "clean"
    p = cli(fm_dir, clean, *extra)
    assert p.wait(timeout=300) == 0
    out = tmp_path / "killed"
    p = cli(fm_dir, out, *extra)
    wait_for(lambda: committed_parts(out) >= 2 or p.poll() is not None)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = cli(fm_dir, out, *extra)
    assert p.wait(timeout=300) == 0, p.stderr.read().decode()
    a, b = by_key(clean), by_key(out)
    assert a.keys() == b.keys() and len(a) == 40 * 3 + 40
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    snapshot(out)  # no duplicates, no visible partials


def test_view_options_are_validated_and_estimated(fm_dir, tmp_path):
    with pytest.raises(UsageError, match="Unknown augmentation 'zoom'.*valid: flip"):
        deepfeat.extract(fm_dir, tmp_path / "x", views=1, augment="flip,zoom=2", **COMMON)
    with pytest.raises(UsageError, match="needs 'views'"):
        deepfeat.extract(fm_dir, tmp_path / "x", augment="flip", **COMMON)
    with pytest.raises(UsageError, match=r"must be in \[0, 180\]"):
        deepfeat.extract(fm_dir, tmp_path / "x", views=1, augment="rotate=500", **COMMON)
    plan = deepfeat.plan_extraction(fm_dir, layers="pre_logits", input_size=32, views=5, dtype="float16")
    est = plan.estimate()
    assert est["rows"] == 40 * 6 + 40 and est["bytes"] == est["rows"] * 1280 * 2

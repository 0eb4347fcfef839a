"""deepfeat.params: one checker and one wording for the parameters of the public API.

The checks of the public entry points run before any work: a refused call leaves no output behind.
"""

from __future__ import annotations

import re
import types

import numpy as np
import pytest

import deepfeat
from deepfeat.errors import UsageError
from deepfeat.params import check_choice, check_int, check_number, is_int, param_error


# ----------------------------------------------------------------------------- the checker
def test_message_shape():
    assert (
        str(param_error("epochs", "an int >= 1", 0, "train"))
        == "The 'epochs' parameter of train must be an int >= 1; got 0 instead."
    )
    assert (
        str(param_error("head", "one of 'a', 'b'", "c")) == "The 'head' parameter must be one of 'a', 'b'; got 'c' instead."
    )
    with pytest.raises(UsageError) as exc:
        check_number(1.5, "alpha", minimum=0, maximum=1, min_open=True, max_open=True, where="analyze")
    assert str(exc.value) == "The 'alpha' parameter of analyze must be a float in (0, 1); got 1.5 instead."
    with pytest.raises(UsageError) as exc:
        check_int(-1, "views", minimum=0, where="extract", optional=True)
    assert str(exc.value) == "The 'views' parameter of extract must be None or an int >= 0; got -1 instead."


def test_int_bounds_are_closed():
    assert check_int(1, "n", minimum=1, maximum=3) == 1 and check_int(3, "n", minimum=1, maximum=3) == 3
    for bad in (0, 4):
        with pytest.raises(UsageError, match=re.escape("must be an int in [1, 3]")):
            check_int(bad, "n", minimum=1, maximum=3)


def test_number_bounds_open_and_closed():
    assert check_number(0, "x", minimum=0) == 0.0
    with pytest.raises(UsageError, match="must be a float > 0;"):
        check_number(0, "x", minimum=0, min_open=True)
    assert check_number(1, "x", maximum=1) == 1.0
    with pytest.raises(UsageError, match="must be a float < 1;"):
        check_number(1, "x", maximum=1, max_open=True)
    with pytest.raises(UsageError, match=re.escape("must be a float in [0, 1);")):
        check_number(1.0, "x", minimum=0, maximum=1, max_open=True)


def test_bools_are_not_ints_nor_numbers():
    assert not is_int(True)
    with pytest.raises(UsageError, match="got True instead"):
        check_int(True, "batch_size", minimum=1)
    with pytest.raises(UsageError, match="got False instead"):
        check_number(False, "lr")


def test_numpy_ints_are_accepted_and_returned_as_int():
    assert is_int(np.int64(3)) and is_int(np.uint8(3))
    value = check_int(np.int32(7), "bins", minimum=2)
    assert value == 7 and type(value) is int
    assert check_number(np.float32(0.5), "alpha", minimum=0, maximum=1) == 0.5
    for bad in (2.0, "3", None):
        with pytest.raises(UsageError):
            check_int(bad, "bins")


def test_nan_is_refused():
    for kw in ({}, {"minimum": 0}, {"maximum": 1}):
        with pytest.raises(UsageError, match="got nan instead"):
            check_number(float("nan"), "alpha", **kw)


def test_optional_none():
    assert check_int(None, "part_size", minimum=1, optional=True) is None
    assert check_number(None, "part_seconds", minimum=0, optional=True) is None
    with pytest.raises(UsageError, match="must be an int >= 1; got None"):
        check_int(None, "part_size", minimum=1)


def test_choice():
    assert check_choice("svm", "head", ("logreg", "svm")) == "svm"
    assert check_choice("b", "key", {"a": 1, "b": 2}) == "b"  # a registry's keys
    with pytest.raises(UsageError) as exc:
        check_choice("x", "head", ("logreg", "svm"), where="train")
    assert str(exc.value) == "The 'head' parameter of train must be one of 'logreg', 'svm'; got 'x' instead."


# ----------------------------------------------------------------------------- the adopting entry points
def _refused(call, name: str, where: str | None, out=None) -> str:
    """``call()`` raises a UsageError naming ``name`` (and ``where``), in the params.py wording."""
    with pytest.raises(UsageError) as exc:
        call()
    message = str(exc.value)
    of = f" of {where}" if where else ""
    assert message.startswith(f"The {name!r} parameter{of} must be "), message
    assert message.endswith(" instead."), message
    if out is not None:
        assert not out.exists(), f"{out} was created before the parameters were checked"
    return message


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(workers=-1), "workers"),
        (dict(part_size=0), "part_size"),
        (dict(part_seconds=0), "part_seconds"),
        (dict(views=-1), "views"),
        (dict(dtype="float64"), "dtype"),
        (dict(device="tpu"), "device"),
        (dict(precision="int4"), "precision"),
    ],
)
def test_extract(tmp_path, kw, name):
    out = tmp_path / "store"
    _refused(lambda: deepfeat.extract(tmp_path / "no-images", out, **kw), name, "extract", out)


def test_predict_images_with_a_backbone(tmp_path):
    _refused(lambda: deepfeat.predict_images("no-such-model", [tmp_path], top_k=0), "top_k", "predict_images")
    _refused(lambda: deepfeat.predict_images("no-such-model", [tmp_path], batch_size=0), "batch_size", "predict_images")
    _refused(lambda: deepfeat.classify_images("no-such-model", [tmp_path], top_k=0), "top_k", "predict_images")


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(bins=1), "bins"),
        (dict(alpha=1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(batch_size=0), "batch_size"),
        (dict(sample_rows=True), "sample_rows"),
    ],
)
def test_analyze(tmp_path, kw, name):
    out = tmp_path / "report"
    _refused(lambda: deepfeat.analyze(tmp_path / "no-store", out, **kw), name, "analyze", out)


def test_full_network_embedding(tmp_path):
    out = tmp_path / "fne"
    _refused(
        lambda: deepfeat.full_network_embedding(tmp_path / "no-store", out, batch_size=0),
        "batch_size",
        "full_network_embedding",
        out,
    )
    _refused(
        lambda: deepfeat.full_network_embedding(tmp_path / "no-store", out, thresholds=(0.5, -0.5)),
        "thresholds",
        "full_network_embedding",
        out,
    )


def test_probe(tmp_path):
    out = tmp_path / "probe"
    _refused(lambda: deepfeat.probe(tmp_path / "no-store", out, groups="stages,nope"), "groups", "probe", out)
    _refused(lambda: deepfeat.probe(tmp_path / "no-store", out, thresholds="1,0"), "thresholds", "probe", out)


def test_export_store(tmp_path):
    out = tmp_path / "export.xml"
    _refused(lambda: deepfeat.export_store(tmp_path / "no-store", out, "xml"), "format", "export_store", out)


def test_feature_store_batches():
    fake = types.SimpleNamespace(layer_names=[], splits=[], layer=lambda n: n)  # the check precedes any read
    _refused(lambda: next(deepfeat.FeatureStore.batches(fake, batch_size=0)), "batch_size", "FeatureStore.batches")


def test_plot_embedding(tmp_path):
    from deepfeat.viz.plots import plot_embedding

    out = tmp_path / "e.png"
    _refused(lambda: plot_embedding(tmp_path / "no-store", None, out, max_points=2), "max_points", "plot_embedding", out)
    _refused(lambda: plot_embedding(tmp_path / "no-store", None, out, method="umap"), "method", "plot_embedding", out)


def test_runtime_choice():
    from deepfeat.runtimes import resolve_runtime

    assert "'torch'" in _refused(lambda: resolve_runtime("nope"), "runtime", None)
    _refused(lambda: resolve_runtime("torch", precision="fp8"), "precision", None)


def test_engines():
    from deepfeat.engines.assign import assign_parts, workers_for
    from deepfeat.engines.builtin import RayEngine

    _refused(lambda: RayEngine(max_retries=-1), "max_retries", "RayEngine")
    with pytest.raises(UsageError, match="--ray-workers"):
        RayEngine(workers=0)
    _refused(lambda: assign_parts(3, 0), "n_workers", "assign_parts")
    _refused(lambda: assign_parts(-1, 2), "n_parts", "assign_parts")
    _refused(lambda: workers_for(4, 4, requested=0), "ray_workers", None)


def test_decode_policy_and_augment():
    from deepfeat.data.augment import parse_augment
    from deepfeat.data.decode import DecodePolicy

    assert DecodePolicy(max_pixels=1e8).max_pixels == 1e8  # a float limit is still accepted
    _refused(lambda: DecodePolicy(max_pixels=0), "max_pixels", "DecodePolicy")
    _refused(lambda: DecodePolicy(max_aspect_ratio=float("nan")), "max_aspect_ratio", "DecodePolicy")
    _refused(lambda: DecodePolicy(background=(0, 0)), "background", "DecodePolicy")
    _refused(lambda: DecodePolicy(max_file_bytes=-1), "max_file_bytes", "DecodePolicy")
    _refused(lambda: parse_augment(" "), "augment", None)


def test_cnn_arch():
    from deepfeat.models.arch import arch_config

    _refused(lambda: arch_config("huge", num_classes=2, in_channels=3, input_size=32), "arch", "arch_config")
    _refused(lambda: arch_config("small", num_classes=2, in_channels=2, input_size=32), "in_channels", "arch_config")

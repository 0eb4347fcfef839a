"""Backbones, weights, layer discovery and selection, on the real bundled model."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest
import torch
from PIL import Image

from deepfeat.errors import UsageError, WeightsUnavailableError
from deepfeat.models import describe_layers, load_backbone, resolve_layers
from deepfeat.models.layers import FeatureTaps
from deepfeat.models.registry import list_models
from deepfeat.models.weights import load_state_dict

CAT_CLASSES = {"tiger cat", "tabby, tabby cat", "Egyptian cat"}
#: ImageNet logits of the cat photo (JPEG q95) through tf_efficientnet_lite0 + mean/std 0.5 +
#: bicubic resize 256 + centre crop 224. Any change of architecture or preprocessing moves them.
GOLDEN_LOGITS = {281: 8.3749, 282: 9.1785, 285: 9.1281}


def test_bundled_top5_on_real_photos(photo_files):
    from deepfeat.predict import predict_images

    preds = {p.path: p for p in predict_images("efficientnet_lite0", [str(p) for p in photo_files.values()])}
    cat = preds[str(photo_files["cat"])]
    assert (
        cat.labels[0] in CAT_CLASSES and sum(pr for lb, pr in zip(cat.labels, cat.probabilities) if lb in CAT_CLASSES) > 0.8
    )
    assert preds[str(photo_files["coffee"])].labels[0] == "espresso"
    assert preds[str(photo_files["rocket"])].labels[0] in {"missile", "projectile, missile", "space shuttle"}


def test_golden_prelogits_pin_architecture_and_preprocessing(lite0, photo_files):
    """Pins tf_ (SAME padding) architecture, mean=std=0.5, bicubic, crop 0.875 on the cat photo."""
    assert lite0.preprocess.mean == (0.5, 0.5, 0.5) and lite0.preprocess.interpolation == "bicubic"
    x = lite0.preprocess(Image.open(photo_files["cat"]).convert("RGB"))
    with torch.inference_mode():
        logits = lite0.model(x)[0]
    top = logits.topk(3).indices.tolist()
    assert top[0] in (281, 282, 285)
    golden = np.array([GOLDEN_LOGITS[k] for k in sorted(GOLDEN_LOGITS)])
    got = logits[sorted(GOLDEN_LOGITS)].numpy()
    np.testing.assert_allclose(got, golden, atol=2e-2)


def test_layers_describe_and_select(lite0):
    infos = describe_layers(lite0)
    assert infos["pre_logits"].shape == (1280,)
    assert infos["blocks.4"].shape == (112, 14, 14)
    assert infos["conv_stem"].dims("none") == 32 * 112 * 112
    assert infos["blocks.6"].dims("avgmax") == 2 * 320
    assert resolve_layers("all-stages", infos) == ["blocks.0", "blocks.1", "blocks.2", "blocks.4", "blocks.6"]
    assert resolve_layers("-1", infos) == ["blocks.6"]
    assert resolve_layers("pre_logits,blocks.4", infos) == ["blocks.4", "pre_logits"]  # execution order
    assert len(resolve_layers("all-blocks", infos)) == 16
    conv = resolve_layers("all", infos)
    assert conv[-1] == "pre_logits" and len(conv) > 40
    with pytest.raises(UsageError, match="Closest valid names: blocks.4"):
        resolve_layers("block.4", infos)


def test_taps_equal_direct_forward_and_stop_early(lite0):
    infos = describe_layers(lite0)
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        feats_ref = lite0.model.forward_features(x)
        pre_ref = lite0.model.forward_head(feats_ref, pre_logits=True)
    with FeatureTaps(lite0, {"bn2": "avg", "pre_logits": "none"}, infos) as taps:
        with torch.inference_mode():
            got = taps.run(x)
    torch.testing.assert_close(got["pre_logits"], pre_ref)
    torch.testing.assert_close(got["bn2"], feats_ref.mean((2, 3)))
    # Stopping early: the classifier never runs when only blocks.2 is tapped.
    ran = []
    h = lite0.model.classifier.register_forward_hook(lambda *a: ran.append(1))
    try:
        with FeatureTaps(lite0, {"blocks.2": "avg"}, infos) as taps, torch.inference_mode():
            taps.run(x)
    finally:
        h.remove()
    assert ran == [] and not lite0.model.blocks[2]._forward_hooks


def test_timm_resnet50_unpooled_last_stage_is_100352_dims():
    bb = load_backbone("timm:resnet50", weights="random")
    infos = describe_layers(bb)
    assert infos["layer4"].shape == (2048, 7, 7)
    assert infos["layer4"].dims("none") == 100_352


def test_missing_weights_fail_fast_with_instructions():
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        load_backbone("resnet18")
    assert time.perf_counter() - t < 30


def test_unknown_model_names_close_matches():
    with pytest.raises(UsageError, match="efficientnet_lite0"):
        load_backbone("efficientnet_lite")


def test_weights_files_safetensors_and_no_pickle(tmp_path):
    bb = load_backbone("timm:resnet18", weights="random", seed=3)
    from safetensors.torch import save_file

    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in bb.model.state_dict().items()}, st)
    pt = tmp_path / "w.pth"
    torch.save({"state_dict": bb.model.state_dict()}, pt)
    for path in (st, pt):
        bb2 = load_backbone("timm:resnet18", weights=str(path))
        for a, b in zip(bb.model.state_dict().values(), bb2.model.state_dict().values()):
            assert torch.equal(a, b)
    # A pickled arbitrary object is refused, not executed.
    evil = tmp_path / "evil.pth"

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(evil, "wb") as f:
        pickle.dump({"x": Boom()}, f)
    with pytest.raises(UsageError, match="weights_only"):
        load_state_dict(evil)


def test_torchscript_and_factory_models(tmp_path):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    ).eval()
    ts = tmp_path / "net.ts"
    torch.jit.script(net).save(str(ts))
    bb = load_backbone(str(ts))
    infos = describe_layers(bb)
    assert list(infos) == ["output"] and infos["output"].shape == (2,)
    bb2 = load_backbone("torch.nn:Identity", weights="random")
    assert bb2.family == "factory"


def test_list_models_reports_bundled_offline():
    rows = {r.name: r for r in list_models()}
    assert rows["efficientnet_lite0"].weights_offline

"""Token models (ViT, DINOv2 with registers, CLIP's image tower) beside CNNs (ConvNeXt, ResNet-50, VGG16).

Random weights and small configurations keep this fast; every pooled feature is compared with
timm's own ``forward_features`` / ``pool`` / ``forward_head(pre_logits=True)``. The tiny DINOv2 and
CLIP configurations are written as timm model folders (``config.json`` + ``model.safetensors``,
timm's ``save_pretrained`` layout), which is also how they load: as a model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deepfeat.cli import main
from deepfeat.errors import UsageError
from deepfeat.models.layers import describe_layers
from deepfeat.models.pooling import pool
from deepfeat.models.registry import load_backbone
from deepfeat.runtimes import build_runtime, layer_specs

TINY = {"depth": 2, "embed_dim": 48, "num_heads": 2}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny DINOv2 (4 registers) and CLIP image-tower configs saved as timm model folders."""
    import timm
    from timm.models import save_for_hf

    root = tmp_path_factory.mktemp("timm_folders")
    out = {}
    for key, arch, kw in (
        ("dinov2", "vit_small_patch14_reg4_dinov2", {"img_size": 56, **TINY}),
        ("clip", "vit_base_patch16_clip_224", {"img_size": 64, "num_classes": 16, **TINY}),
    ):
        torch.manual_seed(1)
        model = timm.create_model(arch, pretrained=False, **kw)
        save_for_hf(model, root / key, safe_serialization=True)
        out[key] = root / key
    return out


def _pixels(bb, n: int = 2) -> np.ndarray:
    h, w = bb.preprocess.input_size
    return np.random.default_rng(0).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _features(bb, layers: str, pool_: str, pixels: np.ndarray, runtime: str = "torch", infos=None) -> dict[str, np.ndarray]:
    """Features at fp32: these tests compare with timm's own forward, not a precision's agreement."""
    infos = infos if infos is not None else describe_layers(bb)
    specs = layer_specs(bb, layers, pool_, infos=infos)
    return build_runtime(bb, specs, infos, runtime=runtime, precision="fp32")(pixels)


def _reference_input(bb, pixels: np.ndarray) -> torch.Tensor:
    return bb.preprocess.normalize(torch.from_numpy(pixels), channels_last=False).float()


def _close(a: np.ndarray, b: torch.Tensor) -> None:
    np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["vit", "dinov2", "clip"])
def test_vit_family_poolings_match_timm(which, folders):
    bb = load_backbone("test_vit", "random") if which == "vit" else load_backbone(str(folders[which]))
    model = bb.model
    prefix = {"vit": 1, "dinov2": 5, "clip": 1}[which]
    assert model.num_prefix_tokens == prefix
    infos = describe_layers(bb)
    tokens, dim = infos["norm"].shape
    assert infos["norm"].prefix_tokens == prefix and tokens > prefix
    assert infos["norm"].dims_by_pool() == {
        "none": tokens * dim,
        "avg": dim,
        "max": dim,
        "avgmax": 2 * dim,
        "cls": dim,
        "clsavg": 2 * dim,
    }
    assert infos["patch_embed"].prefix_tokens == 0  # patch embeddings carry no class token

    pixels = _pixels(bb)
    x = _reference_input(bb, pixels)
    with torch.no_grad():
        ff = model.forward_features(x)
        ref_pre = model.forward_head(ff, pre_logits=True)
        ref_out = model(x)
    cls = _features(bb, "norm,pre_logits,output", "cls", pixels, infos=infos)
    _close(cls["norm"], ff[:, 0])
    _close(cls["norm"], model.pool(ff, pool_type="token"))
    _close(cls["pre_logits"], ref_pre)  # what timm's head sees
    _close(cls["output"], ref_out)
    feats = {p: _features(bb, "norm", p, pixels, infos=infos)["norm"] for p in ("avg", "max", "clsavg", "none")}
    _close(feats["avg"], ff[:, prefix:].mean(1))
    _close(feats["avg"], model.pool(ff, pool_type="avg"))  # timm's avg also leaves out class/register tokens
    _close(feats["max"], model.pool(ff, pool_type="max"))
    _close(feats["clsavg"], torch.cat([ff[:, 0], ff[:, prefix:].mean(1)], 1))
    _close(feats["none"], ff.reshape(len(ff), -1))
    assert feats["avg"].shape == (2, dim) and feats["none"].shape == (2, tokens * dim)


def test_token_pooling_reference_in_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 1 + 4 + 9, 6)).astype(np.float32)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(pool(t, "cls", 5).numpy(), x[:, 0])
    np.testing.assert_allclose(pool(t, "avg", 5).numpy(), x[:, 5:].mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pool(t, "max", 5).numpy(), x[:, 5:].max(1))
    np.testing.assert_allclose(
        pool(t, "clsavg", 5).numpy(), np.concatenate([x[:, 0], x[:, 5:].mean(1)], 1), atol=1e-6, rtol=1e-6
    )
    np.testing.assert_allclose(pool(t, "none", 5).numpy(), x.reshape(3, -1))


def test_cnn_layers_refuse_cls_and_keep_their_dims():
    bb = load_backbone("timm:convnext_atto", "random", input_size=64)
    infos = describe_layers(bb)
    last = [n for n, i in infos.items() if i.stage][-1]
    assert "cls" not in infos[last].dims_by_pool()
    with pytest.raises(UsageError, match="cls"):
        layer_specs(bb, last, "cls")
    pixels = _pixels(bb)
    x = _reference_input(bb, pixels)
    with torch.no_grad():
        ref_pre = bb.model.forward_head(bb.model.forward_features(x), pre_logits=True)
    feats = _features(bb, f"{last},pre_logits", "avg", pixels, infos=infos)
    _close(feats["pre_logits"], ref_pre)
    assert feats[last].shape == (2, infos[last].shape[0])


def test_resnet50_layer4_dims_and_pre_logits():
    bb = load_backbone("timm:resnet50", "random")
    infos = describe_layers(bb)
    assert infos["layer4"].shape == (2048, 7, 7)
    assert infos["layer4"].dims("none") == 100_352 and infos["layer4"].dims("avg") == 2048
    pixels = _pixels(bb, 1)
    x = _reference_input(bb, pixels)
    with torch.no_grad():
        ff = bb.model.forward_features(x)
        ref_pre = bb.model.forward_head(ff, pre_logits=True)
    feats = _features(bb, "layer4,pre_logits", "layer4=none,pre_logits=avg", pixels, infos=infos)
    _close(feats["layer4"], ff.reshape(1, -1))
    _close(feats["pre_logits"], ref_pre)


def test_vgg16_block5_pool_is_25088_dims_unpooled():
    bb = load_backbone("torchvision:vgg16", "random")
    infos = describe_layers(bb)
    assert infos["features.30"].shape == (512, 7, 7)  # the seed's block5_pool
    assert infos["features.30"].dims("none") == 25_088
    assert infos["pre_logits"].shape == (4096,)


def test_token_models_run_in_the_exported_runtimes(folders):
    """The runtime seam: OpenVINO and ONNX Runtime export the token taps (prefix tokens excluded) and agree with torch."""
    from deepfeat.runtimes import available_runtimes

    bb = load_backbone(str(folders["dinov2"]))
    pixels = _pixels(bb)
    pools = "norm=avg,blocks.1=cls,pre_logits=avg"
    ref = _features(bb, "norm,blocks.1,pre_logits", pools, pixels)
    exported = [r for r in available_runtimes() if r != "torch"]
    assert exported, "no exported runtime installed"
    for name in exported:
        rt = build_runtime(
            bb, layer_specs(bb, "norm,blocks.1,pre_logits", pools), runtime=name, precision="fp32", fallback=False
        )
        assert rt.describe()["runtime"] == name
        got = rt(pixels)
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-3, atol=1e-3, err_msg=f"{name} {k}")


def test_layers_cli_shows_token_poolings(folders, capsys):
    assert main(["layers", str(folders["dinov2"]), "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["norm"]["prefix_tokens"] == 5
    assert rows["norm"]["dims"]["cls"] == 48 and rows["norm"]["dims"]["avg"] == 48
    assert rows["norm"]["dims"]["none"] == (5 + 16) * 48
    assert main(["layers", str(folders["dinov2"])]) == 0
    out = capsys.readouterr().out
    assert "class/register tokens" in out and "clsavg" in out


def test_channels_last_models_pool_like_feature_maps():
    """timm's NHWC models (Swin): stage outputs are N x H x W x C; deepfeat records C x H x W and permutes in the tap."""
    bb = load_backbone("timm:swin_tiny_patch4_window7_224", "random", input_size=112)
    infos = describe_layers(bb)
    assert infos["norm"].channels_last and infos["norm"].shape[0] == 768
    assert not infos["patch_embed.proj"].channels_last  # a convolution is channels-first
    pixels = _pixels(bb)
    x = _reference_input(bb, pixels)
    with torch.no_grad():
        ff = bb.model.forward_features(x)  # N x H x W x C
        ref_pre = bb.model.forward_head(ff, pre_logits=True)
    feats = _features(bb, "norm,pre_logits", "norm=avg,pre_logits=avg", pixels, infos=infos)
    _close(feats["norm"], ff.mean((1, 2)))
    _close(feats["pre_logits"], ref_pre)
    flat = _features(bb, "norm", "none", pixels, infos=infos)["norm"]
    _close(flat, ff.permute(0, 3, 1, 2).reshape(len(ff), -1))  # channel-major, as for any feature map


def test_model_folders_take_an_input_size_like_names(folders, tmp_path):
    """A bundle reloads its backbone with its recorded input size: a ViT folder is rebuilt for it (timm resamples
    the position embeddings), a CNN folder just runs at it."""
    import timm
    from timm.models import save_for_hf

    vit = load_backbone(str(folders["dinov2"]), input_size=28)
    assert describe_layers(vit)["norm"].shape == (5 + 4, 48)  # 2x2 patches of 14 px + 5 prefix tokens
    save_for_hf(timm.create_model("test_resnet", pretrained=False), tmp_path / "cnn", safe_serialization=True)
    for size in (None, 96):
        cnn = load_backbone(str(tmp_path / "cnn"), input_size=size)
        assert cnn.family == "hf" and cnn.weights.endswith("model.safetensors")
        assert cnn.preprocess.input_size == ((96, 96) if size else (160, 160))


def test_a_weights_file_loads_at_another_input_size_and_a_wrong_one_is_a_usage_error(tmp_path):
    """--weights PATH with --input-size on a ViT: timm's checkpoint filter resamples the position embeddings
    (what a bundle does when it reloads a downloaded ViT); another architecture's file is a clear error."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = timm.create_model("test_vit", pretrained=False)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    bb = load_backbone("test_vit", str(path), input_size=64)
    assert bb.model.pos_embed.shape == (1, 1 + 16, 64) and bb.weights_origin == "file"
    assert torch.equal(bb.model.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.weight)
    with pytest.raises(UsageError, match="do not fit the model: missing keys"):
        load_backbone("timm:test_resnet", str(path))

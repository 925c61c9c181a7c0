"""tools/convert_checkpoint.py: fake checkpoints in the official formats load completely."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from rvos_d2.modeling.backbone import D2SwinTransformer, VideoSwinTransformer

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone

_SPEC = importlib.util.spec_from_file_location(
    "convert_checkpoint", Path(__file__).parents[1] / "tools" / "convert_checkpoint.py"
)
convert_checkpoint = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(convert_checkpoint)

SWIN_ARGS = dict(embed_dim=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])


class Holder(nn.Module):
    """A stand-in meta-architecture: the backbone under the attribute `backbone`."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


def _convert_file(tmp_path, checkpoint, fmt="auto"):
    src, dst = tmp_path / "source.pth", tmp_path / "converted.pth"
    torch.save(checkpoint, src)
    convert_checkpoint.main([str(src), str(dst), "--format", fmt])
    return dst


def _load_strict(backbone, dst, allowed_missing=()):
    """Loads a converted file with detectron2's checkpointer; returns the converted weights."""
    converted = torch.load(dst, weights_only=True)
    assert converted["matching_heuristics"] and "__author__" in converted
    weights = {k[len("backbone.") :]: v for k, v in converted["model"].items()}
    result = backbone.load_state_dict(weights, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(allowed_missing)
    holder = Holder(backbone)
    for p in holder.parameters():
        nn.init.constant_(p, 0.123)
    DetectionCheckpointer(holder).load(str(dst))
    state = backbone.state_dict()
    for key, value in weights.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    return weights


def _d2_resnet(cfg, depth):
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth < 50 else 256
    cfg.MODEL.RESNETS.STRIDE_IN_1X1 = False  # torchvision puts the stride in the 3x3 conv
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    return build_backbone(cfg, ShapeSpec(channels=3)).eval()


def _torchvision_features(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = {}
    for i in range(1, 5):
        x = getattr(model, f"layer{i}")(x)
        feats[f"res{i + 1}"] = x
    return feats


@pytest.mark.parametrize("depth", [18, 50])
def test_torchvision_resnet_converts_and_computes_the_same(tmp_path, rvos_cfg, depth):
    torch.manual_seed(0)
    tv = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    for m in tv.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
            nn.init.uniform_(m.running_var, 0.5, 1.5)
    dst = _convert_file(tmp_path, tv.state_dict())
    backbone = _d2_resnet(rvos_cfg, depth)
    weights = _load_strict(backbone, dst)
    assert not any("fc" in k or "num_batches_tracked" in k for k in weights)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = _torchvision_features(tv, x), backbone(x)
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], atol=1e-4, rtol=1e-4)


def test_timm_style_wrapped_resnet(tmp_path, rvos_cfg):
    tv = torchvision.models.resnet18(weights=None)
    wrapped = {"state_dict": {"module." + k: v for k, v in tv.state_dict().items()}, "epoch": 3}
    _load_strict(_d2_resnet(rvos_cfg, 18), _convert_file(tmp_path, wrapped, "resnet"))


def test_deep_stem_resnet_is_refused():
    weights = {"conv1.0.weight": torch.zeros(1), "layer1.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(convert_checkpoint.CheckpointFormatError, match="deep"):
        convert_checkpoint.convert(weights)


def _official_swin_state(model, extra_buffers=True):
    """Classification-style names: one final `norm` (the res5 norm), a head, stored buffers."""
    state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("norm")}
    state["norm.weight"] = model.norm3.weight.detach().clone()
    state["norm.bias"] = model.norm3.bias.detach().clone()
    state["head.weight"], state["head.bias"] = torch.randn(10, 128), torch.randn(10)
    if extra_buffers:
        for i, layer in enumerate(model.layers):
            for j, _ in enumerate(layer.blocks):
                n = 49 if isinstance(model, D2SwinTransformer) else 98
                state[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = torch.zeros(n, n)
            state[f"layers.{i}.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    return state


def _randomized(model):
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_official_swin(tmp_path):
    torch.manual_seed(0)
    source = _randomized(D2SwinTransformer(window_size=7, **SWIN_ARGS))
    dst = _convert_file(tmp_path, {"model": _official_swin_state(source)})
    target = D2SwinTransformer(window_size=7, **SWIN_ARGS)
    missing = [f"norm{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    _load_strict(target, dst, allowed_missing=missing)
    for key, value in source.state_dict().items():
        if not key.startswith(("norm0", "norm1", "norm2")):
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_timm_swin_moves_patch_merging_back(tmp_path):
    torch.manual_seed(0)
    source = _randomized(D2SwinTransformer(window_size=7, **SWIN_ARGS))
    state = {}
    for key, value in _official_swin_state(source).items():
        if ".downsample." in key:
            i = int(key.split(".")[1])
            key = key.replace(f"layers.{i}.", f"layers.{i + 1}.", 1)
        state[key.replace("head.", "head.fc.")] = value
    target = D2SwinTransformer(window_size=7, **SWIN_ARGS)
    missing = [f"norm{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    _load_strict(target, _convert_file(tmp_path, state), allowed_missing=missing)
    for key, value in source.state_dict().items():
        if not key.startswith(("norm0", "norm1", "norm2")):
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_swin_detection_backbone_loads_completely(tmp_path):
    source = _randomized(D2SwinTransformer(window_size=7, **SWIN_ARGS))
    state = {"backbone." + k: v for k, v in source.state_dict().items()}
    state["neck.fpn.weight"] = torch.zeros(3)
    target = D2SwinTransformer(window_size=7, **SWIN_ARGS)
    _load_strict(target, _convert_file(tmp_path, {"state_dict": state, "meta": {"epoch": 1}}))
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_video_swin_kinetics(tmp_path):
    torch.manual_seed(0)
    source = _randomized(VideoSwinTransformer(window_size=(2, 7, 7), **SWIN_ARGS))
    state = _official_swin_state(source)
    embed = state["patch_embed.proj.weight"]  # C x 3 x 1 x 4 x 4
    first = torch.randn_like(embed)
    state["patch_embed.proj.weight"] = torch.cat([first, embed - first], dim=2)  # t = 2
    kinetics = {"backbone." + k: v for k, v in state.items() if not k.startswith("head.")}
    kinetics["cls_head.fc_cls.weight"] = torch.randn(400, 128)
    kinetics["cls_head.fc_cls.bias"] = torch.randn(400)
    dst = _convert_file(tmp_path, {"state_dict": kinetics, "meta": {"config": "k400"}})
    target = VideoSwinTransformer(window_size=(2, 7, 7), **SWIN_ARGS)
    missing = [f"norm{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    weights = _load_strict(target, dst, allowed_missing=missing)
    torch.testing.assert_close(weights["patch_embed.proj.weight"], embed, atol=1e-6, rtol=1e-6)
    for key, value in source.state_dict().items():
        if not key.startswith(("norm0", "norm1", "norm2", "patch_embed.proj.weight")):
            torch.testing.assert_close(target.state_dict()[key], value, rtol=0, atol=0)


def test_unknown_and_unsafe_files_fail_clearly(tmp_path):
    with pytest.raises(convert_checkpoint.CheckpointFormatError, match="unknown checkpoint"):
        convert_checkpoint.convert({"encoder.weight": torch.zeros(2)})
    already = tmp_path / "d2.pth"
    torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}}, already)
    with pytest.raises(convert_checkpoint.CheckpointFormatError, match="already"):
        convert_checkpoint.convert(convert_checkpoint.load_state_dict(str(already)))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": Holder(nn.Linear(1, 1))}, unsafe)
    with pytest.raises(convert_checkpoint.CheckpointFormatError, match="weights_only"):
        convert_checkpoint.load_state_dict(str(unsafe))
    with pytest.raises(SystemExit):
        convert_checkpoint.main([str(unsafe), str(tmp_path / "out.pth")])
    with pytest.raises(SystemExit):
        convert_checkpoint.main([str(already), str(tmp_path / "out.pkl")])


def test_formats_are_registered_and_an_unknown_one_lists_them():
    from rvos_d2.modeling.converters import CHECKPOINT_FORMAT_REGISTRY

    names = set(CHECKPOINT_FORMAT_REGISTRY.names())
    assert {"resnet", "swin", "video_swin", "stcn", "soc", "referformer"} <= names
    with pytest.raises(convert_checkpoint.CheckpointFormatError, match="referformer.*resnet"):
        convert_checkpoint.convert({"conv1.weight": torch.zeros(1)}, "nope")

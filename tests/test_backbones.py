"""Registered backbones: output shapes match output_shape(), configs build, temporal mixing."""

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone


@pytest.fixture
def tiny_cfg(rvos_cfg):
    """The default config with an 8-wide TinyConvBackbone."""
    rvos_cfg.MODEL.BACKBONE.NAME = "build_tiny_backbone"
    rvos_cfg.MODEL.TINY_BACKBONE.WIDTH = 8
    return rvos_cfg


def _check_outputs(backbone, outputs, n, height, width):
    shapes = backbone.output_shape()
    assert set(outputs) == set(shapes)
    for name, spec in shapes.items():
        expected = (n, spec.channels, -(-height // spec.stride), -(-width // spec.stride))
        assert tuple(outputs[name].shape) == expected, name


def test_tiny_backbone_shapes(tiny_cfg):
    backbone = build_backbone(tiny_cfg)
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {
        "res2": 4,
        "res3": 8,
        "res4": 16,
        "res5": 32,
    }
    assert [v.channels for v in backbone.output_shape().values()] == [8, 16, 32, 64]
    _check_outputs(backbone, backbone(torch.randn(2, 3, 64, 96)), 2, 64, 96)
    _check_outputs(backbone, backbone(torch.randn(1, 3, 50, 70)), 1, 50, 70)


def test_tiny_backbone_subset_of_features(rvos_cfg):
    rvos_cfg.MODEL.BACKBONE.NAME = "build_tiny_backbone"
    rvos_cfg.MODEL.TINY_BACKBONE.OUT_FEATURES = ["res3", "res4"]
    backbone = build_backbone(rvos_cfg)
    assert not hasattr(backbone, "res5")
    _check_outputs(backbone, backbone(torch.randn(1, 3, 64, 64)), 1, 64, 64)
    rvos_cfg.MODEL.TINY_BACKBONE.OUT_FEATURES = ["res6"]
    with pytest.raises(ValueError, match="OUT_FEATURES"):
        build_backbone(rvos_cfg)


def test_frozen_tiny_backbone_trains_no_weight(tiny_cfg):
    tiny_cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = ["res2"]
    tiny_cfg.MODEL.TINY_BACKBONE.FREEZE = True
    backbone = build_backbone(tiny_cfg).train()
    assert not any(p.requires_grad for p in backbone.parameters())
    outputs = backbone(torch.randn(2, 3, 3, 32, 32))
    assert not any(o.requires_grad for o in outputs.values())  # nothing to backpropagate into
    tiny_cfg.MODEL.TINY_BACKBONE.FREEZE = False
    assert all(p.requires_grad for p in build_backbone(tiny_cfg).parameters())


def test_tiny_video_backbone_mixes_frames(tiny_cfg):
    tiny_cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = ["res4", "res5"]
    backbone = build_backbone(tiny_cfg).eval()
    assert backbone.is_video
    clips = torch.randn(2, 3, 3, 64, 64)  # B x T x 3 x H x W
    with torch.no_grad():
        before = backbone(clips)
        _check_outputs(backbone, before, 6, 64, 64)
        for block in backbone.temporal.values():  # zero-initialised branch: starts per frame
            torch.nn.init.ones_(block.norm.weight)
        changed = clips.clone()
        changed[0, 2] = torch.randn(3, 64, 64)
        after_a, after_b = backbone(clips), backbone(changed)
    # frame 1 of clip 0 sees its neighbour frame 2 through res4's temporal conv, not before it
    torch.testing.assert_close(after_a["res3"][1], after_b["res3"][1])
    assert not torch.allclose(after_a["res4"][1], after_b["res4"][1])
    # frames of the other clip are untouched
    torch.testing.assert_close(after_a["res5"][3:], after_b["res5"][3:])
    with pytest.raises(ValueError, match="B x T x 3 x H x W"):
        backbone(torch.randn(2, 3, 64, 64))
    tiny_cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = ["res7"]
    with pytest.raises(ValueError, match="TEMPORAL_STAGES"):
        build_backbone(tiny_cfg)


@pytest.mark.parametrize("norm", ["BN", "GN", "", "FrozenBN"])
def test_tiny_video_backbone_starts_as_frame_backbone(tiny_cfg, norm):
    tiny_cfg.MODEL.TINY_BACKBONE.NORM = norm
    tiny_cfg.MODEL.TINY_BACKBONE.WIDTH = 32 if norm == "GN" else 8  # GN: 32 groups
    torch.manual_seed(0)
    frame_backbone = build_backbone(tiny_cfg).eval()
    tiny_cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = ["res3", "res4", "res5"]
    video_backbone = build_backbone(tiny_cfg).eval()
    missing = video_backbone.load_state_dict(frame_backbone.state_dict(), strict=False)
    assert all(k.startswith("temporal.") for k in missing.missing_keys)
    expected_norm = {"BN": torch.nn.BatchNorm2d, "GN": torch.nn.GroupNorm}.get(norm, type(None))
    assert all(isinstance(b.norm, expected_norm) for b in video_backbone.temporal.values())
    clips = torch.randn(1, 4, 3, 64, 64)
    with torch.no_grad():
        video, frames = video_backbone(clips), frame_backbone(clips[0])
    for name in frames:
        torch.testing.assert_close(video[name], frames[name])
    # the zero branch still learns: its parameters get gradients from the first step
    video_backbone.train()
    sum(v.square().sum() for v in video_backbone(clips).values()).backward()
    for block in video_backbone.temporal.values():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())


def test_resnet50_builds(rvos_cfg):
    rvos_cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    rvos_cfg.MODEL.RESNETS.DEPTH = 50
    rvos_cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    backbone = build_backbone(rvos_cfg, ShapeSpec(channels=3))
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "res2": (256, 4),
        "res3": (512, 8),
        "res4": (1024, 16),
        "res5": (2048, 32),
    }
    learned = {k: v for k, v in backbone.state_dict().items() if "running_" not in k}
    assert sum(v.numel() for v in learned.values()) == 23_508_032  # torchvision's, without fc
    with torch.no_grad():
        _check_outputs(backbone, backbone(torch.randn(1, 3, 64, 96)), 1, 64, 96)


SMALL_SWIN = dict(EMBED_DIM=16, DEPTHS=[1, 2, 1, 2], NUM_HEADS=[1, 2, 2, 4])


def _small_swin(cfg, key="SWIN", **overrides):
    """A reduced Swin ("SWIN") or Video Swin ("VIDEO_SWIN") from the config, in eval mode."""
    video = key == "VIDEO_SWIN"
    cfg.MODEL.BACKBONE.NAME = "build_video_swin_backbone" if video else "build_swin_backbone"
    window = {"WINDOW_SIZE": [2, 4, 4] if video else 4}
    for name, value in {**SMALL_SWIN, **window, **overrides}.items():
        setattr(getattr(cfg.MODEL, key), name, value)
    return build_backbone(cfg).eval()


@pytest.mark.parametrize("size", [(64, 64), (50, 75), (20, 36)])
def test_swin_shapes_any_input_size(rvos_cfg, size):
    backbone = _small_swin(rvos_cfg)
    assert not getattr(backbone, "is_video", False)
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == {
        "res2": (16, 4),
        "res3": (32, 8),
        "res4": (64, 16),
        "res5": (128, 32),
    }
    with torch.no_grad():
        _check_outputs(backbone, backbone(torch.randn(2, 3, *size)), 2, *size)


@pytest.mark.parametrize("frames,size", [(3, (64, 64)), (1, (45, 70)), (6, (36, 28))])
def test_video_swin_shapes_any_clip(rvos_cfg, frames, size):
    backbone = _small_swin(rvos_cfg, "VIDEO_SWIN", WINDOW_SIZE=[4, 4, 4])
    assert backbone.is_video
    with torch.no_grad():
        _check_outputs(backbone, backbone(torch.randn(2, frames, 3, *size)), 2 * frames, *size)


def test_swin_subset_of_features_builds_only_needed_stages(rvos_cfg):
    backbone = _small_swin(rvos_cfg, "VIDEO_SWIN", OUT_FEATURES=["res3", "res4"])
    assert len(backbone.layers) == 3 and backbone.layers[2].downsample is None
    assert not hasattr(backbone, "norm0") and hasattr(backbone, "norm2")
    with torch.no_grad():
        _check_outputs(backbone, backbone(torch.randn(1, 2, 3, 40, 40)), 2, 40, 40)


def test_video_swin_mixes_time_and_2d_swin_does_not(rvos_cfg):
    video = _small_swin(rvos_cfg, "VIDEO_SWIN", WINDOW_SIZE=[2, 4, 4])
    image = _small_swin(rvos_cfg)
    clip = torch.randn(1, 3, 3, 32, 32)
    changed = clip.clone()
    changed[:, 0] += 1.0
    with torch.no_grad():
        before, after = video(clip)["res3"], video(changed)["res3"]  # (B*T) x C x h x w
        assert not torch.allclose(before[1], after[1], atol=1e-4)
        before, after = image(clip[0])["res3"], image(changed[0])["res3"]
        assert not torch.allclose(before[0], after[0], atol=1e-4)
        torch.testing.assert_close(before[1:], after[1:])


def test_swin_gradients_and_activation_checkpointing(rvos_cfg):
    torch.manual_seed(0)
    plain = _small_swin(rvos_cfg, DROP_PATH_RATE=0.0).train()
    rvos_cfg.MODEL.SWIN.USE_CHECKPOINT = True
    ckpt = _small_swin(rvos_cfg, DROP_PATH_RATE=0.0).train()
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 40, 40)
    for model in (plain, ckpt):
        sum(f.square().mean() for f in model(x).values()).backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)


def _reference_swin_block(block, x):
    """Brute force: each token attends to the tokens of its window in original coordinates,
    windows starting at `shift` and cut (not wrapped) at the map borders; windows larger than
    the map along a dimension cover all of it and are not shifted."""
    b, d, h, w, c = x.shape
    size = torch.tensor([d, h, w])
    window, shift = torch.tensor(block.window), torch.tensor(block.shift)
    shift = torch.where(size <= window, 0, shift)
    window = torch.minimum(window, size)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in (d, h, w)], indexing="ij"))
    coords = coords.flatten(1).T  # P x 3
    group = torch.div(coords - shift, window, rounding_mode="floor")
    allowed = (group[:, None] == group[None]).all(-1)
    offset = coords[:, None] - coords[None]  # P x P x 3
    tw = block.attn.window
    index = (
        ((offset[..., 0] + tw[0] - 1) * (2 * tw[1] - 1) + offset[..., 1] + tw[1] - 1)
        * (2 * tw[2] - 1)
        + offset[..., 2]
        + tw[2]
        - 1
    )
    table = block.attn.relative_position_bias_table
    bias = table[torch.where(allowed, index, 0)].permute(2, 0, 1)  # heads x P x P
    heads = block.attn.num_heads
    qkv = block.attn.qkv(block.norm1(x).view(b, -1, c)).view(b, -1, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each b x heads x P x head_dim
    logits = q @ k.transpose(-1, -2) / (c // heads) ** 0.5 + bias
    attn = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
    y = block.attn.proj((attn @ v).transpose(1, 2).reshape(b, -1, c)).view(b, d, h, w, c)
    x = x + y
    return x + block.mlp(block.norm2(x))


@pytest.mark.parametrize(
    "shift,size",
    [
        ((0, 0, 0), (4, 8, 8)),
        ((0, 0, 0), (3, 9, 10)),
        ((1, 2, 2), (4, 8, 12)),
        ((1, 2, 2), (3, 9, 10)),
        ((1, 2, 2), (2, 3, 10)),
    ],
)
def test_swin_block_matches_brute_force_windows(shift, size):
    from rvos_d2.modeling.backbone.swin_layers import SwinBlock

    torch.manual_seed(0)
    block = SwinBlock(8, 2, (2, 4, 4), shift, mlp_ratio=2.0, qkv_bias=True, drop_path=0.0)
    nn_init = torch.nn.init
    nn_init.normal_(block.attn.relative_position_bias_table, std=1.0)
    x = torch.randn(2, *size, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_swin_block(block, x), atol=1e-5, rtol=1e-4)


def _swin_param_count(embed_dim, depths, heads, window, patch_volume, head_classes=0):
    """Parameter count from the architecture description (out norms on all four stages, or the
    single final norm plus a classifier when head_classes > 0)."""
    total = 3 * patch_volume * embed_dim + embed_dim + 2 * embed_dim  # patch embedding + its norm
    table = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
    for i, (depth, h) in enumerate(zip(depths, heads)):
        c = embed_dim * 2**i
        block = 2 * c + (3 * c * c + 3 * c) + table * h + (c * c + c) + 2 * c
        block += (4 * c * c + 4 * c) + (4 * c * c + c)
        total += depth * block
        if i < 3:
            total += 2 * 4 * c + 4 * c * 2 * c  # patch merging: norm + reduction
    c_last = embed_dim * 8
    if head_classes:
        return total + 2 * c_last + c_last * head_classes + head_classes
    return total + sum(2 * embed_dim * 2**i for i in range(4))


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_swin_t_formula_matches_published_count():
    # Swin-T ImageNet-1k classifier: 28,288,354 parameters (the reference implementation's count).
    assert _swin_param_count(96, [2, 2, 6, 2], [3, 6, 12, 24], (1, 7, 7), 16, 1000) == 28_288_354


@pytest.mark.parametrize(
    "key,dim,depths,heads,window",
    [
        ("SWIN", 96, [2, 2, 6, 2], [3, 6, 12, 24], 7),  # Swin-T
        ("SWIN", 192, [2, 2, 18, 2], [6, 12, 24, 48], 12),  # Swin-L (384 px)
        ("VIDEO_SWIN", 96, [2, 2, 6, 2], [3, 6, 12, 24], [8, 7, 7]),  # Video-Swin-T
        ("VIDEO_SWIN", 128, [2, 2, 18, 2], [4, 8, 16, 32], [8, 7, 7]),  # Video-Swin-B
    ],
)
def test_full_size_swin_configs_parameter_counts(rvos_cfg, key, dim, depths, heads, window):
    node = getattr(rvos_cfg.MODEL, key)
    node.EMBED_DIM, node.DEPTHS, node.NUM_HEADS, node.WINDOW_SIZE = dim, depths, heads, window
    rvos_cfg.MODEL.BACKBONE.NAME = (
        "build_swin_backbone" if key == "SWIN" else "build_video_swin_backbone"
    )
    with torch.device("meta"):
        backbone = build_backbone(rvos_cfg)
    window3 = (1, window, window) if key == "SWIN" else tuple(window)
    assert _count(backbone) == _swin_param_count(dim, depths, heads, window3, 16)

"""Registered backbones: output shapes match output_shape(), configs build, temporal mixing."""

import time

import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone


def _check_outputs(backbone, outputs, n, height, width):
    shapes = backbone.output_shape()
    assert set(outputs) == set(shapes)
    for name, spec in shapes.items():
        expected = (n, spec.channels, -(-height // spec.stride), -(-width // spec.stride))
        assert tuple(outputs[name].shape) == expected, name


def test_tiny_backbone_shapes(rvos_cfg):
    rvos_cfg.MODEL.BACKBONE.NAME = "build_tiny_backbone"
    rvos_cfg.MODEL.TINY_BACKBONE.WIDTH = 8
    backbone = build_backbone(rvos_cfg)
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


def test_tiny_backbone_is_fast(rvos_cfg):
    rvos_cfg.MODEL.BACKBONE.NAME = "build_tiny_backbone"
    backbone = build_backbone(rvos_cfg)
    x = torch.randn(10, 3, 96, 96)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        sum(f.mean() for f in backbone(x).values()).backward()
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.25  # about 15 ms on 2 CPU cores


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

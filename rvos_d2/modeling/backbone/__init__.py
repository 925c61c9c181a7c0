"""Backbones registered in detectron2's BACKBONE_REGISTRY (ResNet comes from detectron2 itself)."""

from rvos_d2.modeling.backbone.swin import D2SwinTransformer, build_swin_backbone
from rvos_d2.modeling.backbone.tiny import TinyConvBackbone, build_tiny_backbone
from rvos_d2.modeling.backbone.video_swin import VideoSwinTransformer, build_video_swin_backbone

__all__ = [
    "D2SwinTransformer",
    "TinyConvBackbone",
    "VideoSwinTransformer",
    "build_swin_backbone",
    "build_tiny_backbone",
    "build_video_swin_backbone",
]

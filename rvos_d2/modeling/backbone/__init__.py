"""Backbones registered in detectron2's BACKBONE_REGISTRY (ResNet comes from detectron2 itself)."""

from rvos_d2.modeling.backbone.tiny import TinyConvBackbone, build_tiny_backbone

__all__ = ["TinyConvBackbone", "build_tiny_backbone"]

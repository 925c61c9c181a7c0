"""Registries of the swappable model parts; each is selected by name in the config.

Meta-architectures receive these parts already built (as detectron2's GeneralizedRCNN receives
its backbone and heads), so a method is a composition of registered parts plus its own logic.
"""

from __future__ import annotations

from detectron2.utils.registry import Registry

TEXT_ENCODER_REGISTRY = Registry("TEXT_ENCODER")
TEXT_ENCODER_REGISTRY.__doc__ = """Language encoders: expressions -> word features, padding mask,
sentence feature (MODEL.TEXT_ENCODER.TYPE)."""

VL_ENCODER_REGISTRY = Registry("VL_ENCODER")
VL_ENCODER_REGISTRY.__doc__ = """Vision-language encoders: backbone maps + text -> fused
multi-scale memory (MODEL.VL_ENCODER.NAME)."""

QUERY_DECODER_REGISTRY = Registry("QUERY_DECODER")
QUERY_DECODER_REGISTRY.__doc__ = """Query decoders: encoder memory + text -> per-layer query
states, boxes and class logits (MODEL.QUERY_DECODER.NAME)."""

MASK_BRANCH_REGISTRY = Registry("MASK_BRANCH")
MASK_BRANCH_REGISTRY.__doc__ = """Mask branches: multi-scale features + query states -> mask
logits (MODEL.MASK_BRANCH.NAME)."""

PROPAGATION_REGISTRY = Registry("PROPAGATION")
PROPAGATION_REGISTRY.__doc__ = """Mask propagation networks used as post-processing
(TEST.PROPAGATION.NAME)."""

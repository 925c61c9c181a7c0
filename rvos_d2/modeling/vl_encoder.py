"""Vision-language encoders: backbone maps + expression -> fused multi-scale encoder memory."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rvos_d2.modeling.heads.input_projection import MultiScaleProjection
from rvos_d2.modeling.heads.vision_language_fpn import sine_text_position
from rvos_d2.modeling.heads.vl_fusion import TextCrossAttention
from rvos_d2.modeling.registry import VL_ENCODER_REGISTRY
from rvos_d2.modeling.transformer import DeformableTransformerEncoder, PositionEmbeddingSine
from rvos_d2.modeling.utils import resize_mask

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

__all__ = [
    "add_vl_encoder_config",
    "DeformableVLEncoder",
    "build_vl_encoder",
    "check_features",
    "memory_maps",
]


def build_vl_encoder(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The encoder named by MODEL.VL_ENCODER.NAME over the backbone maps `input_shape`."""
    return VL_ENCODER_REGISTRY.get(cfg.MODEL.VL_ENCODER.NAME)(cfg, input_shape)


def check_features(input_shape: dict[str, ShapeSpec], names: list[str], key: str) -> None:
    """Raises a ValueError naming the config key when the backbone lacks a requested map."""
    missing = [n for n in names if n not in input_shape]
    if missing:
        given = {n: s.stride for n, s in input_shape.items()}
        raise ValueError(f"{key} asks for {missing}; the backbone gives (name: stride) {given}")


@VL_ENCODER_REGISTRY.register()
class DeformableVLEncoder(nn.Module):
    """ReferFormer's encoder side: per-level projection (plus extra stride-2 levels), early
    vision-language fusion, sine position encoding and the deformable encoder.

    Early fusion: each projected map is multiplied element-wise by the word features that each
    of its positions attends to (cross-attention from pixels to the expression's words; with
    `text_position` the keys carry the words' 1-D sine positions, as in the published model).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        in_channels: list[int],
        encoder: DeformableTransformerEncoder,
        num_heads: int,
        text_position: bool = False,
    ):
        super().__init__()
        hidden = encoder.d_model
        self.in_features = in_features
        self.input_proj = MultiScaleProjection(in_channels, hidden, encoder.n_levels)
        self.early_fusion = TextCrossAttention(hidden, num_heads)
        self.text_position = text_position
        self.position = PositionEmbeddingSine(hidden // 2, normalize=True)
        self.encoder = encoder

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        names = list(cfg.MODEL.VL_ENCODER.IN_FEATURES)
        check_features(input_shape, names, "MODEL.VL_ENCODER.IN_FEATURES")
        return {
            "in_features": names,
            "in_channels": [input_shape[n].channels for n in names],
            "encoder": DeformableTransformerEncoder(cfg),
            "num_heads": cfg.MODEL.DEFORMABLE_TRANSFORMER.NHEADS,
            "text_position": cfg.MODEL.VL_ENCODER.TEXT_POSITION,
        }

    def forward(
        self, features: dict[str, Tensor], padding: Tensor, words: Tensor, word_mask: Tensor
    ) -> dict[str, Any]:
        """features: backbone maps of F frames; padding F x H x W (True = padding); words
        F x L x C with word_mask F x L. Returns the encoder's outputs (memory, spatial_shapes,
        level_start_index, valid_ratios, mask_flatten) plus "pos" and "masks": per level the
        position encodings and padding masks of the projected maps."""
        srcs = self.input_proj([features[n] for n in self.in_features])
        masks = [resize_mask(padding, s.shape[-2:]) for s in srcs]
        pos = [self.position(s, m) for s, m in zip(srcs, masks)]
        word_pos = None
        if self.text_position:
            word_pos = sine_text_position(word_mask, words.shape[-1]).to(words.dtype)
        srcs = [self._fuse_early(s, words, word_mask, word_pos) for s in srcs]
        return {**self.encoder(srcs, masks, pos), "pos": pos, "masks": masks}

    def _fuse_early(
        self, src: Tensor, words: Tensor, word_mask: Tensor, word_pos: Tensor | None
    ) -> Tensor:
        flat = src.flatten(2).transpose(1, 2)
        fused = flat * self.early_fusion(flat, words, word_mask, word_pos=word_pos)
        return fused.transpose(1, 2).reshape(src.shape)


def memory_maps(enc: dict[str, Tensor], num_levels: int) -> list[Tensor]:
    """The encoder memory of the first `num_levels` levels as F x C x h x w maps."""
    memory = enc["memory"]
    maps = []
    for (h, w), start in zip(enc["spatial_shapes"].tolist(), enc["level_start_index"].tolist()):
        level = memory[:, start : start + h * w]
        maps.append(level.transpose(1, 2).reshape(memory.shape[0], -1, h, w))
    return maps[:num_levels]


def add_vl_encoder_config(cfg: CfgNode) -> None:
    """Vision-language encoder part (MODEL.VL_ENCODER)."""
    cfg.MODEL.VL_ENCODER = CfgNode()
    cfg.MODEL.VL_ENCODER.NAME = "DeformableVLEncoder"  # class in VL_ENCODER_REGISTRY
    # backbone maps fed to the encoder, fine to coarse; extra stride-2 levels are added on top up
    # to MODEL.DEFORMABLE_TRANSFORMER.NUM_FEATURE_LEVELS
    cfg.MODEL.VL_ENCODER.IN_FEATURES = ["res3", "res4", "res5"]
    # early-fusion keys carry the words' 1-D sine positions (the published model)
    cfg.MODEL.VL_ENCODER.TEXT_POSITION = False

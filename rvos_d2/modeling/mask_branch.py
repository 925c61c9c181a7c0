"""Mask branches: multi-scale features + query states -> per-query mask logits."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rvos_d2.modeling.heads.cross_modal_fpn import CrossModalFPN
from rvos_d2.modeling.heads.dynamic_mask_head import DynamicMaskHead
from rvos_d2.modeling.heads.vision_language_fpn import VisionLanguageFPN
from rvos_d2.modeling.registry import MASK_BRANCH_REGISTRY
from rvos_d2.modeling.vl_encoder import check_features

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

__all__ = ["add_mask_branch_config", "CrossModalMaskBranch", "build_mask_branch"]

FPNS = ("CrossModal", "VisionLanguage")


def build_mask_branch(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """The branch named by MODEL.MASK_BRANCH.NAME over the backbone maps `input_shape`."""
    return MASK_BRANCH_REGISTRY.get(cfg.MODEL.MASK_BRANCH.NAME)(cfg, input_shape)


@MASK_BRANCH_REGISTRY.register()
class CrossModalMaskBranch(nn.Module):
    """ReferFormer's mask branch: a cross-modal FPN fuses the backbone's finest map with the
    encoder memory of the first `num_memory_levels` levels into mask features at the finest
    map's stride; a dynamic mask head turns each query into a tiny conv net over them.

    FPN "CrossModal": each level attends to the words (CrossModalFPN). "VisionLanguage" (the
    published model): each level is a vision-language block over all positions of the clip
    (VisionLanguageFPN, spatial reductions `fpn_reductions`, GroupNorm of `fpn_norm_groups`).
    """

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        stride: int,
        hidden_dim: int,
        num_memory_levels: int,
        fpn_dim: int,
        mask_dim: int,
        num_heads: int,
        dynamic_conv_channels: int,
        fpn: str = "CrossModal",
        fpn_reductions: tuple[int, ...] = (8, 4, 2, 1),
        fpn_norm_groups: int = 8,
        fpn_feedforward: int = 2048,
        fpn_dropout: float = 0.1,
        pixel_coordinates: bool = False,
    ):
        super().__init__()
        if fpn not in FPNS:
            raise ValueError(f"MODEL.MASK_BRANCH.FPN={fpn!r}: expected one of {FPNS}")
        self.in_feature, self.stride = in_feature, stride
        self.num_memory_levels = num_memory_levels
        in_channels_list = [in_channels] + [hidden_dim] * num_memory_levels
        self.clip_fpn = fpn == "VisionLanguage"
        if self.clip_fpn:
            self.fpn = VisionLanguageFPN(
                in_channels_list,
                fpn_dim,
                mask_dim,
                num_heads,
                fpn_feedforward,
                fpn_dropout,
                list(fpn_reductions),
                fpn_norm_groups,
                text_dim=hidden_dim,
            )
        else:
            self.fpn = CrossModalFPN(
                in_channels_list, fpn_dim, mask_dim, num_heads, text_dim=hidden_dim
            )
        self.head = DynamicMaskHead(
            hidden_dim, mask_dim, dynamic_conv_channels, pixel_coordinates=pixel_coordinates
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        mb, t = cfg.MODEL.MASK_BRANCH, cfg.MODEL.DEFORMABLE_TRANSFORMER
        check_features(input_shape, [mb.IN_FEATURE], "MODEL.MASK_BRANCH.IN_FEATURE")
        return {
            "in_feature": mb.IN_FEATURE,
            "in_channels": input_shape[mb.IN_FEATURE].channels,
            "stride": input_shape[mb.IN_FEATURE].stride,
            "hidden_dim": t.HIDDEN_DIM,
            "num_memory_levels": len(cfg.MODEL.VL_ENCODER.IN_FEATURES),
            "fpn_dim": mb.FPN_DIM,
            "mask_dim": mb.MASK_DIM,
            "num_heads": t.NHEADS,
            "dynamic_conv_channels": mb.DYNAMIC_CONV_CHANNELS,
            "fpn": mb.FPN,
            "fpn_reductions": tuple(mb.FPN_REDUCTIONS),
            "fpn_norm_groups": mb.FPN_NORM_GROUPS,
            "fpn_feedforward": t.DIM_FEEDFORWARD,
            "fpn_dropout": t.DROPOUT,
            "pixel_coordinates": mb.PIXEL_COORDINATES,
        }

    def mask_features(
        self,
        finest: Tensor,
        finest_padding: Tensor,
        memory_maps: list[Tensor],
        memory_masks: list[Tensor],
        words: Tensor,
        word_mask: Tensor,
        num_frames: int,
    ) -> Tensor:
        """F x mask_dim x h x w features at `stride` from the backbone's `in_feature` map (with
        its padding mask) and fine-to-coarse encoder memory maps (with theirs); words F x L x C
        (word_mask F x L) repeat each clip's expression for its `num_frames` frames."""
        features = [finest, *memory_maps[: self.num_memory_levels]]
        masks = [finest_padding, *memory_masks[: self.num_memory_levels]]
        if self.clip_fpn:
            clip_words, clip_mask = words[::num_frames], word_mask[::num_frames]
            return self.fpn(features, masks, clip_words, clip_mask, num_frames)
        return self.fpn(features, masks, words, word_mask)

    def forward(
        self, queries: Tensor, centres: Tensor, mask_features: Tensor, image_sizes: Tensor
    ) -> Tensor:
        """queries F x N x C, centres F x N x 2 (normalised cx, cy), image_sizes F x 2
        -> mask logits F x N x h x w."""
        return self.head(queries, centres, mask_features, self.stride, image_sizes)


def add_mask_branch_config(cfg: CfgNode) -> None:
    """Mask branch part (MODEL.MASK_BRANCH)."""
    cfg.MODEL.MASK_BRANCH = CfgNode()
    cfg.MODEL.MASK_BRANCH.NAME = "CrossModalMaskBranch"  # class in MASK_BRANCH_REGISTRY
    cfg.MODEL.MASK_BRANCH.IN_FEATURE = "res2"  # backbone map fused by the FPN; sets the mask stride
    cfg.MODEL.MASK_BRANCH.FPN_DIM = 256  # channels inside the cross-modal FPN (the paper: C)
    cfg.MODEL.MASK_BRANCH.MASK_DIM = 8  # channels of the mask features (the FPN's output)
    cfg.MODEL.MASK_BRANCH.DYNAMIC_CONV_CHANNELS = 8  # channels of the dynamic 1x1 convolutions
    # "CrossModal": every FPN level attends to the words; "VisionLanguage" (the published model):
    # every level is a block of clip-wide self-attention, word cross-attention and feed-forward
    cfg.MODEL.MASK_BRANCH.FPN = "CrossModal"
    # VisionLanguage: spatial reduction of each level's self-attention, fine to coarse
    cfg.MODEL.MASK_BRANCH.FPN_REDUCTIONS = [8, 4, 2, 1]
    cfg.MODEL.MASK_BRANCH.FPN_NORM_GROUPS = 8  # VisionLanguage: GroupNorm groups of the FPN convs
    # relative coordinates of the dynamic head: centre minus position in input pixels (the
    # published model) instead of position minus centre normalised by the image size
    cfg.MODEL.MASK_BRANCH.PIXEL_COORDINATES = False

"""SOC's mask branch: the halving-width FPN over the encoder memory for the mask features and
ReferFormer's dynamic mask head (shared part) for the per-query masks."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rvos_d2.modeling.heads.dynamic_mask_head import DynamicMaskHead
from rvos_d2.modeling.registry import MASK_BRANCH_REGISTRY
from rvos_d2.modeling.soc.spatial_decoder import SpatialDecoder
from rvos_d2.modeling.vl_encoder import check_features

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

__all__ = ["SpatialDecoderMaskBranch"]


@MASK_BRANCH_REGISTRY.register()
class SpatialDecoderMaskBranch(nn.Module):
    """Mask features: the coarsest of the first `num_memory_levels` encoder memory maps,
    refined top-down with the finer memory maps and the backbone's `in_feature` map
    (SpatialDecoder; no text in this FPN, the memory is already fused); masks: a dynamic mask
    head on those features."""

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        stride: int,
        hidden_dim: int,
        num_memory_levels: int,
        mask_dim: int,
        dynamic_conv_channels: int,
        pixel_coordinates: bool = False,
    ):
        super().__init__()
        self.in_feature, self.stride = in_feature, stride
        self.num_memory_levels = num_memory_levels
        skips = [hidden_dim] * (num_memory_levels - 1) + [in_channels]
        self.decoder = SpatialDecoder(hidden_dim, skips, mask_dim)
        self.head = DynamicMaskHead(
            hidden_dim, mask_dim, dynamic_conv_channels, pixel_coordinates=pixel_coordinates
        )

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        mb = cfg.MODEL.MASK_BRANCH
        check_features(input_shape, [mb.IN_FEATURE], "MODEL.MASK_BRANCH.IN_FEATURE")
        return {
            "in_feature": mb.IN_FEATURE,
            "in_channels": input_shape[mb.IN_FEATURE].channels,
            "stride": input_shape[mb.IN_FEATURE].stride,
            "hidden_dim": cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM,
            "num_memory_levels": len(cfg.MODEL.VL_ENCODER.IN_FEATURES),
            "mask_dim": mb.MASK_DIM,
            "dynamic_conv_channels": mb.DYNAMIC_CONV_CHANNELS,
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
    ) -> Tensor:
        """F x mask_dim x h x w features at `stride` (same signature as ReferFormer's branch;
        padding masks and words are not used: convolutions only)."""
        maps = memory_maps[: self.num_memory_levels]
        return self.decoder(maps[-1], [*maps[-2::-1], finest])

    def forward(
        self, queries: Tensor, centres: Tensor, mask_features: Tensor, image_sizes: Tensor
    ) -> Tensor:
        """queries F x N x C, centres F x N x 2 (normalised cx, cy), image_sizes F x 2
        -> mask logits F x N x h x w."""
        return self.head(queries, centres, mask_features, self.stride, image_sizes)

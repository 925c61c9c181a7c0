"""Heads shared by the query-based methods: projections, fusion, FPN, mask and box heads."""

from rvos_d2.modeling.heads.cross_modal_fpn import CrossModalFPN
from rvos_d2.modeling.heads.dynamic_mask_head import DynamicMaskHead, relative_coordinates
from rvos_d2.modeling.heads.input_projection import MultiScaleProjection
from rvos_d2.modeling.heads.prediction import MLP
from rvos_d2.modeling.heads.vl_fusion import TextCrossAttention

__all__ = [
    "MLP",
    "CrossModalFPN",
    "DynamicMaskHead",
    "MultiScaleProjection",
    "TextCrossAttention",
    "relative_coordinates",
]

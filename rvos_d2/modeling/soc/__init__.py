"""SOC (Luo et al., NeurIPS 2023): the parts that ReferFormer does not have."""

from rvos_d2.modeling.soc.contrastive import (
    contrastive_loss,
    guidance_embedding,
    query_text_similarity,
)
from rvos_d2.modeling.soc.fusion import FUSION_MODES, GatedCrossAttention, MultiModalFusion
from rvos_d2.modeling.soc.losses import loss_contrastive, loss_frame_masks
from rvos_d2.modeling.soc.mask_branch import SpatialDecoderMaskBranch
from rvos_d2.modeling.soc.object_cluster import VideoObjectCluster
from rvos_d2.modeling.soc.spatial_decoder import SpatialDecoder
from rvos_d2.modeling.soc.vl_encoder import MultiModalVLEncoder

__all__ = [
    "FUSION_MODES",
    "GatedCrossAttention",
    "MultiModalFusion",
    "MultiModalVLEncoder",
    "SpatialDecoder",
    "SpatialDecoderMaskBranch",
    "VideoObjectCluster",
    "contrastive_loss",
    "guidance_embedding",
    "loss_contrastive",
    "loss_frame_masks",
    "query_text_similarity",
]

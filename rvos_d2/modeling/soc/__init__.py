"""SOC (Luo et al., NeurIPS 2023): the parts that ReferFormer does not have."""

from rvos_d2.modeling.soc.contrastive import (
    contrastive_loss,
    guidance_embedding,
    query_text_similarity,
)
from rvos_d2.modeling.soc.fusion import FUSION_MODES, GatedCrossAttention, MultiModalFusion
from rvos_d2.modeling.soc.object_cluster import VideoObjectCluster
from rvos_d2.modeling.soc.spatial_decoder import SpatialDecoder

__all__ = [
    "FUSION_MODES",
    "GatedCrossAttention",
    "MultiModalFusion",
    "SpatialDecoder",
    "VideoObjectCluster",
    "contrastive_loss",
    "guidance_embedding",
    "query_text_similarity",
]

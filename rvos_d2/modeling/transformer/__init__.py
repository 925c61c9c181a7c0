"""Deformable transformer shared by ReferFormer and SOC: encoder, decoder, position encoding."""

from rvos_d2.modeling.transformer.decoder import (
    DeformableTransformerDecoder,
    DeformableTransformerDecoderLayer,
)
from rvos_d2.modeling.transformer.encoder import (
    DeformableTransformerEncoder,
    DeformableTransformerEncoderLayer,
    encoder_reference_points,
    token_centres,
)
from rvos_d2.modeling.transformer.position_encoding import PositionEmbeddingSine
from rvos_d2.modeling.transformer.utils import (
    add_deformable_transformer_config,
    inverse_sigmoid,
    refine_boxes,
    valid_ratios,
)

__all__ = [
    "DeformableTransformerDecoder",
    "DeformableTransformerDecoderLayer",
    "DeformableTransformerEncoder",
    "DeformableTransformerEncoderLayer",
    "PositionEmbeddingSine",
    "add_deformable_transformer_config",
    "encoder_reference_points",
    "inverse_sigmoid",
    "refine_boxes",
    "token_centres",
    "valid_ratios",
]

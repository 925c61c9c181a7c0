"""Layers: the multi-scale deformable attention op (compiled with a pure-PyTorch fallback)."""

from rvos_d2.layers.ms_deform_attn import MSDeformAttn
from rvos_d2.layers.ms_deform_attn_func import (
    compiled_op_available,
    compiled_op_status,
    ms_deform_attn,
    ms_deform_attn_reference,
    pytorch_path,
)

__all__ = [
    "MSDeformAttn",
    "compiled_op_available",
    "compiled_op_status",
    "ms_deform_attn",
    "ms_deform_attn_reference",
    "pytorch_path",
]

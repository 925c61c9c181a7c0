"""Small helpers shared by the deformable encoder, decoder and the meta-architectures."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rvos_d2.layers import MSDeformAttn

from detectron2.config import CfgNode


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """logit(x) with x clamped to [0, 1] and both terms kept above `eps` (finite at 0 and 1)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def refine_boxes(delta: Tensor, reference: Tensor) -> Tensor:
    """Iterative box refinement: a predicted 4-d delta (cx, cy, w, h logits) moves a 2-d reference
    point or 4-d reference box in inverse-sigmoid space; returns sigmoid cxcywh boxes."""
    if delta.shape[-1] != 4:
        raise ValueError(
            f"refine_boxes: box deltas (bbox_embed outputs) must have 4 values, got "
            f"{delta.shape[-1]}"
        )
    dims = reference.shape[-1]
    moved = delta[..., :dims] + inverse_sigmoid(reference)
    return torch.cat([moved, delta[..., dims:]], dim=-1).sigmoid()


def valid_ratios(mask: Tensor) -> Tensor:
    """Fraction of each map that is image, not padding, as N x 2 (width ratio, height ratio).

    `mask` is N x H x W bool with True = padding; padding sits at the bottom / right, as batching
    pads images. Reference points are scaled by these ratios to stay inside the image.
    """
    if mask.dim() != 3 or mask.dtype != torch.bool:
        raise ValueError(
            "valid_ratios: mask must be a bool N x H x W tensor, got "
            f"{mask.dtype} {tuple(mask.shape)}"
        )
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(dim=1)
    valid_w = (~mask[:, 0, :]).sum(dim=1)
    return torch.stack([valid_w.float() / w, valid_h.float() / h], dim=-1)


def stack_kwargs(cfg, num_layers: int, n_points: int) -> dict:
    """Constructor kwargs of an encoder / decoder stack from MODEL.DEFORMABLE_TRANSFORMER.

    The two stacks share every key but their depth and their sampling points per level.
    """
    t = cfg.MODEL.DEFORMABLE_TRANSFORMER
    return {
        "d_model": t.HIDDEN_DIM,
        "nhead": t.NHEADS,
        "num_layers": num_layers,
        "dim_feedforward": t.DIM_FEEDFORWARD,
        "dropout": t.DROPOUT,
        "n_levels": t.NUM_FEATURE_LEVELS,
        "n_points": n_points,
    }


def reset_stack_parameters(layers: nn.Module) -> None:
    """Xavier for every matrix, then each MSDeformAttn's own scheme (the paper's init)."""
    for p in layers.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    for module in layers.modules():
        if isinstance(module, MSDeformAttn):
            module.reset_parameters()


def add_deformable_transformer_config(cfg: CfgNode) -> None:
    """Deformable encoder/decoder shared by ReferFormer and SOC (rvos_d2.modeling.transformer)."""
    cfg.MODEL.DEFORMABLE_TRANSFORMER = CfgNode()
    cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM = 256  # model width C
    cfg.MODEL.DEFORMABLE_TRANSFORMER.NHEADS = 8  # attention heads M
    cfg.MODEL.DEFORMABLE_TRANSFORMER.ENC_LAYERS = 4  # deformable encoder layers
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS = 4  # decoder layers (one prediction each)
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DIM_FEEDFORWARD = 1024  # hidden width of each layer's FFN
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DROPOUT = 0.1  # dropout in attention and FFN blocks
    cfg.MODEL.DEFORMABLE_TRANSFORMER.NUM_FEATURE_LEVELS = 4  # multi-scale levels L
    cfg.MODEL.DEFORMABLE_TRANSFORMER.ENC_N_POINTS = 4  # sampling points P per level in the encoder
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_N_POINTS = 4  # sampling points P per level in the decoder

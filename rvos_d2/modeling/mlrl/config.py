"""MLRL's config keys (MODEL.MLRL); the text encoder keeps its own (MODEL.TEXT_ENCODER)."""

from __future__ import annotations

from detectron2.config import CfgNode

__all__ = ["add_mlrl_config"]


def add_mlrl_config(cfg: CfgNode) -> None:
    """Granularities, alignment, widths and loss weights of MLRL (defaults: the paper's)."""
    cfg.MODEL.MLRL = CfgNode()
    cfg.MODEL.MLRL.HIDDEN_DIM = 384  # d: width of the embeddings, word features and alignment
    # visual granularities embedded and aligned (Table 3 drops one): "video", "frame", "object"
    cfg.MODEL.MLRL.LEVELS = ["video", "frame", "object"]
    # object encoder: "video" (video-level embedding + 3x3 conv, the paper's), "frame" or "fcn"
    cfg.MODEL.MLRL.OBJECT_ENCODER = "video"
    # word-to-pixel semantic alignment (Eq. 9-11); False: the "w/o alignment" ablation, the
    # mean linguistic feature added to every pixel instead
    cfg.MODEL.MLRL.ALIGNMENT = True
    cfg.MODEL.MLRL.LANGUAGE_LAYERS = 1  # transformer encoder layers of each granularity's S
    cfg.MODEL.MLRL.LANGUAGE_HEADS = 8  # attention heads of those layers
    cfg.MODEL.MLRL.LANGUAGE_DIM_FEEDFORWARD = 2048  # hidden width of their feed-forward blocks
    cfg.MODEL.MLRL.DECODER_DIM = 256  # channels of the pyramid decoders (multiple of 8)
    # video-level attention runs this many query pixels at a time (bounds memory on long
    # clips without changing the result); 0: all T*h*w at once
    cfg.MODEL.MLRL.ATTENTION_CHUNK = 4096
    cfg.MODEL.MLRL.BOUNDARY_WEIGHT = 0.2  # alpha: weight of the boundary loss (Eq. 14)
    cfg.MODEL.MLRL.CONFIDENCE_WEIGHT = 0.1  # beta: weight of the confidence L2 loss (Eq. 16)

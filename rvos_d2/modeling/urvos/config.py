"""URVOS's config keys (MODEL.URVOS); the backbone and text encoder keep their own."""

from __future__ import annotations

from detectron2.config import CfgNode

__all__ = ["add_urvos_config"]


def add_urvos_config(cfg: CfgNode) -> None:
    """Widths, memory size, ablation switches and inference of URVOS (defaults: the paper's)."""
    cfg.MODEL.URVOS = CfgNode()
    cfg.MODEL.URVOS.ATTENTION_DIM = 512  # C_a = C_b: attention embeddings and word features
    cfg.MODEL.URVOS.DECODER_DIM = 256  # channels of the feature pyramid decoder
    cfg.MODEL.URVOS.MEMORY_FRAMES = 4  # T: memory frames at most, in training and inference
    cfg.MODEL.URVOS.CROSS_MODAL_ATTENTION = True  # False: the "w/o cross-modal attention" model
    cfg.MODEL.URVOS.MEMORY_ATTENTION = True  # False: the "w/o memory attention" model
    # stage 2 (Table 5): "anchor" (the paper's: from the most confident frame both ways, the
    # least confident memory frame replaced), "anchor_previous" (the previous T frames as
    # memory) or "forward" (from the first frame to the end, the previous T frames as memory)
    cfg.MODEL.URVOS.INFERENCE_SCHEME = "anchor"
    cfg.MODEL.URVOS.INFERENCE_ITERATIONS = 1  # rounds of stage 2 (Table 6); 0: stage 1 only

"""SOC's config keys (MODEL.SOC); the shared parts keep theirs (MODEL.QUERY_DECODER, ...)."""

from __future__ import annotations

from detectron2.config import CfgNode

__all__ = ["add_soc_config"]


def add_soc_config(cfg: CfgNode) -> None:
    """Fusion streams, video-level object cluster, loss weights and matching costs of SOC.

    Defaults are the released code's (configs/refer_youtube_vos.yaml of the official repo).
    """
    cfg.MODEL.SOC = CfgNode()
    # multi-modal fusion streams: "both", "l2v" (language to vision), "v2l" or "none" (Table 4)
    cfg.MODEL.SOC.FUSION = "both"
    # video-level object cluster (Nv = MODEL.QUERY_DECODER.NUM_QUERIES video queries)
    cfg.MODEL.SOC.VOC = CfgNode()
    cfg.MODEL.SOC.VOC.ENABLED = True  # off: the heads read the frame queries alone (Table 3)
    cfg.MODEL.SOC.VOC.ENC_LAYERS = 3  # temporal self-attention layers over the T x Nq queries
    cfg.MODEL.SOC.VOC.DEC_LAYERS = 3  # object grouping decoder layers
    cfg.MODEL.SOC.VOC.NHEADS = 8  # attention heads in both
    cfg.MODEL.SOC.VOC.DIM_FEEDFORWARD = 2048  # hidden width of their feed-forward blocks
    cfg.MODEL.SOC.VOC.DROPOUT = 0.1  # dropout in their attention and feed-forward blocks
    # decoder level whose predictions inference returns; the released evaluation returns level 0
    # (its eval forward keeps the first level), -1 is the last layer
    cfg.MODEL.SOC.TEST_LEVEL = 0
    # frames are padded to a multiple of this; 0: of the coarsest backbone stride; 1: only to
    # the batch's largest frame (the released code)
    cfg.MODEL.SOC.SIZE_DIVISIBILITY = 0
    # loss weights as released (the paper's Sec. 4.2 lists Dice 2 / focal 5, the code 5 / 2)
    cfg.MODEL.SOC.CLASS_WEIGHT = 2.0  # referred-or-not sigmoid focal loss
    cfg.MODEL.SOC.L1_WEIGHT = 2.0  # box L1 loss
    cfg.MODEL.SOC.GIOU_WEIGHT = 2.0  # box GIoU loss
    cfg.MODEL.SOC.DICE_WEIGHT = 5.0  # mask Dice loss
    cfg.MODEL.SOC.MASK_WEIGHT = 2.0  # mask sigmoid focal loss
    cfg.MODEL.SOC.CONTRASTIVE_WEIGHT = 1.0  # visual-linguistic contrastive loss; 0 = off (Table 3)
    cfg.MODEL.SOC.MATCHER = CfgNode()  # Hungarian matching costs (set_cost_* as released)
    cfg.MODEL.SOC.MATCHER.CLASS_COST = 2.0  # referred-or-not focal cost
    cfg.MODEL.SOC.MATCHER.L1_COST = 2.0  # box L1 cost
    cfg.MODEL.SOC.MATCHER.GIOU_COST = 2.0  # box GIoU cost
    cfg.MODEL.SOC.MATCHER.DICE_COST = 5.0  # mask Dice cost
    cfg.MODEL.SOC.MATCHER.MASK_COST = 0.0  # mask focal cost (none in the released matcher)

"""ReferFormer's config keys (MODEL.REFERFORMER); shared parts keep theirs (MODEL.VL_ENCODER...)."""

from __future__ import annotations

from detectron2.config import CfgNode

__all__ = ["add_referformer_config"]


def add_referformer_config(cfg: CfgNode) -> None:
    """ReferFormer's loss weights and matching costs (MODEL.REFERFORMER)."""
    cfg.MODEL.REFERFORMER = CfgNode()
    cfg.MODEL.REFERFORMER.CLASS_WEIGHT = 2.0  # lambda_cls: referred-or-not focal loss
    cfg.MODEL.REFERFORMER.L1_WEIGHT = 5.0  # lambda_L1: box L1 loss
    cfg.MODEL.REFERFORMER.GIOU_WEIGHT = 2.0  # lambda_giou: box GIoU loss
    cfg.MODEL.REFERFORMER.DICE_WEIGHT = 5.0  # lambda_dice: clip-level mask Dice loss
    cfg.MODEL.REFERFORMER.MASK_WEIGHT = 2.0  # lambda_focal: mask sigmoid focal loss
    # weight of loss_search, -log attention on the target (MODEL.QUERY_DECODER.REFERENCE_SEARCH)
    cfg.MODEL.REFERFORMER.SEARCH_WEIGHT = 1.0
    # frames are padded to a multiple of this; 0: of the coarsest backbone stride; 1: only to
    # the batch's largest frame (the published model, which runs Ref-YouTube-VOS unpadded)
    cfg.MODEL.REFERFORMER.SIZE_DIVISIBILITY = 0
    # inference chooses the query per window of TEST.WINDOW frames (the official Ref-DAVIS17
    # inference: 36-frame clips) instead of once for the whole video
    cfg.MODEL.REFERFORMER.QUERY_PER_WINDOW = False
    # inference decodes, from a clip of this many frames centred on it, each annotated frame
    # only, keeping every query (official A2D / JHMDB evaluation; needs INPUT.TEST_WITH_GT); 0: off
    cfg.MODEL.REFERFORMER.TEST_ANNOTATED_CLIPS = 0
    # training decodes, after the backbone, only each clip's reference frame with its target
    # (the official A2D-Sentences training, whose clips carry one annotated frame)
    cfg.MODEL.REFERFORMER.TRAIN_REFERENCE_FRAME_ONLY = False
    # training frames are padded to a multiple of this (official: 32); 0: as SIZE_DIVISIBILITY
    cfg.MODEL.REFERFORMER.TRAIN_SIZE_DIVISIBILITY = 0
    # stride-4 mask targets: "area" averages each cell, "point" takes its pixel at offset 2
    # (the official criterion and matcher)
    cfg.MODEL.REFERFORMER.MASK_TARGETS = "area"
    # mask losses divided by target "sequences", or by visible "frames" as every official loss
    cfg.MODEL.REFERFORMER.MASK_LOSS_NORM = "sequences"
    # box losses and matching costs on every frame, absent ones against a zero box (official)
    cfg.MODEL.REFERFORMER.BOXES_ON_ALL_FRAMES = False
    # a frozen language model still follows the model's train mode (dropout on, as the official
    # scripts freeze it by requires_grad only); needs MODEL.TEXT_ENCODER.CACHE_SIZE 0
    cfg.MODEL.REFERFORMER.FROZEN_TEXT_DROPOUT = False
    cfg.MODEL.REFERFORMER.MATCHER = CfgNode()  # Hungarian matching costs (set_cost_* officially)
    cfg.MODEL.REFERFORMER.MATCHER.CLASS_COST = 2.0  # referred-or-not focal cost
    cfg.MODEL.REFERFORMER.MATCHER.L1_COST = 5.0  # box L1 cost
    cfg.MODEL.REFERFORMER.MATCHER.GIOU_COST = 2.0  # box GIoU cost
    cfg.MODEL.REFERFORMER.MATCHER.DICE_COST = 5.0  # mask Dice cost
    cfg.MODEL.REFERFORMER.MATCHER.MASK_COST = 2.0  # mask focal cost

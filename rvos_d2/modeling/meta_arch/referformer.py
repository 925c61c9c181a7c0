"""ReferFormer (Wu et al., CVPR 2022): language as queries for referring video object segmentation.

Frames are folded into the batch: a clip of B videos x T frames is processed as F = B*T images
sharing, per video, one expression. Boxes are cxcywh normalised by each frame's unpadded size;
masks are logits at the mask branch's stride of the padded input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rvos_d2.modeling.criterion import SetCriterion
from rvos_d2.modeling.mask_branch import build_mask_branch
from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher
from rvos_d2.modeling.meta_arch.base import RVOSMetaArch
from rvos_d2.modeling.propagation.postprocess import build_test_propagation
from rvos_d2.modeling.query_decoder import build_query_decoder
from rvos_d2.modeling.text_encoder import TextFeatures, build_text_encoder
from rvos_d2.modeling.utils import resize_mask
from rvos_d2.modeling.vl_encoder import build_vl_encoder, memory_maps

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList

__all__ = ["ReferFormer", "add_referformer_config"]


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
    cfg.MODEL.REFERFORMER.MATCHER = CfgNode()  # Hungarian matching costs (set_cost_* officially)
    cfg.MODEL.REFERFORMER.MATCHER.CLASS_COST = 2.0  # referred-or-not focal cost
    cfg.MODEL.REFERFORMER.MATCHER.L1_COST = 5.0  # box L1 cost
    cfg.MODEL.REFERFORMER.MATCHER.GIOU_COST = 2.0  # box GIoU cost
    cfg.MODEL.REFERFORMER.MATCHER.DICE_COST = 5.0  # mask Dice cost
    cfg.MODEL.REFERFORMER.MATCHER.MASK_COST = 2.0  # mask focal cost


@META_ARCH_REGISTRY.register()
class ReferFormer(RVOSMetaArch):
    """Conditional queries (learned positions + the sentence feature) decoded per frame into
    referred-or-not scores, boxes and dynamic mask kernels over cross-modal FPN features.

    Parts: a vision-language encoder (MODEL.VL_ENCODER), a query decoder (MODEL.QUERY_DECODER)
    and a mask branch (MODEL.MASK_BRANCH), built from their registries.
    """

    @configurable
    def __init__(
        self,
        *,
        vl_encoder: nn.Module,
        query_decoder: nn.Module,
        mask_branch: nn.Module,
        query_per_window: bool = False,
        **kwargs,
    ):
        super().__init__(mask_stride=mask_branch.stride, **kwargs)
        self.query_per_window = query_per_window
        self.vl_encoder, self.query_decoder, self.mask_branch = (
            vl_encoder,
            query_decoder,
            mask_branch,
        )
        self.num_queries = query_decoder.num_queries

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        rf = cfg.MODEL.REFERFORMER
        costs = MatchCostWeights.from_config(rf.MATCHER)
        weights = {
            "loss_cls": rf.CLASS_WEIGHT,
            "loss_bbox": rf.L1_WEIGHT,
            "loss_giou": rf.GIOU_WEIGHT,
            "loss_dice": rf.DICE_WEIGHT,
            "loss_mask": rf.MASK_WEIGHT,
            "loss_search": rf.SEARCH_WEIGHT,
        }
        losses = ["labels", "boxes", "masks"]
        if cfg.MODEL.QUERY_DECODER.REFERENCE_SEARCH:
            losses.append("search")
        coarsest = max(s.stride for s in shapes.values())
        return {
            "backbone": backbone,
            "text_encoder": build_text_encoder(cfg, cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM),
            "vl_encoder": build_vl_encoder(cfg, shapes),
            "query_decoder": build_query_decoder(cfg),
            "mask_branch": build_mask_branch(cfg, shapes),
            "criterion": SetCriterion(SequenceMatcher(costs), weights, losses),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "size_divisibility": rf.SIZE_DIVISIBILITY or max(backbone.size_divisibility, coarsest),
            "test_window": cfg.TEST.WINDOW,
            "propagation": build_test_propagation(cfg),
            "query_per_window": rf.QUERY_PER_WINDOW,
        }

    def inference_video(self, video: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The base's inference; with `query_per_window`, each window of TEST.WINDOW frames is
        decoded as a video of its own, with its own query."""
        if not self.query_per_window:
            return super().inference_video(video)
        frames, window = video["image"], self.test_window
        parts = [
            super(ReferFormer, self).inference_video({**video, "image": frames[s : s + window]})
            for s in range(0, frames.shape[0], window)
        ]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def predict(
        self, images: ImageList, text: TextFeatures, num_frames: int, all_layers: bool
    ) -> dict[str, Any]:
        """Per-frame predictions of len(images) / num_frames videos (layout: SequenceMatcher);
        with `all_layers`, earlier decoder layers go to "aux_outputs"."""
        features, padding, sizes = self.frame_features(images, num_frames)
        frame_text = text.per_frame(num_frames)
        words, word_mask = frame_text.word_feats, frame_text.word_mask
        enc = self.vl_encoder(features, padding, words, word_mask)
        sentence = frame_text.sentence_feat
        dec = self.query_decoder(enc, sentence, words, word_mask)

        finest = features[self.mask_branch.in_feature]
        num_levels = len(self.vl_encoder.in_features)
        mask_features = self.mask_branch.mask_features(
            finest,
            resize_mask(padding, finest.shape[-2:]),
            memory_maps(enc, num_levels),
            enc["masks"],
            words,
            word_mask,
            num_frames,
        )
        hs, boxes = dec["hs"], dec["boxes"]
        layers = range(len(hs)) if all_layers else [len(hs) - 1]
        per_layer = []
        for i in layers:
            pred_masks = self.mask_branch(hs[i], boxes[i][..., :2].detach(), mask_features, sizes)
            per_layer.append(
                {
                    "pred_logits": dec["logits"][i].unflatten(0, (-1, num_frames)),
                    "pred_boxes": boxes[i].unflatten(0, (-1, num_frames)),
                    "pred_masks": pred_masks.unflatten(0, (-1, num_frames)),
                }
            )
        outputs = {**per_layer[-1], "aux_outputs": per_layer[:-1]}
        if dec["search"] is not None:
            outputs.update(search_attention=dec["search"], search_shapes=enc["spatial_shapes"])
        return outputs

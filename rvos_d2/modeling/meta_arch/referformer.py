"""ReferFormer (Wu et al., CVPR 2022): language as queries for referring video object segmentation.

Frames are folded into the batch: a clip of B videos x T frames is processed as F = B*T images
sharing, per video, one expression. Boxes are cxcywh normalised by each frame's unpadded size;
masks are logits at the mask branch's stride of the padded input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rvos_d2.modeling.criterion import SetCriterion
from rvos_d2.modeling.mask_branch import build_mask_branch
from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher
from rvos_d2.modeling.meta_arch.base import RVOSMetaArch
from rvos_d2.modeling.propagation.postprocess import build_test_propagation
from rvos_d2.modeling.query_decoder import build_query_decoder
from rvos_d2.modeling.referformer import (
    infer_annotated_clips,
    infer_per_window,
    keep_clip_frames,
    point_sampled_targets,
    reference_frame_losses,
)
from rvos_d2.modeling.text_encoder import TextFeatures, build_text_encoder
from rvos_d2.modeling.utils import resize_mask
from rvos_d2.modeling.vl_encoder import build_vl_encoder, memory_maps

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList

__all__ = ["ReferFormer"]


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
        test_annotated_clips: int = 0,
        train_size_divisibility: int = 0,
        mask_targets: str = "area",
        frozen_text_dropout: bool = False,
        train_reference_frame_only: bool = False,
        **kwargs,
    ):
        super().__init__(mask_stride=mask_branch.stride, **kwargs)
        if mask_targets not in ("area", "point"):
            raise ValueError(f"MODEL.REFERFORMER.MASK_TARGETS={mask_targets!r}: 'area' or 'point'")
        self.query_per_window = query_per_window
        self.test_annotated_clips = test_annotated_clips
        self.train_size_divisibility = train_size_divisibility or self.size_divisibility
        self.mask_targets = mask_targets
        self.frozen_text_dropout = frozen_text_dropout
        self.train_reference_frame_only = train_reference_frame_only
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
        losses = ["labels", "boxes_all_frames" if rf.BOXES_ON_ALL_FRAMES else "boxes", "masks"]
        if cfg.MODEL.QUERY_DECODER.REFERENCE_SEARCH:
            losses.append("search")
        coarsest = max(s.stride for s in shapes.values())
        if rf.FROZEN_TEXT_DROPOUT and cfg.MODEL.TEXT_ENCODER.CACHE_SIZE:
            raise ValueError(
                "MODEL.REFERFORMER.FROZEN_TEXT_DROPOUT needs MODEL.TEXT_ENCODER.CACHE_SIZE 0 "
                "(cached text features would freeze one dropout draw)"
            )
        matcher = SequenceMatcher(costs, boxes_on_all_frames=rf.BOXES_ON_ALL_FRAMES)
        return {
            "backbone": backbone,
            "text_encoder": build_text_encoder(cfg, cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM),
            "vl_encoder": build_vl_encoder(cfg, shapes),
            "query_decoder": build_query_decoder(cfg),
            "mask_branch": build_mask_branch(cfg, shapes),
            "criterion": SetCriterion(matcher, weights, losses, mask_norm=rf.MASK_LOSS_NORM),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "size_divisibility": rf.SIZE_DIVISIBILITY or max(backbone.size_divisibility, coarsest),
            "test_window": cfg.TEST.WINDOW,
            "propagation": build_test_propagation(cfg),
            "query_per_window": rf.QUERY_PER_WINDOW,
            "test_annotated_clips": rf.TEST_ANNOTATED_CLIPS,
            "train_size_divisibility": rf.TRAIN_SIZE_DIVISIBILITY,
            "mask_targets": rf.MASK_TARGETS,
            "frozen_text_dropout": rf.FROZEN_TEXT_DROPOUT,
            "train_reference_frame_only": rf.TRAIN_REFERENCE_FRAME_ONLY,
        }

    def train(self, mode: bool = True) -> ReferFormer:
        """With `frozen_text_dropout`, the frozen language model follows `mode` too."""
        super().train(mode)
        if self.frozen_text_dropout:
            self.text_encoder.language_model.train(mode)
        return self

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """The base's, or losses of each clip's reference frame only (referformer/)."""
        if self.training and self.train_reference_frame_only:
            return reference_frame_losses(self, batched_inputs)
        return super().forward(batched_inputs)

    def preprocess(self, videos: list[torch.Tensor]) -> ImageList:
        """The base's frames, padded to `train_size_divisibility` in training."""
        if not self.training:
            return super().preprocess(videos)
        mean, std = self.pixel_mean, self.pixel_std
        frames = [(f.to(self.device).float() - mean) / std for v in videos for f in v]
        return ImageList.from_tensors(frames, self.train_size_divisibility)

    def prepare_targets(self, batched_inputs, images: ImageList) -> list[dict[str, torch.Tensor]]:
        """The base's targets; with point `mask_targets`, masks sampled as the official code."""
        targets = super().prepare_targets(batched_inputs, images)
        if self.mask_targets == "point":
            size = tuple(images.tensor.shape[-2:])
            for target, video in zip(targets, batched_inputs):
                frames = video["instances"]
                target["masks"] = point_sampled_targets(frames, size, self.mask_stride, self.device)
        return targets

    def inference_video(self, video: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The base's inference, or an official per-dataset scheme (referformer/inference.py):
        a query per window of TEST.WINDOW frames, or only the annotated frames from their clips."""
        if self.test_annotated_clips:
            return infer_annotated_clips(self, video, self.test_annotated_clips)
        if self.query_per_window:
            return infer_per_window(super().inference_video, video, self.test_window)
        return super().inference_video(video)

    def predict(
        self,
        images: ImageList,
        text: TextFeatures,
        num_frames: int,
        all_layers: bool,
        frame: int | Sequence[int] | None = None,
    ) -> dict[str, Any]:
        """Per-frame predictions of len(images) / num_frames videos (layout: SequenceMatcher);
        with `all_layers`, earlier decoder layers go to "aux_outputs"; with `frame` (one clip
        position, or one per clip), only that frame of each clip is decoded after the backbone
        (T = 1)."""
        features, padding, sizes = self.frame_features(images, num_frames)
        if frame is not None:
            features, padding, sizes = keep_clip_frames(features, padding, sizes, num_frames, frame)
            num_frames = 1
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

"""SOC (Luo et al., NeurIPS 2023): semantic-assisted object cluster for referring video object
segmentation.

Built from the registered parts that ReferFormer uses (text encoder, deformable encoder and
decoder with box refinement, class/box heads, dynamic mask head, set criterion) plus SOC's own:
the two-stream multi-modal fusion (MultiModalVLEncoder), the video-level object cluster and the
visual-linguistic contrastive loss ("contrastive" in the criterion); the mask losses are the
released per-frame ones ("frame_masks").
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rvos_d2.modeling.criterion import SetCriterion
from rvos_d2.modeling.mask_branch import build_mask_branch
from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher
from rvos_d2.modeling.meta_arch.base import RVOSMetaArch
from rvos_d2.modeling.propagation.postprocess import build_test_propagation
from rvos_d2.modeling.query_decoder import build_query_decoder
from rvos_d2.modeling.soc import VideoObjectCluster, guidance_embedding
from rvos_d2.modeling.text_encoder import TextFeatures, build_text_encoder
from rvos_d2.modeling.transformer import refine_boxes
from rvos_d2.modeling.utils import resize_mask
from rvos_d2.modeling.vl_encoder import build_vl_encoder, memory_maps

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList

__all__ = ["SOC"]


@META_ARCH_REGISTRY.register()
class SOC(RVOSMetaArch):
    """Frame queries (zero content, learned positions) decoded per frame; a video-level object
    cluster groups the T x Nq frame queries of a clip into Nv = Nq video queries that start from
    the sentence feature, and each video query is added to its slot's frame queries in every
    frame before the class, box and mask heads.

    Training runs the cluster on every decoder layer's queries (one set of video queries per
    layer, each with its own losses); inference, as released, runs it on the last layer only and
    adds that result to every level, and returns level `test_level` (0 as released).
    """

    @configurable
    def __init__(
        self,
        *,
        vl_encoder: nn.Module,
        query_decoder: nn.Module,
        mask_branch: nn.Module,
        object_cluster: VideoObjectCluster | None,
        test_level: int,
        **kwargs,
    ):
        super().__init__(mask_stride=mask_branch.stride, **kwargs)
        self.vl_encoder, self.query_decoder = vl_encoder, query_decoder
        self.mask_branch, self.object_cluster = mask_branch, object_cluster
        num_layers = len(query_decoder.class_embed)
        if not -num_layers <= test_level < num_layers:
            raise ValueError(f"MODEL.SOC.TEST_LEVEL={test_level}: the decoder has {num_layers}")
        self.test_level = test_level % num_layers

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        soc, t = cfg.MODEL.SOC, cfg.MODEL.DEFORMABLE_TRANSFORMER
        costs = MatchCostWeights.from_config(soc.MATCHER)
        weights = {
            "loss_cls": soc.CLASS_WEIGHT,
            "loss_bbox": soc.L1_WEIGHT,
            "loss_giou": soc.GIOU_WEIGHT,
            "loss_dice": soc.DICE_WEIGHT,
            "loss_mask": soc.MASK_WEIGHT,
            "loss_con": soc.CONTRASTIVE_WEIGHT,
        }
        losses = ["labels", "boxes", "frame_masks"]
        if soc.CONTRASTIVE_WEIGHT > 0:
            if not soc.VOC.ENABLED:
                raise ValueError(
                    "MODEL.SOC.CONTRASTIVE_WEIGHT > 0 needs the video queries of "
                    "MODEL.SOC.VOC.ENABLED (the loss contrasts them with the text)"
                )
            losses.append("contrastive")
        cluster = None
        if soc.VOC.ENABLED:
            nq = cfg.MODEL.QUERY_DECODER.NUM_QUERIES
            cluster = VideoObjectCluster(
                t.HIDDEN_DIM,
                soc.VOC.NHEADS,
                soc.VOC.DIM_FEEDFORWARD,
                soc.VOC.ENC_LAYERS,
                soc.VOC.DEC_LAYERS,
                num_frame_queries=nq,
                num_queries=nq,
                dropout=soc.VOC.DROPOUT,
            )
        coarsest = max(s.stride for s in shapes.values())
        return {
            "backbone": backbone,
            "text_encoder": build_text_encoder(cfg, t.HIDDEN_DIM),
            "vl_encoder": build_vl_encoder(cfg, shapes),
            "query_decoder": build_query_decoder(cfg),
            "mask_branch": build_mask_branch(cfg, shapes),
            "object_cluster": cluster,
            "test_level": soc.TEST_LEVEL,
            "criterion": SetCriterion(SequenceMatcher(costs), weights, losses),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "size_divisibility": soc.SIZE_DIVISIBILITY or max(backbone.size_divisibility, coarsest),
            "test_window": cfg.TEST.WINDOW,
            "propagation": build_test_propagation(cfg),
        }

    def predict(
        self, images: ImageList, text: TextFeatures, num_frames: int, all_layers: bool
    ) -> dict[str, Any]:
        """Per-frame predictions of len(images) / num_frames clips (layout: SequenceMatcher);
        with `all_layers`, earlier decoder levels go to "aux_outputs"; every level carries
        "video_queries" (B x Nv x C, with the cluster) and "text_guidance" (B x C)."""
        features, padding, sizes = self.frame_features(images, num_frames)
        frame_text = text.per_frame(num_frames)
        words, word_mask = frame_text.word_feats, frame_text.word_mask
        enc = self.vl_encoder(features, padding, words, word_mask, num_frames)
        sentence = frame_text.sentence_feat
        dec = self.query_decoder(enc, sentence, words, word_mask)
        hs, video = self._cluster(dec["hs"], text.sentence_feat, num_frames)

        finest = features[self.mask_branch.in_feature]
        mask_features = self.mask_branch.mask_features(
            finest,
            resize_mask(padding, finest.shape[-2:]),
            memory_maps(enc, len(self.vl_encoder.in_features)),
            enc["masks"],
            words,
            word_mask,
        )
        guidance = guidance_embedding(enc["fused_words"], text.word_mask)
        layers = range(len(hs)) if all_layers else [self.test_level]
        per_layer = []
        for i in layers:
            logits = self.query_decoder.class_embed[i](hs[i]).squeeze(-1)
            delta = self.query_decoder.decoder.bbox_embed[i](hs[i])
            boxes = refine_boxes(delta, dec["references"][i])
            centres = dec["boxes"][i][..., :2].detach()  # the decoder's own refined reference
            pred_masks = self.mask_branch(hs[i], centres, mask_features, sizes)
            out = {
                "pred_logits": logits.unflatten(0, (-1, num_frames)),
                "pred_boxes": boxes.unflatten(0, (-1, num_frames)),
                "pred_masks": pred_masks.unflatten(0, (-1, num_frames)),
                "text_guidance": guidance,
            }
            if video is not None:
                out["video_queries"] = video[min(i, len(video) - 1)]
            per_layer.append(out)
        return {**per_layer[-1], "aux_outputs": per_layer[:-1]}

    def _cluster(
        self, hs: Tensor, sentence: Tensor, num_frames: int
    ) -> tuple[Tensor, Tensor | None]:
        """hs: L x F x N x C frame queries; sentence B x C. Returns the queries the heads read
        (each plus its slot's video query, in every frame) and the video queries (L' x B x N x
        C; L' = L in training, 1 = the last layer's at inference, added to every level). Each
        (layer, clip) is clustered on its own; the released code regroups the L x T x B queries
        with a reshape that mixes clips when B > 1 (identical for B = 1)."""
        if self.object_cluster is None:
            return hs, None
        frame_queries = hs if self.training else hs[-1:]
        layers = frame_queries.shape[0]
        clips = frame_queries.unflatten(1, (-1, num_frames))  # L' x B x T x N x C
        video = self.object_cluster(clips.flatten(0, 1), sentence.repeat(layers, 1))
        video = video.unflatten(0, (layers, -1))  # L' x B x N x C
        return hs + video.repeat_interleave(num_frames, dim=1), video

"""MLRL (Wu et al.): multi-level representation learning with semantic alignment for RVOS.

Res5 features projected to d are embedded at video level (self-attention over every pixel of
the clip), frame level (within each frame) and object level (an object encoder whose
segmentation decoder predicts every salient object); each embedding is aligned with its own
transformer-encoded words, the target-aware maps are concatenated, and boundary-aware
segmentation decodes them with Res2..Res5 into per-frame masks, with a per-frame confidence.
One prediction per frame (N = 1): pred_logits is the confidence logit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rvos_d2.modeling.meta_arch.base import RVOSMetaArch
from rvos_d2.modeling.mlrl.alignment import LanguageTransformer, SemanticAlignment, SentenceFusion
from rvos_d2.modeling.mlrl.criterion import MLRLCriterion
from rvos_d2.modeling.mlrl.embedding import ObjectEncoder, PixelEmbedding
from rvos_d2.modeling.mlrl.segmentation import (
    BoundaryAwareSegmentation,
    ConfidenceHead,
    PyramidHead,
)
from rvos_d2.modeling.propagation.postprocess import build_test_propagation
from rvos_d2.modeling.text_encoder import TextFeatures, build_text_encoder
from rvos_d2.modeling.utils import resize_mask

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList

__all__ = ["MLRL"]

LEVELS = ("video", "frame", "object")
IN_FEATURES = ("res2", "res3", "res4", "res5")  # pyramid levels; res5 is embedded


@META_ARCH_REGISTRY.register()
class MLRL(RVOSMetaArch):
    """Multi-level visual embedding, dynamic semantic alignment and boundary-aware
    segmentation (MODEL.MLRL); the STCN post-processing is TEST.PROPAGATION."""

    @configurable
    def __init__(
        self,
        *,
        input_proj: nn.Module,
        embeddings: nn.ModuleDict,
        languages: nn.ModuleDict,
        alignments: nn.ModuleDict,
        object_decoder: nn.Module | None,
        segmentation: nn.Module,
        confidence_head: nn.Module,
        mask_stride: int,
        **kwargs,
    ):
        """embeddings, languages, alignments: one module per granularity (same keys, in the
        order their target-aware maps are concatenated); object_decoder: the object level's
        F_dec, None without the object level."""
        super().__init__(mask_stride=mask_stride, **kwargs)
        if (
            not embeddings
            or set(embeddings) != set(languages)
            or set(embeddings) != set(alignments)
        ):
            raise ValueError(
                "MLRL: embeddings, languages and alignments need the same non-empty "
                f"granularities, got {list(embeddings)}, {list(languages)}, {list(alignments)}"
            )
        if ("object" in embeddings) != (object_decoder is not None):
            raise ValueError(
                "MLRL: object_decoder must be given exactly when embeddings has an 'object' level"
            )
        self.input_proj, self.embeddings = input_proj, embeddings
        self.languages, self.alignments = languages, alignments
        self.object_decoder = object_decoder
        self.segmentation, self.confidence_head = segmentation, confidence_head

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        mc = cfg.MODEL.MLRL
        levels = list(mc.LEVELS)
        if not levels or len(set(levels)) != len(levels) or not set(levels) <= set(LEVELS):
            raise ValueError(f"MODEL.MLRL.LEVELS={levels}: expected distinct names among {LEVELS}")
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [name for name in IN_FEATURES if name not in shapes]
        if missing:
            raise ValueError(
                f"MLRL needs backbone outputs {list(IN_FEATURES)}; missing {missing} "
                "(MODEL.RESNETS.OUT_FEATURES or the backbone's OUT_FEATURES)"
            )
        d, chunk = mc.HIDDEN_DIM, mc.ATTENTION_CHUNK
        pyramid = [shapes[name].channels for name in reversed(IN_FEATURES)]  # res5 .. res2
        embeddings = nn.ModuleDict()
        for level in levels:
            if level == "object":
                embeddings[level] = ObjectEncoder(d, mc.OBJECT_ENCODER, chunk)
            else:
                embeddings[level] = PixelEmbedding(d, per_frame=level == "frame", chunk=chunk)
        languages = nn.ModuleDict(
            {
                level: LanguageTransformer(
                    d, mc.LANGUAGE_LAYERS, mc.LANGUAGE_HEADS, mc.LANGUAGE_DIM_FEEDFORWARD
                )
                for level in levels
            }
        )
        alignments = nn.ModuleDict(
            {
                level: SemanticAlignment(d, temporal=level == "video")
                if mc.ALIGNMENT
                else SentenceFusion(d)
                for level in levels
            }
        )
        coarsest = shapes["res5"].stride
        return {
            "backbone": backbone,
            "text_encoder": build_text_encoder(cfg, d),
            "input_proj": nn.Conv2d(shapes["res5"].channels, d, kernel_size=1),
            "embeddings": embeddings,
            "languages": languages,
            "alignments": alignments,
            "object_decoder": PyramidHead(d, pyramid, mc.DECODER_DIM)
            if "object" in levels
            else None,
            "segmentation": BoundaryAwareSegmentation(len(levels) * d, pyramid, mc.DECODER_DIM),
            "confidence_head": ConfidenceHead(len(levels) * d, mc.DECODER_DIM),
            "criterion": MLRLCriterion(mc.BOUNDARY_WEIGHT, mc.CONFIDENCE_WEIGHT),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "size_divisibility": max(backbone.size_divisibility, coarsest),
            "mask_stride": shapes["res2"].stride,
            "test_window": cfg.TEST.WINDOW,
            "propagation": build_test_propagation(cfg),
        }

    def predict(
        self, images: ImageList, text: TextFeatures, num_frames: int, all_layers: bool
    ) -> dict[str, Any]:
        """pred_logits B x T x 1 (confidence), pred_masks B x T x 1 x h x w (mask E) at stride
        `mask_stride`; with `all_layers` also pred_boundaries (B) and, with the object level,
        pred_objects (Y^object), B x T x h x w logits, for the criterion."""
        features, padding, _ = self.frame_features(images, num_frames)
        pyramid = [features[name] for name in reversed(IN_FEATURES)]  # res5 .. res2
        projected = self.input_proj(pyramid[0])
        coarse_padding = resize_mask(padding, projected.shape[-2:])
        aligned, outputs = [], {}
        for level, embedding in self.embeddings.items():
            visual = embedding(projected, coarse_padding, num_frames)
            if level == "object" and all_layers:
                objects = self.object_decoder(visual, pyramid)
                outputs["pred_objects"] = objects.unflatten(0, (-1, num_frames))
            words = self.languages[level](text.word_feats, text.word_mask)
            aligned.append(
                self.alignments[level](visual, coarse_padding, num_frames, words, text.word_mask)
            )
        target_aware = torch.cat(aligned, dim=1)  # (B*T) x (levels*d) x h x w
        masks, boundaries = self.segmentation(target_aware, pyramid)
        confidence = self.confidence_head(target_aware, coarse_padding)
        outputs["pred_logits"] = confidence.view(-1, num_frames, 1)
        outputs["pred_masks"] = masks.unflatten(0, (-1, num_frames))[:, :, None]
        if all_layers:
            outputs["pred_boundaries"] = boundaries.unflatten(0, (-1, num_frames))
        return outputs

"""ReferFormer (Wu et al., CVPR 2022): language as queries for referring video object segmentation.

Frames are folded into the batch: a clip of B videos x T frames is processed as F = B*T images
sharing, per video, one expression. Boxes are cxcywh normalised by each frame's unpadded size;
masks are logits at stride 4 of the padded input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert

from rvos_d2.modeling.criterion import SequenceCriterion
from rvos_d2.modeling.heads.cross_modal_fpn import CrossModalFPN
from rvos_d2.modeling.heads.dynamic_mask_head import DynamicMaskHead
from rvos_d2.modeling.heads.input_projection import MultiScaleProjection
from rvos_d2.modeling.heads.prediction import MLP
from rvos_d2.modeling.heads.reference_search import (
    TextGuidedReference,
    search_loss,
    target_positions,
)
from rvos_d2.modeling.heads.vl_fusion import TextCrossAttention
from rvos_d2.modeling.losses import downsample_masks
from rvos_d2.modeling.matcher import MatchCostWeights
from rvos_d2.modeling.text_encoder import TextFeatures, build_text_encoder
from rvos_d2.modeling.transformer import (
    DeformableTransformerDecoder,
    DeformableTransformerEncoder,
    PositionEmbeddingSine,
    refine_boxes,
    token_centres,
)

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone
from detectron2.structures import ImageList

MASK_STRIDE = 4  # stride of the mask features and predicted masks
TRANSFORMER_BACKBONE_LEVELS = 3  # the backbone's last three maps (strides 8, 16, 32) feed it


@META_ARCH_REGISTRY.register()
class ReferFormer(nn.Module):
    """Conditional queries (learned positions + the sentence feature) decoded per frame by a
    deformable transformer into referred-or-not scores, boxes and dynamic mask kernels.

    Early vision-language fusion: before the encoder, each projected visual map is multiplied
    element-wise by the word features that each of its positions attends to (cross-attention
    from pixels to the expression's words), i.e. by a per-position text feature.

    With `reference_search`, the queries first read the words, and their initial reference
    points come from attention over the encoder memory (TextGuidedReference) instead of from
    their position embedding, trained with an extra loss "loss_search" (weight `search_weight`)
    that puts the attention on the target.
    """

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        text_encoder: nn.Module,
        encoder: DeformableTransformerEncoder,
        decoder: DeformableTransformerDecoder,
        num_queries: int,
        num_feature_levels: int,
        num_heads: int,
        fpn_dim: int,
        mask_dim: int,
        dynamic_conv_channels: int,
        criterion: SequenceCriterion,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        test_window: int,
        reference_search: bool = False,
        search_weight: float = 1.0,
    ):
        super().__init__()
        shapes = sorted(backbone.output_shape().items(), key=lambda kv: kv[1].stride)
        if len(shapes) < TRANSFORMER_BACKBONE_LEVELS + 1 or shapes[0][1].stride != MASK_STRIDE:
            raise ValueError(
                "ReferFormer needs backbone maps at stride 4 and at the three coarsest strides "
                f"(e.g. res2..res5); the backbone gives {[(n, s.stride) for n, s in shapes]}"
            )
        if test_window < 1:
            raise ValueError(f"TEST.WINDOW must be >= 1, got {test_window}")
        hidden = encoder.d_model
        self.backbone, self.text_encoder = backbone, text_encoder
        self.encoder, self.decoder, self.criterion = encoder, decoder, criterion
        self.mask_feature_name = shapes[0][0]
        self.transformer_feature_names = [n for n, _ in shapes[-TRANSFORMER_BACKBONE_LEVELS:]]
        self.size_divisibility = max(backbone.size_divisibility, shapes[-1][1].stride)
        self.num_queries, self.test_window = num_queries, test_window

        self.input_proj = MultiScaleProjection(
            [s.channels for _, s in shapes[-TRANSFORMER_BACKBONE_LEVELS:]],
            hidden,
            num_feature_levels,
        )
        self.early_fusion = TextCrossAttention(hidden, num_heads)
        self.position = PositionEmbeddingSine(hidden // 2, normalize=True)
        self.query_embed = nn.Embedding(num_queries, hidden)
        self.search_weight = search_weight
        if reference_search:
            self.reference_search = TextGuidedReference(hidden, num_heads)
        else:
            self.reference_search = None
            self.reference_points = nn.Linear(hidden, 2)
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)

        num_layers = len(decoder.layers)
        self.class_embed = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_layers))
        for head in self.class_embed:  # prior probability 0.01 of "referred"
            nn.init.constant_(head.bias, -math.log(99.0))
        bbox_embed = nn.ModuleList(MLP(hidden, hidden, 4, 3) for _ in range(num_layers))
        for head in bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        nn.init.constant_(bbox_embed[0].layers[-1].bias[2:], -2.0)  # initial boxes ~0.12 wide
        decoder.bbox_embed = bbox_embed  # iterative box refinement

        self.fpn = CrossModalFPN(
            [shapes[0][1].channels] + [hidden] * TRANSFORMER_BACKBONE_LEVELS,
            fpn_dim,
            mask_dim,
            num_heads,
            text_dim=hidden,
        )
        self.mask_head = DynamicMaskHead(hidden, mask_dim, dynamic_conv_channels)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict[str, Any]:
        rf = cfg.MODEL.REFERFORMER
        weights = MatchCostWeights(
            cls=rf.CLASS_WEIGHT,
            l1=rf.L1_WEIGHT,
            giou=rf.GIOU_WEIGHT,
            dice=rf.DICE_WEIGHT,
            focal=rf.MASK_WEIGHT,
        )
        return {
            "backbone": build_backbone(cfg),
            "text_encoder": build_text_encoder(cfg, cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM),
            "encoder": DeformableTransformerEncoder(cfg),
            "decoder": DeformableTransformerDecoder(cfg),
            "num_queries": rf.NUM_QUERIES,
            "num_feature_levels": cfg.MODEL.DEFORMABLE_TRANSFORMER.NUM_FEATURE_LEVELS,
            "num_heads": cfg.MODEL.DEFORMABLE_TRANSFORMER.NHEADS,
            "fpn_dim": rf.FPN_DIM,
            "mask_dim": rf.MASK_DIM,
            "dynamic_conv_channels": rf.DYNAMIC_CONV_CHANNELS,
            "criterion": SequenceCriterion(weights),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "test_window": cfg.TEST.WINDOW,
            "reference_search": rf.REFERENCE_SEARCH,
            "search_weight": rf.SEARCH_WEIGHT,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Training: dict of weighted losses. Inference: one output dict per input video."""
        if not self.training:
            return [self.inference_video(x) for x in batched_inputs]
        lengths = {x["image"].shape[0] for x in batched_inputs}
        if len(lengths) != 1:
            raise ValueError(f"training clips must have one length T, got lengths {lengths}")
        images = self.preprocess([x["image"] for x in batched_inputs])
        text = self.text_encoder([x["expression"] for x in batched_inputs], self.device)
        outputs = self.predict(images, text, lengths.pop(), all_layers=True)
        targets = self.prepare_targets(batched_inputs, images)
        losses = self.criterion(outputs, targets)
        if self.reference_search is not None:
            on_target = target_positions(
                torch.cat([t["masks"][0] for t in targets]), outputs["search_shapes"]
            )
            visible = torch.cat([t["valid"][0] & t["annotated"] for t in targets])
            attention = outputs["search_attention"]
            losses["loss_search"] = self.search_weight * search_loss(attention, on_target, visible)
        return losses

    def preprocess(self, videos: list[torch.Tensor]) -> ImageList:
        """Normalises uint8 RGB frames (videos of T x 3 x H x W) and pads them all to one size."""
        mean, std = self.pixel_mean, self.pixel_std
        frames = [(f.to(self.device).float() - mean) / std for v in videos for f in v]
        return ImageList.from_tensors(frames, self.size_divisibility)

    def predict(
        self, images: ImageList, text: TextFeatures, num_frames: int, all_layers: bool
    ) -> dict[str, Any]:
        """Per-frame predictions of B = len(images) / num_frames videos (see SequenceMatcher for
        the output layout); with `all_layers`, earlier decoder layers go to "aux_outputs"."""
        x = images.tensor
        sizes = torch.tensor(images.image_sizes, device=x.device)  # F x 2 (h, w)
        padding = _padding_mask(x, sizes)
        if getattr(self.backbone, "is_video", False):
            x = x.unflatten(0, (-1, num_frames))
        features = self.backbone(x)

        words = text.word_feats.repeat_interleave(num_frames, 0)
        word_mask = text.word_mask.repeat_interleave(num_frames, 0)
        srcs = self.input_proj([features[n] for n in self.transformer_feature_names])
        masks = [_resize_mask(padding, s.shape[-2:]) for s in srcs]
        pos = [self.position(s, m) for s, m in zip(srcs, masks)]
        srcs = [self._fuse_early(s, words, word_mask) for s in srcs]
        enc = self.encoder(srcs, masks, pos)

        sentence = text.sentence_feat.repeat_interleave(num_frames, 0)
        hs, boxes, search = self._decode(enc, pos, sentence, words, word_mask)
        logits = torch.stack([head(h).squeeze(-1) for head, h in zip(self.class_embed, hs)])

        mask_level = features[self.mask_feature_name]
        mask_features = self.fpn(
            [mask_level, *_split_levels(enc, TRANSFORMER_BACKBONE_LEVELS)],
            [_resize_mask(padding, mask_level.shape[-2:]), *masks[:TRANSFORMER_BACKBONE_LEVELS]],
            words,
            word_mask,
        )
        layers = range(len(hs)) if all_layers else [len(hs) - 1]
        per_layer = []
        for i in layers:
            centres = boxes[i][..., :2].detach()
            pred_masks = self.mask_head(hs[i], centres, mask_features, MASK_STRIDE, sizes)
            per_layer.append(
                {
                    "pred_logits": logits[i].unflatten(0, (-1, num_frames)),
                    "pred_boxes": boxes[i].unflatten(0, (-1, num_frames)),
                    "pred_masks": pred_masks.unflatten(0, (-1, num_frames)),
                }
            )
        outputs = {**per_layer[-1], "aux_outputs": per_layer[:-1]}
        if search is not None:
            outputs.update(search_attention=search, search_shapes=enc["spatial_shapes"])
        return outputs

    def _fuse_early(self, src, words, word_mask):
        flat = src.flatten(2).transpose(1, 2)
        fused = flat * self.early_fusion(flat, words, word_mask)
        return fused.transpose(1, 2).reshape(src.shape)

    def _decode(
        self,
        enc: dict[str, torch.Tensor],
        pos: list[torch.Tensor],
        sentence: torch.Tensor,
        words: torch.Tensor,
        word_mask: torch.Tensor,
    ):
        """Runs the decoder on the conditional queries (per frame: sentence F x C, words F x L x C
        with word_mask F x L); returns hidden states, per-layer boxes (L x F x N x 4), each
        predicted relative to the reference that layer used, and the reference search's
        attention (F x N x S; None without the search)."""
        n = sentence.shape[0]
        query_pos = self.query_embed.weight[None].expand(n, -1, -1)
        tgt = sentence[:, None].expand(-1, self.num_queries, -1).contiguous()
        search = None
        if self.reference_search is None:
            initial = self.reference_points(query_pos).sigmoid()
        else:
            initial, search, tgt = self.reference_search(
                tgt,
                query_pos,
                words,
                word_mask,
                enc["memory"],
                torch.cat([p.flatten(2).transpose(1, 2) for p in pos], dim=1),
                token_centres(enc["spatial_shapes"].tolist(), enc["valid_ratios"]),
                enc["mask_flatten"],
            )
        hs, refined = self.decoder(
            tgt,
            initial,
            enc["memory"],
            enc["spatial_shapes"],
            enc["level_start_index"],
            enc["valid_ratios"],
            query_pos,
            enc["mask_flatten"],
        )
        references = [initial, *refined[:-1]]
        embeds = self.decoder.bbox_embed
        boxes = [refine_boxes(embed(h), ref) for embed, h, ref in zip(embeds, hs, references)]
        return hs, torch.stack(boxes), search

    def prepare_targets(self, batched_inputs, images: ImageList) -> list[dict[str, torch.Tensor]]:
        """Per video: valid 1 x T, boxes 1 x T x 4 (cxcywh, normalised), masks 1 x T x h x w
        (stride-4 area averages of the padded GT masks) and annotated T."""
        padded_h, padded_w = images.tensor.shape[-2:]
        targets = []
        for video in batched_inputs:
            frames = video.get("instances")
            if frames is None or len(frames) != video["image"].shape[0]:
                raise ValueError(
                    f"video {video.get('video_id')}: training needs one `instances` per frame"
                )
            masks = torch.zeros(len(frames), padded_h, padded_w, device=self.device)
            boxes, valid, annotated = [], [], []
            for t, inst in enumerate(frames):
                h, w = inst.image_size
                masks[t, :h, :w] = inst.gt_masks.tensor[0].to(self.device)
                scale = torch.tensor([w, h, w, h], dtype=torch.float, device=self.device)
                boxes.append(inst.gt_boxes.tensor[0].to(self.device) / scale)
                valid.append(bool(inst.gt_valid[0]))
                annotated.append(bool(inst.gt_annotated[0]) if inst.has("gt_annotated") else True)
            targets.append(
                {
                    "valid": torch.tensor([valid], device=self.device),
                    "boxes": box_convert(torch.stack(boxes), "xyxy", "cxcywh")[None],
                    "masks": downsample_masks(masks, MASK_STRIDE)[None],
                    "annotated": torch.tensor(annotated, device=self.device),
                }
            )
        return targets

    @torch.no_grad()
    def inference_video(self, video: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Runs windows of TEST.WINDOW frames, picks the query with the best mean score over the
        whole video, and returns its masks, scores and boxes at the original size.

        Until the choice, the stride-4 mask logits of all N queries are kept (float16): N times
        the low-resolution masks of the video, less than the full-size output itself.
        """
        text = self.text_encoder([video["expression"]], self.device)
        frames = video["image"]
        logits, boxes, masks, sizes = [], [], [], []
        for start in range(0, frames.shape[0], self.test_window):
            images = self.preprocess([frames[start : start + self.test_window]])
            out = self.predict(images, text, len(images), all_layers=False)
            logits.append(out["pred_logits"][0])
            boxes.append(out["pred_boxes"][0])
            masks.append(out["pred_masks"][0].half())
            sizes.append(images.tensor.shape[-2:])
        scores = torch.cat(logits).sigmoid()  # T x N
        best = int(scores.mean(0).argmax())
        height, width = video["height"], video["width"]
        image_h, image_w = frames.shape[-2:]
        full = []
        for window, padded in zip(masks, sizes):
            up = F.interpolate(window[:, best : best + 1].float(), size=padded, mode="bilinear")
            up = up[..., :image_h, :image_w]
            full.append(F.interpolate(up, size=(height, width), mode="bilinear")[:, 0].sigmoid())
        scale = torch.tensor([width, height, width, height], device=scores.device)
        return {
            "pred_masks": torch.cat(full),
            "scores": scores[:, best],
            "pred_boxes": box_convert(torch.cat(boxes)[:, best], "cxcywh", "xyxy") * scale,
        }


def _padding_mask(x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """F x H x W bool, True where a frame is padding (beyond its unpadded size)."""
    ys = torch.arange(x.shape[-2], device=x.device)[None, :, None]
    xs = torch.arange(x.shape[-1], device=x.device)[None, None, :]
    return (ys >= sizes[:, 0, None, None]) | (xs >= sizes[:, 1, None, None])


def _resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(mask[None].float(), size=tuple(size)).bool()[0]


def _split_levels(enc: dict[str, torch.Tensor], num_levels: int) -> list[torch.Tensor]:
    """The encoder memory of the first `num_levels` levels as F x C x h x w maps."""
    memory = enc["memory"]
    maps = []
    for (h, w), start in zip(enc["spatial_shapes"].tolist(), enc["level_start_index"].tolist()):
        level = memory[:, start : start + h * w]
        maps.append(level.transpose(1, 2).reshape(memory.shape[0], -1, h, w))
    return maps[:num_levels]

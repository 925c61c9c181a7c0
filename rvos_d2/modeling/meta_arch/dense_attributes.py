"""Dense attribute classification: a backbone pretraining task for backbones trained from scratch.

At every pixel of the finest (stride-4) backbone map, one classifier per object attribute
(category, colour, ... of the object covering the pixel; class 0 is the background) stands in
for the ImageNet / Kinetics pretraining that such backbones lack. The model's `backbone` is the
one an RVOS config builds, so its weights load into that config through MODEL.WEIGHTS
(rvos_d2.engine.attribute_pretraining writes them).

Training inputs (rvos_d2.data.attribute_mapper): {"image": T x 3 x H x W uint8 (a clip of
consecutive frames), "attribute_labels": {name: T x H/4 x W/4 int64}}. Inference returns, per
video, {"attribute_scores": {name: T x (classes + 1) x H/4 x W/4 probabilities}}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from detectron2.config import CfgNode, configurable
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone

__all__ = ["DenseAttributeClassifier", "DenseAttributeHead", "add_dense_attribute_config"]


def add_dense_attribute_config(cfg: CN) -> None:
    """MODEL.DENSE_ATTRIBUTES.*: the attributes DenseAttributeClassifier predicts per pixel."""
    cfg.MODEL.DENSE_ATTRIBUTES = CN()
    # object attributes of the dataset (its meta.json object keys), one classifier each
    cfg.MODEL.DENSE_ATTRIBUTES.NAMES = []
    # values of each attribute (background excluded), in the order of NAMES
    cfg.MODEL.DENSE_ATTRIBUTES.NUM_CLASSES = []
    cfg.MODEL.DENSE_ATTRIBUTES.HEAD_DIM = 32  # channels of the fused stride-4 map
    cfg.MODEL.DENSE_ATTRIBUTES.BACKGROUND_WEIGHT = 0.1  # cross-entropy weight of the background


class DenseAttributeHead(nn.Module):
    """Fuses the backbone's maps at the finest one's resolution and classifies every pixel for
    each attribute."""

    def __init__(
        self, input_shape: dict[str, ShapeSpec], num_classes: dict[str, int], width: int = 32
    ) -> None:
        super().__init__()
        self.in_features = sorted(input_shape, key=lambda name: input_shape[name].stride)
        self.lateral = nn.ModuleDict(
            {name: nn.Conv2d(input_shape[name].channels, width, 1) for name in self.in_features}
        )
        self.classifiers = nn.ModuleDict(
            {name: nn.Conv2d(width, n, 1) for name, n in num_classes.items()}
        )

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Maps N x C x h x w features to N x classes x h_finest x w_finest logits per
        attribute."""
        size = features[self.in_features[0]].shape[-2:]
        fused = sum(
            F.interpolate(self.lateral[name](features[name]), size=size, mode="bilinear")
            for name in self.in_features
        ).relu()
        return {name: classifier(fused) for name, classifier in self.classifiers.items()}


@META_ARCH_REGISTRY.register()
class DenseAttributeClassifier(nn.Module):
    """A backbone and per-pixel attribute classifiers, trained with class-weighted cross-entropy
    (background down-weighted: objects cover a small part of a frame)."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        head: DenseAttributeHead,
        background_weight: float,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.background_weight = background_weight
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        node = cfg.MODEL.DENSE_ATTRIBUTES
        names, counts = list(node.NAMES), list(node.NUM_CLASSES)
        if not names or len(names) != len(counts) or min(counts) < 1:
            raise ValueError(
                f"MODEL.DENSE_ATTRIBUTES.NAMES={names} and NUM_CLASSES={counts}: expected one "
                "positive count of values per attribute, at least one attribute"
            )
        backbone = build_backbone(cfg)
        backbone.requires_grad_(True)  # pretrained here even where its RVOS config freezes it
        num_classes = {name: n + 1 for name, n in zip(names, counts)}  # + background
        return {
            "backbone": backbone,
            "head": DenseAttributeHead(backbone.output_shape(), num_classes, node.HEAD_DIM),
            "background_weight": node.BACKGROUND_WEIGHT,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, Tensor] | list[dict]:
        """Training: {"loss_<attribute>"}; inference: one {"attribute_scores"} per input."""
        if self.training:
            logits = self._logits([x["image"] for x in batched_inputs])
            return self.losses(logits, [x["attribute_labels"] for x in batched_inputs])
        outputs = []
        for x in batched_inputs:  # videos differ in length: one at a time
            logits = self._logits([x["image"]])
            outputs.append({"attribute_scores": {k: v.softmax(1) for k, v in logits.items()}})
        return outputs

    def _logits(self, clips: list[Tensor]) -> dict[str, Tensor]:
        """(B * T) x classes x h x w logits per attribute of B clips of T frames (T x 3 x H x W)."""
        if len({tuple(c.shape) for c in clips}) != 1:
            raise ValueError(
                f"clips of one batch need one shape, got {sorted({tuple(c.shape) for c in clips})}"
            )
        x = torch.stack(clips).to(self.device).float()
        x = (x - self.pixel_mean) / self.pixel_std
        return self.head(
            self.backbone(x if getattr(self.backbone, "is_video", False) else x.flatten(0, 1))
        )

    def losses(
        self, logits: dict[str, Tensor], labels: list[dict[str, Tensor]]
    ) -> dict[str, Tensor]:
        """Class-weighted cross-entropy per attribute over every pixel of every frame."""
        losses = {}
        for name, scores in logits.items():
            if any(name not in y for y in labels):
                raise KeyError(f"the inputs' attribute_labels lack the attribute {name!r}")
            target = torch.cat([y[name] for y in labels]).to(self.device)
            if target.shape != scores.shape[:1] + scores.shape[2:]:
                raise ValueError(
                    f"attribute_labels[{name!r}] of the batch is {tuple(target.shape)} but the "
                    f"predictions are {tuple(scores.shape[:1] + scores.shape[2:])} (frames x the "
                    "finest backbone map)"
                )
            weight = scores.new_ones(scores.shape[1])
            weight[0] = self.background_weight
            losses[f"loss_{name}"] = F.cross_entropy(scores, target, weight=weight)
        return losses

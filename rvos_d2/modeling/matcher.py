"""Instance-sequence Hungarian matching: one query slot is matched across all frames of a clip."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

from rvos_d2.modeling.losses import (
    pairwise_class_cost,
    pairwise_dice_cost,
    pairwise_mask_focal_cost,
)


@dataclass(frozen=True)
class MatchCostWeights:
    """Weights of the five matching costs (the same lambdas as the losses)."""

    cls: float
    l1: float
    giou: float
    dice: float
    focal: float

    @classmethod
    def from_config(cls, node) -> MatchCostWeights:
        """From a method's MATCHER config node (CLASS_COST, L1_COST, GIOU_COST, DICE_COST,
        MASK_COST)."""
        return cls(node.CLASS_COST, node.L1_COST, node.GIOU_COST, node.DICE_COST, node.MASK_COST)


class SequenceMatcher:
    """Matches the N query slots of each clip to its target sequence(s).

    The cost of a slot is computed from all its T per-frame predictions: class, L1 and GIoU
    costs are averaged over the frames where the target is visible (`valid`); Dice and mask
    focal costs are computed over the whole clip (absent frames have empty target masks). With
    `boxes_on_all_frames`, L1 and GIoU costs are averaged over every frame instead, an absent
    target's frames against its placeholder box (the published ReferFormer matcher).
    """

    def __init__(self, weights: MatchCostWeights, boxes_on_all_frames: bool = False):
        self.weights = weights
        self.boxes_on_all_frames = boxes_on_all_frames

    @torch.no_grad()
    def __call__(
        self, outputs: dict[str, torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Returns, per clip, (query indices, target indices) of the optimal assignment.

        outputs: pred_logits B x T x N, pred_boxes B x T x N x 4 (cxcywh, normalised),
          pred_masks B x T x N x h x w (logits).
        targets: per clip, valid M x T (bool), boxes M x T x 4 (cxcywh, normalised),
          masks M x T x h x w (values in [0, 1]); M target sequences (1 for RVOS); optionally
          annotated T (bool): frames without annotation take no part in any cost.
        """
        if len(targets) != outputs["pred_logits"].shape[0]:
            raise ValueError(
                f"{len(targets)} targets for a batch of {outputs['pred_logits'].shape[0]} clips"
            )
        return [
            self._match_clip(logits, boxes, masks, target)
            for logits, boxes, masks, target in zip(
                outputs["pred_logits"], outputs["pred_boxes"], outputs["pred_masks"], targets
            )
        ]

    def cost_matrix(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        masks: torch.Tensor,
        target: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        """N x M matching cost of one clip (logits T x N, boxes T x N x 4, masks T x N x h x w)."""
        annotated = target.get("annotated")
        if annotated is not None:
            logits, boxes, masks = logits[annotated], boxes[annotated], masks[annotated]
            target = {k: target[k][:, annotated] for k in ("valid", "boxes", "masks")}
        valid = target["valid"].to(logits.dtype)  # M x T
        frames = valid.sum(1).clamp(min=1)  # M

        cost_cls = pairwise_class_cost(logits).T @ valid.T / frames  # N x M
        pred_xyxy = box_convert(boxes, "cxcywh", "xyxy")  # T x N x 4
        tgt_boxes = target["boxes"].transpose(0, 1)  # T x M x 4
        l1 = torch.cdist(boxes, tgt_boxes, p=1)  # T x N x M
        giou = torch.stack(
            [
                generalized_box_iou(pred_xyxy[t], box_convert(tgt_boxes[t], "cxcywh", "xyxy"))
                for t in range(boxes.shape[0])
            ]
        )
        per_frame = self.weights.l1 * l1 - self.weights.giou * giou  # T x N x M
        if self.boxes_on_all_frames:
            cost_box = per_frame.mean(0)
        else:
            # absent frames carry placeholder boxes: drop them with `where` (0 * nan is nan)
            keep = valid.T[:, None, :] > 0
            cost_box = torch.where(keep, per_frame, torch.zeros_like(per_frame)).sum(0) / frames

        pred_seq = masks.transpose(0, 1).flatten(1)  # N x T*h*w
        tgt_seq = target["masks"].flatten(1)  # M x T*h*w
        cost_mask = self.weights.dice * pairwise_dice_cost(
            pred_seq, tgt_seq
        ) + self.weights.focal * pairwise_mask_focal_cost(pred_seq, tgt_seq)
        return self.weights.cls * cost_cls + cost_box + cost_mask

    def _match_clip(self, logits, boxes, masks, target):
        if logits.shape[1] == 1 and target["valid"].shape[0] == 1:
            # one slot and one target sequence: the only assignment, no costs to compute
            only = torch.zeros(1, dtype=torch.int64, device=logits.device)
            return only, only.clone()
        cost = self.cost_matrix(logits, boxes, masks, target)
        rows, cols = linear_sum_assignment(cost.float().cpu().numpy())
        device = logits.device
        return (
            torch.as_tensor(rows, dtype=torch.int64, device=device),
            torch.as_tensor(cols, dtype=torch.int64, device=device),
        )

"""ReferFormer's set criterion over instance sequences, with auxiliary decoder-layer losses."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from rvos_d2.modeling.losses import dice_loss, focal_loss, mask_focal_loss
from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher

from detectron2.utils import comm


class SequenceCriterion(nn.Module):
    """Matches each decoder layer's query sequences to the target, then weighs five losses.

    Per matched (query slot, target) sequence:
    - class (sigmoid focal, alpha 0.25): target 1 at frames where the target is visible, 0 at
      frames where it is absent and for every unmatched slot;
    - box L1 and GIoU: only at visible frames (an absent target has no box);
    - Dice and mask focal: over the whole clip, absent frames included (empty target masks),
      so the mask of an absent object is pushed to empty.
    Frames marked not `annotated` (sparse labels) take no part in any loss. Class and box losses
    are normalised by the number of visible target frames in the batch, mask losses by the
    number of matched sequences. Returned losses are already weighted.
    """

    def __init__(self, weights: MatchCostWeights):
        super().__init__()
        self.weights = weights
        self.matcher = SequenceMatcher(weights)

    def forward(
        self, outputs: dict, targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """outputs: the final layer's predictions (see SequenceMatcher) and, optionally,
        "aux_outputs": a list of the same dicts for the earlier decoder layers."""
        device = outputs["pred_logits"].device
        num_frames = sum((t["valid"] & t.get("annotated", True)).sum() for t in targets).to(
            device=device, dtype=torch.float
        )
        num_sequences = torch.tensor(
            float(sum(t["valid"].shape[0] for t in targets)), device=device
        )
        num_frames = _global_mean(num_frames).clamp(min=1)
        num_sequences = _global_mean(num_sequences).clamp(min=1)

        losses = self._layer_losses(outputs, targets, num_frames, num_sequences)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._layer_losses(aux, targets, num_frames, num_sequences)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def _layer_losses(self, outputs, targets, num_frames, num_sequences):
        indices = self.matcher(outputs, targets)
        logits = outputs["pred_logits"]  # B x T x N
        class_targets = torch.zeros_like(logits)
        class_weights = torch.ones_like(logits)
        pred_boxes, tgt_boxes, pred_masks, tgt_masks = [], [], [], []
        for b, ((queries, tgt_ids), target) in enumerate(zip(indices, targets)):
            annotated = target.get("annotated", torch.ones_like(target["valid"][0]))
            class_weights[b, ~annotated] = 0
            valid = target["valid"][tgt_ids] & annotated  # K x T
            class_targets[b, :, queries] = valid.T.to(logits.dtype)
            boxes = outputs["pred_boxes"][b][:, queries].transpose(0, 1)  # K x T x 4
            pred_boxes.append(boxes[valid])
            tgt_boxes.append(target["boxes"][tgt_ids][valid])
            # K x T' x h x w over the annotated frames
            masks = outputs["pred_masks"][b][annotated][:, queries].transpose(0, 1)
            pred_masks.append(masks.flatten(1))
            tgt_masks.append(target["masks"][tgt_ids][:, annotated].flatten(1))

        pred_boxes, tgt_boxes = torch.cat(pred_boxes), torch.cat(tgt_boxes)
        pred_masks, tgt_masks = torch.cat(pred_masks), torch.cat(tgt_masks)
        giou = generalized_box_iou_loss(
            box_convert(pred_boxes, "cxcywh", "xyxy"),
            box_convert(tgt_boxes, "cxcywh", "xyxy"),
            reduction="sum",
        )
        w = self.weights
        return {
            "loss_cls": w.cls
            * (focal_loss(logits, class_targets) * class_weights).sum()
            / num_frames,
            "loss_bbox": w.l1 * (pred_boxes - tgt_boxes).abs().sum() / num_frames,
            "loss_giou": w.giou * giou / num_frames,
            "loss_dice": w.dice * dice_loss(pred_masks, tgt_masks).sum() / num_sequences,
            "loss_mask": w.focal * mask_focal_loss(pred_masks, tgt_masks).sum() / num_sequences,
        }


def _global_mean(value: torch.Tensor) -> torch.Tensor:
    """Averages a scalar over distributed workers (a no-op in a single process)."""
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(value)
        value = value / comm.get_world_size()
    return value

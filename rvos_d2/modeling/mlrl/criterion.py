"""MLRL's objective (Eq. 7, 14-16): mask loss (Dice + focal) of the mask E, class-balanced
boundary loss of the boundary map B, object-level mask loss, and the L2 loss of the per-frame
confidence to the IoU of the frame's predicted mask."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.losses import dice_loss, mask_focal_loss

__all__ = ["MLRLCriterion", "balanced_bce", "boundary_targets", "mask_iou"]


def boundary_targets(masks: Tensor) -> Tensor:
    """The inner outline of binarised (>= 0.5) `... x h x w` masks: mask pixels with a mask-free
    pixel among their 8 neighbours. Frame borders do not count as background."""
    binary = (masks >= 0.5).float().reshape(-1, 1, *masks.shape[-2:])
    padded = F.pad(binary, (1, 1, 1, 1), mode="replicate")
    eroded = -F.max_pool2d(-padded, kernel_size=3, stride=1)
    return (binary - eroded).reshape(masks.shape)


def balanced_bce(logits: Tensor, targets: Tensor) -> Tensor:
    """Binary cross-entropy with each class weighted by the other's share of the pixels (the
    edge loss of CE2P): the mean over boundary pixels and the mean over the others, averaged
    over the classes present."""
    losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    positive = targets > 0.5
    means = [losses[part].mean() for part in (positive, ~positive) if part.any()]
    return torch.stack(means).mean() if means else losses.sum()


def mask_iou(logits: Tensor, targets: Tensor) -> Tensor:
    """IoU of each row's predicted mask (logits > 0) with its binarised target (>= 0.5):
    `S x ...` -> `S`; a row whose prediction and target are both empty scores 0."""
    pred, gt = (logits > 0).flatten(1), (targets >= 0.5).flatten(1)
    union = (pred | gt).sum(1)
    return (pred & gt).sum(1) / union.clamp(min=1)


class MLRLCriterion(nn.Module):
    """Weighted losses of MLRL's outputs over the annotated frames of the batch.

    Eq. 14 as printed pairs the mask loss with B and the boundary loss with E while naming B the
    boundary map and E the mask; the losses here follow the names: L_mask(E, Y) +
    `boundary_weight` * L_bdry(B, Y^bdry). The object loss (Eq. 7) is added when the outputs
    carry "pred_objects"; the confidence loss is weighted by `confidence_weight` (beta, Eq. 16).
    """

    def __init__(self, boundary_weight: float, confidence_weight: float):
        super().__init__()
        self.boundary_weight, self.confidence_weight = boundary_weight, confidence_weight

    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict:
        """outputs: pred_masks B x T x 1 x h x w, pred_boundaries B x T x h x w, pred_logits
        B x T x 1, optionally pred_objects B x T x h x w (logits); targets: per video "masks"
        1 x T x h x w, "annotated" T and optionally "object_masks" T x h x w."""
        annotated = torch.cat([t["annotated"] for t in targets])
        masks = torch.cat([t["masks"][0] for t in targets])[annotated]
        pred = outputs["pred_masks"][:, :, 0].flatten(0, 1)[annotated]
        boundary = outputs["pred_boundaries"].flatten(0, 1)[annotated]
        confidence = outputs["pred_logits"][..., 0].flatten()[annotated].sigmoid()
        frames = max(int(annotated.sum()), 1)
        iou = mask_iou(pred.detach(), masks)
        losses = {
            "loss_mask_dice": dice_loss(pred, masks).sum() / frames,
            "loss_mask_focal": mask_focal_loss(pred, masks).sum() / frames,
            "loss_boundary": self.boundary_weight * balanced_bce(boundary, boundary_targets(masks)),
            "loss_confidence": self.confidence_weight * ((confidence - iou) ** 2).sum() / frames,
        }
        if "pred_objects" in outputs:
            objects = torch.cat([t.get("object_masks", t["masks"][0]) for t in targets])
            objects = objects[annotated]
            pred_objects = outputs["pred_objects"].flatten(0, 1)[annotated]
            losses["loss_object_dice"] = dice_loss(pred_objects, objects).sum() / frames
            losses["loss_object_focal"] = mask_focal_loss(pred_objects, objects).sum() / frames
        return losses

"""URVOS's loss: per-pixel cross-entropy of the referred object's mask in every annotated
frame (the authors' two-class softmax cross-entropy, written as the equivalent binary
cross-entropy of one logit), averaged over pixels and frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["URVOSCriterion"]


class URVOSCriterion(nn.Module):
    """loss_mask: mean binary cross-entropy of pred_masks against the (soft) stride-level
    target masks over the annotated frames of the batch."""

    def forward(self, outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> dict:
        """outputs: pred_masks B x T x 1 x h x w logits; targets: per video "masks" 1 x T x h x w
        and "annotated" T."""
        annotated = torch.cat([t["annotated"] for t in targets])
        masks = torch.cat([t["masks"][0] for t in targets])[annotated]
        pred = outputs["pred_masks"][:, :, 0].flatten(0, 1)[annotated]
        if not len(pred):  # no annotated frame: a zero loss that keeps the graph
            return {"loss_mask": outputs["pred_masks"].sum() * 0.0}
        return {"loss_mask": F.binary_cross_entropy_with_logits(pred, masks.to(pred.dtype))}

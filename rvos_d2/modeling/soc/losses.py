"""SOC's losses for SetCriterion, registered by name: "contrastive" (Eq. 6) and "frame_masks"
(the released criterion's per-frame mask losses)."""

from __future__ import annotations

import torch
from torch import Tensor

from rvos_d2.modeling.criterion import LOSS_REGISTRY
from rvos_d2.modeling.losses import dice_loss, mask_focal_loss
from rvos_d2.modeling.soc.contrastive import contrastive_loss

__all__ = ["loss_contrastive", "loss_frame_masks"]


@LOSS_REGISTRY.register_as("contrastive")
def loss_contrastive(outputs, targets, indices, norms) -> dict[str, Tensor]:
    """Eq. 6 with the query matched to each clip's (first) target sequence, from
    "video_queries" (B x Nv x C) and "text_guidance" (B x C)."""
    matched = torch.stack([queries[0] for queries, _ in indices])
    loss = contrastive_loss(outputs["video_queries"], outputs["text_guidance"], matched)
    return {"loss_con": loss}


@LOSS_REGISTRY.register_as("frame_masks")
def loss_frame_masks(outputs, targets, indices, norms) -> dict[str, Tensor]:
    """Dice and sigmoid focal losses of the matched slots computed per annotated frame (absent
    targets included, as empty masks) and averaged over those frames; "masks" instead takes the
    Dice of a whole clip at once."""
    pred_masks, tgt_masks = [], []
    for b, ((queries, tgt_ids), target) in enumerate(zip(indices, targets)):
        annotated = target.get("annotated", torch.ones_like(target["valid"][0]))
        masks = outputs["pred_masks"][b][annotated][:, queries].transpose(0, 1)  # K x T' x h x w
        pred_masks.append(masks.flatten(0, 1).flatten(1))
        tgt_masks.append(target["masks"][tgt_ids][:, annotated].flatten(0, 1).flatten(1))
    pred_masks, tgt_masks = torch.cat(pred_masks), torch.cat(tgt_masks)
    frames = max(pred_masks.shape[0], 1)
    return {
        "loss_dice": dice_loss(pred_masks, tgt_masks).sum() / frames,
        "loss_mask": mask_focal_loss(pred_masks, tgt_masks).sum() / frames,
    }

"""Set criterion over instance sequences: Hungarian matching, then named losses with weights.

Losses are functions registered in LOSS_REGISTRY under a name ("labels", "boxes", "masks",
"search", ...); a criterion computes the names it is given and multiplies each returned term by
its entry in `weight_dict`. A new loss plugs in by registering a function
`(outputs, targets, indices, norms) -> {term: unweighted value}`. Matching costs are the
matcher's own weights, kept apart from the loss weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from rvos_d2.modeling.heads.reference_search import search_loss, target_positions
from rvos_d2.modeling.losses import dice_loss, focal_loss, mask_focal_loss
from rvos_d2.modeling.matcher import SequenceMatcher
from rvos_d2.utils.registry import NamedRegistry

from detectron2.utils import comm

__all__ = ["LOSS_REGISTRY", "Norms", "SetCriterion"]

LOSS_REGISTRY = NamedRegistry("SET_LOSS")
LOSS_REGISTRY.__doc__ = """Loss functions of SetCriterion by name:
(outputs, targets, indices, norms) -> dict of unweighted loss terms."""

Indices = list[tuple[Tensor, Tensor]]
MASK_NORMS = ("sequences", "frames")


@dataclass
class Norms:
    """Normalisers shared by the losses of one batch (averaged over distributed workers)."""

    frames: Tensor  # visible, annotated target frames
    sequences: Tensor  # target sequences
    masks: Tensor  # divisor of the mask losses: `sequences`, or `frames` (SetCriterion.mask_norm)


class SetCriterion(nn.Module):
    """Matches each decoder layer's query sequences to the targets, then weighs named losses.

    Losses in `final_only` are computed on the last layer only (they read outputs that the
    auxiliary layers do not have); the others also on every "aux_outputs" entry, whose terms get
    the suffix `_<layer>`. Returned losses are already weighted. `mask_norm` divides the mask
    losses by the number of target "sequences" or of visible target "frames" (DETR-style
    num_boxes, as the published ReferFormer criterion does for every loss).
    """

    def __init__(
        self,
        matcher: SequenceMatcher,
        weight_dict: dict[str, float],
        losses: Sequence[str],
        final_only: Sequence[str] = ("search",),
        mask_norm: str = "sequences",
    ):
        super().__init__()
        if mask_norm not in MASK_NORMS:
            raise ValueError(f"SetCriterion: mask_norm {mask_norm!r} is not one of {MASK_NORMS}")
        unknown = [name for name in losses if name not in LOSS_REGISTRY]
        if unknown:
            raise KeyError(f"unknown losses {unknown}; registered: {LOSS_REGISTRY.names()}")
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = list(losses)
        self.final_only = set(final_only)
        self.mask_norm = mask_norm

    def forward(self, outputs: dict, targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        """outputs: the final layer's predictions (see SequenceMatcher), optionally
        "aux_outputs" (the same dicts for earlier layers) and whatever the losses read."""
        device = outputs["pred_logits"].device
        frames = sum((t["valid"] & t.get("annotated", True)).sum() for t in targets)
        sequences = torch.tensor(float(sum(t["valid"].shape[0] for t in targets)), device=device)
        frames = _global_mean(frames.to(device=device, dtype=torch.float)).clamp(min=1)
        sequences = _global_mean(sequences).clamp(min=1)
        masks = frames if self.mask_norm == "frames" else sequences
        norms = Norms(frames=frames, sequences=sequences, masks=masks)
        losses = self._layer_losses(outputs, targets, norms, self.losses)
        per_layer = [name for name in self.losses if name not in self.final_only]
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            aux_losses = self._layer_losses(aux, targets, norms, per_layer)
            losses.update({f"{k}_{i}": v for k, v in aux_losses.items()})
        return losses

    def _layer_losses(self, outputs, targets, norms: Norms, names: list[str]):
        indices = self.matcher(outputs, targets)
        weighted = {}
        for name in names:
            for term, value in LOSS_REGISTRY.get(name)(outputs, targets, indices, norms).items():
                if term not in self.weight_dict:
                    raise KeyError(f"loss term {term!r} (from {name!r}) has no weight")
                weighted[term] = self.weight_dict[term] * value
        return weighted


def _annotated(target: dict[str, Tensor]) -> Tensor:
    return target.get("annotated", torch.ones_like(target["valid"][0]))


@LOSS_REGISTRY.register_as("labels")
def loss_labels(outputs, targets, indices: Indices, norms: Norms) -> dict[str, Tensor]:
    """Referred-or-not sigmoid focal loss: target 1 at the frames where a matched target is
    visible, 0 elsewhere and for unmatched slots; unannotated frames take no part."""
    logits = outputs["pred_logits"]  # B x T x N
    class_targets = torch.zeros_like(logits)
    class_weights = torch.ones_like(logits)
    for b, ((queries, tgt_ids), target) in enumerate(zip(indices, targets)):
        annotated = _annotated(target)
        class_weights[b, ~annotated] = 0
        valid = target["valid"][tgt_ids] & annotated  # K x T
        class_targets[b, :, queries] = valid.T.to(logits.dtype)
    loss = (focal_loss(logits, class_targets) * class_weights).sum()
    return {"loss_cls": loss / norms.frames}


@LOSS_REGISTRY.register_as("boxes")
def loss_boxes(outputs, targets, indices: Indices, norms: Norms) -> dict[str, Tensor]:
    """Box L1 and GIoU of matched slots at the frames where the target is visible."""
    return _box_losses(outputs, targets, indices, norms, visible_only=True)


@LOSS_REGISTRY.register_as("boxes_all_frames")
def loss_boxes_all_frames(outputs, targets, indices: Indices, norms: Norms) -> dict[str, Tensor]:
    """Box L1 and GIoU of matched slots at every annotated frame, an absent target's frames
    against its all-zero box (the published ReferFormer's loss_boxes)."""
    return _box_losses(outputs, targets, indices, norms, visible_only=False)


def _box_losses(outputs, targets, indices: Indices, norms: Norms, visible_only: bool):
    pred_boxes, tgt_boxes = [], []
    for b, ((queries, tgt_ids), target) in enumerate(zip(indices, targets)):
        keep = _annotated(target).expand_as(target["valid"][tgt_ids])  # K x T
        if visible_only:
            keep = target["valid"][tgt_ids] & keep
        boxes = outputs["pred_boxes"][b][:, queries].transpose(0, 1)  # K x T x 4
        pred_boxes.append(boxes[keep])
        tgt_boxes.append(target["boxes"][tgt_ids][keep])
    pred_boxes, tgt_boxes = torch.cat(pred_boxes), torch.cat(tgt_boxes)
    giou = generalized_box_iou_loss(
        box_convert(pred_boxes, "cxcywh", "xyxy"),
        box_convert(tgt_boxes, "cxcywh", "xyxy"),
        reduction="sum",
    )
    return {
        "loss_bbox": (pred_boxes - tgt_boxes).abs().sum() / norms.frames,
        "loss_giou": giou / norms.frames,
    }


@LOSS_REGISTRY.register_as("masks")
def loss_masks(outputs, targets, indices: Indices, norms: Norms) -> dict[str, Tensor]:
    """Dice and sigmoid focal losses of matched slots over the annotated frames of the clip,
    absent frames included (empty target masks push an absent object's mask to empty); each
    sequence's loss is summed and divided by `norms.masks`."""
    pred_masks, tgt_masks = [], []
    for b, ((queries, tgt_ids), target) in enumerate(zip(indices, targets)):
        annotated = _annotated(target)
        masks = outputs["pred_masks"][b][annotated][:, queries].transpose(0, 1)  # K x T' x h x w
        pred_masks.append(masks.flatten(1))
        tgt_masks.append(target["masks"][tgt_ids][:, annotated].flatten(1))
    pred_masks, tgt_masks = torch.cat(pred_masks), torch.cat(tgt_masks)
    return {
        "loss_dice": dice_loss(pred_masks, tgt_masks).sum() / norms.masks,
        "loss_mask": mask_focal_loss(pred_masks, tgt_masks).sum() / norms.masks,
    }


@LOSS_REGISTRY.register_as("search")
def loss_search(outputs, targets, indices: Indices, norms: Norms) -> dict[str, Tensor]:
    """-log of the reference search's attention mass on the target (reference_search.py),
    from "search_attention" (F x N x S) and "search_shapes" (the memory's level shapes)."""
    on_target = target_positions(
        torch.cat([t["masks"][0] for t in targets]), outputs["search_shapes"]
    )
    visible = torch.cat([t["valid"][0] & _annotated(t) for t in targets])
    return {"loss_search": search_loss(outputs["search_attention"], on_target, visible)}


def _global_mean(value: Tensor) -> Tensor:
    """Averages a scalar over distributed workers (a no-op in a single process)."""
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(value)
        value = value / comm.get_world_size()
    return value

"""Tracklet-language grounding of the top-down method (Liang et al., 2021, Eqs. 4-6).

Per frame, each tracklet becomes one token (masked average pooling of the frame's visual features
under the tracklet's mask, Eq. 5), the expression's words become the other tokens, each token set
plus its learnable modality embedding; a Transformer encoder over [tracklets; words] lets
tracklets compare with each other and read the words, and a 2-layer MLP + softmax over the
tracklets gives per-frame grounding probabilities (Eq. 6). A tracklet's video score is the mean
of its per-frame probabilities; the best-scored tracklet is the answer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.heads.prediction import MLP
from rvos_d2.modeling.tracklets import tracklet_iou

from detectron2.config import CfgNode, configurable

__all__ = [
    "TrackletGroundingHead",
    "ensemble_probabilities",
    "grounding_loss",
    "grounding_target",
    "masked_average_pool",
    "video_scores",
]

VISUAL, LANGUAGE = 0, 1  # rows of the modality embedding table


def masked_average_pool(features: Tensor, masks: Tensor) -> Tensor:
    """The paper's Eq. 5: per-frame mean of visual features under each tracklet's mask.

    Args:
        features: T x C x h x w visual features of the T frames.
        masks: P x T x H x W bool masks or probabilities; resized to h x w by area averaging, so
            a feature cell counts with the fraction of it the mask covers.

    Returns:
        T x P x C; zero where a tracklet's mask is empty in a frame.
    """
    if features.dim() != 4 or masks.dim() != 4 or masks.shape[1] != features.shape[0]:
        raise ValueError(
            "masked_average_pool: features must be T x C x h x w and masks P x T x H x W with the "
            f"same T, got {tuple(features.shape)} and {tuple(masks.shape)}"
        )
    weights = F.adaptive_avg_pool2d(masks.to(features.dtype), features.shape[-2:])  # P x T x h x w
    summed = torch.einsum("tchw,pthw->tpc", features, weights)
    area = weights.sum(dim=(-2, -1)).T  # T x P
    return summed / area.clamp(min=1e-6)[..., None]


class TrackletGroundingHead(nn.Module):
    """Per-frame grounding logits of P tracklets for one expression (Eq. 6)."""

    @configurable
    def __init__(
        self,
        *,
        visual_dim: int,
        hidden_dim: int,
        num_layers: int,
        num_heads: int,
        dim_feedforward: int,
        dropout: float,
    ) -> None:
        """
        Args:
            visual_dim: channels C of the visual features that are pooled.
            hidden_dim: token width D (the word features must have it too).
            num_layers, num_heads, dim_feedforward, dropout: the Transformer encoder.
        """
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(
                f"MODEL.TOPDOWN.GROUNDING: HIDDEN_DIM={hidden_dim} is not divisible by "
                f"NHEADS={num_heads}"
            )
        # the rescaling of pooled features to D that the paper leaves out of Eq. 5
        self.visual_proj = nn.Sequential(
            nn.Linear(visual_dim, hidden_dim), nn.LayerNorm(hidden_dim)
        )
        self.modality_embed = nn.Embedding(2, hidden_dim)  # e^v and e^l of Eq. 6
        layer = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, dim_feedforward, dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.score = MLP(hidden_dim, hidden_dim, 1, 2)

    @classmethod
    def from_config(cls, cfg: CfgNode, visual_dim: int) -> dict:
        g = cfg.MODEL.TOPDOWN.GROUNDING
        return {
            "visual_dim": visual_dim,
            "hidden_dim": g.HIDDEN_DIM,
            "num_layers": g.NUM_LAYERS,
            "num_heads": g.NHEADS,
            "dim_feedforward": g.DIM_FEEDFORWARD,
            "dropout": g.DROPOUT,
        }

    def forward(self, features: Tensor, masks: Tensor, words: Tensor, word_mask: Tensor) -> Tensor:
        """
        Args:
            features: T x C x h x w visual features.
            masks: P x T x H x W tracklet masks (bool or probabilities).
            words: L x D word features of the expression.
            word_mask: L bool, True = padding.

        Returns:
            T x P per-frame grounding logits (softmax over P gives the paper's s_p^t).
        """
        if words.dim() != 2 or word_mask.shape != words.shape[:1]:
            raise ValueError(
                "TrackletGroundingHead: words must be L x D and word_mask L, got "
                f"{tuple(words.shape)} and {tuple(word_mask.shape)}"
            )
        num_frames, num_tracklets = features.shape[0], masks.shape[0]
        tracklet_tokens = self.visual_proj(masked_average_pool(features, masks))  # T x P x D
        tracklet_tokens = tracklet_tokens + self.modality_embed.weight[VISUAL]
        word_tokens = (words + self.modality_embed.weight[LANGUAGE]).expand(num_frames, -1, -1)
        tokens = torch.cat([tracklet_tokens, word_tokens], dim=1)
        padding = torch.cat([word_mask.new_zeros(num_tracklets), word_mask])
        encoded = self.encoder(tokens, src_key_padding_mask=padding.expand(num_frames, -1))
        return self.score(encoded[:, :num_tracklets]).squeeze(-1)


def video_scores(frame_logits: Tensor) -> Tensor:
    """Per-tracklet video score: the per-frame softmax over tracklets averaged over frames
    (T x P logits -> P)."""
    return frame_logits.softmax(dim=-1).mean(dim=0)


def grounding_loss(frame_logits: Tensor, target: int) -> Tensor:
    """Cross-entropy of every frame's softmax over tracklets with the target tracklet."""
    targets = torch.full((frame_logits.shape[0],), target, device=frame_logits.device)
    return F.cross_entropy(frame_logits, targets)


def grounding_target(
    tracklet_masks: Tensor, gt_masks: Tensor, annotated: Tensor | None = None
) -> tuple[int, float]:
    """(index, tracklet IoU) of the tracklet that best matches the ground truth.

    Args:
        tracklet_masks: P x T x H x W tracklets.
        gt_masks: T x H x W ground-truth masks of the referred object (bool, or coverage
            fractions; like float tracklet masks, foreground above 0.5).
        annotated: T bool, frames whose ground truth is known (others are left out of Eq. 3).
    """
    if gt_masks.shape != tracklet_masks.shape[1:]:
        raise ValueError(
            f"grounding_target: gt_masks {tuple(gt_masks.shape)} must match the tracklets' "
            f"T x H x W {tuple(tracklet_masks.shape[1:])}"
        )
    if annotated is not None:
        tracklet_masks, gt_masks = tracklet_masks[:, annotated], gt_masks[annotated]
    iou = tracklet_iou(tracklet_masks, gt_masks[None])[:, 0]
    best = int(iou.argmax())
    return best, float(iou[best])


def ensemble_probabilities(probabilities: Sequence[Tensor]) -> Tensor:
    """The paper's model ensemble: the mean of several grounding models' probabilities over the
    same tracklets (each P, or T x P)."""
    if not probabilities:
        raise ValueError("ensemble_probabilities needs at least one model's probabilities")
    shapes = {tuple(p.shape) for p in probabilities}
    if len(shapes) != 1:
        raise ValueError(f"ensemble_probabilities: models disagree on the shape: {shapes}")
    return torch.stack(list(probabilities)).mean(dim=0)

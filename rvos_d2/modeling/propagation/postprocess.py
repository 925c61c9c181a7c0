"""Mask propagation as post-processing of any RVOS method (TEST.PROPAGATION).

The method's mask of its best-scored frame is the anchor; a space-time memory network
(MODEL.PROPAGATION, weights TEST.PROPAGATION.WEIGHTS) propagates it forward and backward through
the video, as ReferFormer does with CFBI on Ref-DAVIS17 and MLRL with STCN. The propagated
masks replace the method's own (FUSION "replace") or are averaged with them ("mean"); the anchor
frame keeps the method's mask either way.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rvos_d2.modeling.propagation.propagator import Propagator

from detectron2.config import CfgNode

__all__ = ["MaskPropagation", "add_test_propagation_config", "build_test_propagation"]

MATCHINGS = ("stcn", "cfbi")
FUSIONS = ("replace", "mean")

logger = logging.getLogger(__name__)


def add_test_propagation_config(cfg: CfgNode) -> None:
    """TEST.PROPAGATION: propagation post-processing of RVOS outputs."""
    cfg.TEST.PROPAGATION = CfgNode()
    # "none", or the matching of the MODEL.PROPAGATION network that propagates the best-scored
    # frame's mask: "stcn" (memory read) or "cfbi" (plus foreground/background matching)
    cfg.TEST.PROPAGATION.NAME = "none"
    # checkpoint of that network: a SpaceTimeMemoryNetwork model, e.g. a converted official STCN
    cfg.TEST.PROPAGATION.WEIGHTS = ""
    cfg.TEST.PROPAGATION.FUSION = "replace"  # "replace" the method's masks, or "mean" with them


def build_test_propagation(cfg: CfgNode) -> MaskPropagation | None:
    """The post-processing named by TEST.PROPAGATION (None for "none"), its network built from
    MODEL.PROPAGATION and loaded from TEST.PROPAGATION.WEIGHTS on MODEL.DEVICE."""
    from rvos_d2.engine.checkpoint import RVOSCheckpointer
    from rvos_d2.modeling.propagation.meta_arch import SpaceTimeMemoryNetwork

    tp = cfg.TEST.PROPAGATION
    if tp.NAME == "none":
        return None
    if tp.NAME not in MATCHINGS:
        raise ValueError(
            f"TEST.PROPAGATION.NAME={tp.NAME!r}: expected 'none' or one of {MATCHINGS}"
        )
    if tp.FUSION not in FUSIONS:
        raise ValueError(f"TEST.PROPAGATION.FUSION={tp.FUSION!r}: expected one of {FUSIONS}")
    net_cfg = cfg.clone()
    net_cfg.defrost()
    net_cfg.MODEL.PROPAGATION.MATCHING = tp.NAME
    model = SpaceTimeMemoryNetwork(net_cfg).to(cfg.MODEL.DEVICE).eval()
    if tp.WEIGHTS:
        RVOSCheckpointer(model).load(tp.WEIGHTS)
    else:
        logger.warning("TEST.PROPAGATION.WEIGHTS is empty: the propagation network is random")
    return MaskPropagation(model.propagator, tp.FUSION, rgb=cfg.INPUT.FORMAT == "RGB")


class MaskPropagation:
    """Propagates a method's mask of its best-scored frame through the video.

    Not an nn.Module on purpose: its network is a separately trained model, so it is neither
    trained nor saved with the method that it post-processes.
    """

    def __init__(self, propagator: Propagator, fusion: str = "replace", rgb: bool = True):
        if fusion not in FUSIONS:
            raise ValueError(f"fusion={fusion!r}: expected one of {FUSIONS}")
        self.propagator, self.fusion, self.rgb = propagator, fusion, rgb

    @torch.no_grad()
    def __call__(self, frames: Tensor, output: dict[str, Any]) -> dict[str, Any]:
        """frames: the model input's T x 3 x H x W uint8 frames; output: the method's output
        (pred_masks T x H0 x W0 probabilities, scores T). Returns the output with propagated
        pred_masks; the other entries are unchanged."""
        masks, scores = output["pred_masks"], output["scores"]
        if frames.shape[0] != masks.shape[0] or scores.shape[0] != masks.shape[0]:
            raise ValueError(
                f"propagation: {frames.shape[0]} frames, {masks.shape[0]} masks and "
                f"{scores.shape[0]} scores"
            )
        anchor = int(scores.argmax())
        device = self.propagator.network.pixel_mean.device
        images = frames.to(device) if self.rgb else frames.flip(1).to(device)
        size = tuple(images.shape[-2:])
        anchor_mask = F.interpolate(masks[anchor][None, None].float(), size, mode="bilinear")
        result = self.propagator.propagate(list(images), anchor, anchor_mask[0].clamp(0, 1))
        propagated = F.interpolate(result.probs, tuple(masks.shape[-2:]), mode="bilinear")[:, 0]
        propagated = propagated.to(masks.device, masks.dtype)
        if self.fusion == "mean":
            propagated = (propagated + masks) / 2
        propagated[anchor] = masks[anchor]
        return {**output, "pred_masks": propagated}

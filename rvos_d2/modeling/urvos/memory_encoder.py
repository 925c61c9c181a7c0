"""URVOS's memory encoder: a second feature extractor that takes an RGB frame stacked with its
mask (4 channels) and gives its Res4 map for the memory attention."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from detectron2.config import CfgNode
from detectron2.modeling import build_backbone

__all__ = ["MemoryEncoder", "build_memory_encoder"]

STAGES = ("stem", "res2", "res3", "res4")


class MemoryEncoder(nn.Module):
    """The stem and Res2..Res4 of a backbone (kept as numbered layers, so that their weight
    names never collide with the visual encoder's under detectron2's suffix matching), whose
    first convolution takes the mask as a fourth input channel."""

    def __init__(self, stages: list[nn.Module], channels: int, stride: int):
        super().__init__()
        self.layers = nn.Sequential(*stages)
        self.channels, self.stride = channels, stride
        conv = next(
            (
                m
                for m in self.layers[0].modules()
                if isinstance(m, nn.Conv2d) and m.in_channels == 3
            ),
            None,
        )
        if conv is None:
            raise ValueError("MemoryEncoder: the backbone's stem has no 3-channel input conv")
        mask_weight = torch.empty_like(conv.weight[:, :1])
        nn.init.kaiming_uniform_(mask_weight, a=5**0.5)  # nn.Conv2d's default initialisation
        conv.weight = nn.Parameter(torch.cat([conv.weight.data, mask_weight], 1))
        conv.in_channels = 4
        self.input_weight = next(k for k, v in self.named_parameters() if v is conv.weight)

    def forward(self, images: Tensor, masks: Tensor) -> Tensor:
        """images: N x 3 x H x W normalised frames, masks: N x H x W in [0, 1] -> N x C x h x w."""
        return self.layers(torch.cat([images, masks[:, None].to(images.dtype)], 1))

    def weights_from_backbone(self, state_dict: dict, prefix: str, backbone_prefix: str) -> None:
        """Adds to `state_dict` (keys under `prefix` for this module) the matching weights of
        the visual encoder (under `backbone_prefix`) when it holds none of this module's own,
        e.g. an ImageNet or backbone-only checkpoint; the input conv's mask channel keeps its
        current value."""
        if any(k.startswith(prefix) for k in state_dict):
            return
        for key, current in self.state_dict().items():
            _, index, rest = key.split(".", 2)  # "layers", stage index, name inside the stage
            source = state_dict.get(f"{backbone_prefix}{STAGES[int(index)]}.{rest}")
            if source is None:
                continue
            if key == self.input_weight and source.shape[1] == 3:
                source = torch.cat([source.to(current), current[:, 3:]], 1)
            if source.shape == current.shape:
                state_dict[prefix + key] = source


def build_memory_encoder(cfg: CfgNode) -> MemoryEncoder:
    """The config's backbone architecture up to Res4, every weight trainable (a separate
    extractor whose input differs from the visual encoder's)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.MODEL.TINY_BACKBONE.OUT_FEATURES = ["res4"]
    cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = []
    cfg.MODEL.TINY_BACKBONE.FREEZE = False
    backbone = build_backbone(cfg)
    missing = [name for name in STAGES if not isinstance(getattr(backbone, name, None), nn.Module)]
    if missing or getattr(backbone, "is_video", False):
        raise ValueError(
            f"URVOS's memory encoder needs an image backbone with modules {list(STAGES)} "
            f"(MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r} lacks {missing} or is a video "
            "backbone): use a ResNet or the tiny backbone"
        )
    shape = backbone.output_shape()["res4"]
    return MemoryEncoder([getattr(backbone, name) for name in STAGES], shape.channels, shape.stride)

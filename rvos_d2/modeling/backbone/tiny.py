"""A small convolutional backbone for fast CPU runs (the synthetic default configs)."""

from __future__ import annotations

from torch import Tensor, nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["TinyConvBackbone", "build_tiny_backbone"]

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _conv_norm_relu(in_ch: int, out_ch: int, stride: int, norm: str) -> Conv2d:
    return Conv2d(
        in_ch,
        out_ch,
        kernel_size=3,
        stride=stride,
        padding=1,
        bias=not norm,
        norm=get_norm(norm, out_ch),
        activation=nn.ReLU(inplace=True),
    )


class TinyConvBackbone(Backbone):
    """Stride-2 stem to 1/2, then four stages (1/4 .. 1/32), each a strided and a plain 3x3
    conv-norm-ReLU; stage i has `width * 2**i` channels. Named like ResNet (res2..res5)."""

    def __init__(self, width: int, out_features: list[str], norm: str = "BN") -> None:
        super().__init__()
        unknown = set(out_features) - set(STAGE_NAMES)
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.TINY_BACKBONE.OUT_FEATURES={out_features}: choose among {STAGE_NAMES}"
            )
        self.stem = _conv_norm_relu(3, width, 2, norm)
        in_ch = width
        self._out_features = list(out_features)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        last = max(STAGE_NAMES.index(name) for name in out_features)
        self.stage_names = STAGE_NAMES[: last + 1]
        for i, name in enumerate(self.stage_names):
            out_ch = width * 2**i
            stage = nn.Sequential(
                _conv_norm_relu(in_ch, out_ch, 2, norm), _conv_norm_relu(out_ch, out_ch, 1, norm)
            )
            self.add_module(name, stage)
            self._out_feature_channels[name] = out_ch
            self._out_feature_strides[name] = 2 ** (i + 2)
            in_ch = out_ch

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4:
            raise ValueError(f"TinyConvBackbone expects N x 3 x H x W input, got {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_tiny_backbone(cfg, input_shape: ShapeSpec) -> TinyConvBackbone:
    """MODEL.BACKBONE.NAME = "build_tiny_backbone": the TinyConvBackbone of MODEL.TINY_BACKBONE."""
    if input_shape.channels != 3:
        raise ValueError(f"TinyConvBackbone expects 3 input channels, got {input_shape.channels}")
    tc = cfg.MODEL.TINY_BACKBONE
    return TinyConvBackbone(width=tc.WIDTH, out_features=list(tc.OUT_FEATURES), norm=tc.NORM)

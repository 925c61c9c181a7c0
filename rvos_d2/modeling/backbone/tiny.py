"""A small convolutional backbone for fast CPU runs (the synthetic default configs)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

__all__ = ["TemporalMixing", "TinyConvBackbone", "build_tiny_backbone"]

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


class TemporalMixing(nn.Module):
    """Residual 3x3x3 convolution over (time, height, width) of a clip's per-frame maps, so
    that a 2D stage's output can encode where things move. The branch starts at zero, i.e. the
    block starts as the identity: its norm's scale is zero-initialised, or, without a trainable
    norm ("" or "FrozenBN", whose fixed scale a new block cannot use), the conv weights are.
    The norm is detectron2's `norm` applied to every frame, so BN statistics span the clip.
    """

    def __init__(self, channels: int, norm: str = "BN"):
        super().__init__()
        trainable_norm = norm not in ("", "FrozenBN")
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, bias=not trainable_norm)
        self.norm = get_norm(norm, channels) if trainable_norm else None
        if self.norm is None:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
        else:
            nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(self.norm.weight)

    def forward(self, x: Tensor, num_frames: int) -> Tensor:
        """x: (B * T) x C x h x w, frames of each clip consecutive -> same shape."""
        clips = x.unflatten(0, (-1, num_frames)).transpose(1, 2)  # B x C x T x h x w
        mixed = self.conv(clips).transpose(1, 2).flatten(0, 1)
        if self.norm is not None:
            mixed = self.norm(mixed)
        return (x + mixed).relu()


class TinyConvBackbone(Backbone):
    """Stride-2 stem to 1/2, then four stages (1/4 .. 1/32), each a strided and a plain 3x3
    conv-norm-ReLU; stage i has `width * 2**i` channels. Named like ResNet (res2..res5).

    With `temporal_stages`, it is a video backbone (B x T x 3 x H x W clips in, `is_video`):
    each named stage is followed by a TemporalMixing block, a (2+1)D design in the spirit of
    the paper's Video-Swin option at a fraction of its cost. Outputs are (B * T) x C x h x w.

    With `freeze`, no weight is trained (a pretrained backbone kept as it is); the norms still
    normalise with the statistics of each training batch, as without it.
    """

    def __init__(
        self,
        width: int,
        out_features: list[str],
        norm: str = "BN",
        temporal_stages: Sequence[str] = (),
        freeze: bool = False,
    ) -> None:
        super().__init__()
        unknown = (set(out_features) | set(temporal_stages)) - set(STAGE_NAMES)
        if unknown or not out_features:
            raise ValueError(
                f"MODEL.TINY_BACKBONE.OUT_FEATURES={out_features}, "
                f"TEMPORAL_STAGES={list(temporal_stages)}: choose among {STAGE_NAMES}"
            )
        self.stem = _conv_norm_relu(3, width, 2, norm)
        in_ch = width
        self._out_features = list(out_features)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        last = max(STAGE_NAMES.index(name) for name in [*out_features, *temporal_stages])
        self.stage_names = STAGE_NAMES[: last + 1]
        self.temporal = nn.ModuleDict()
        for i, name in enumerate(self.stage_names):
            out_ch = width * 2**i
            stage = nn.Sequential(
                _conv_norm_relu(in_ch, out_ch, 2, norm), _conv_norm_relu(out_ch, out_ch, 1, norm)
            )
            self.add_module(name, stage)
            if name in temporal_stages:
                self.temporal[name] = TemporalMixing(out_ch, norm)
            self._out_feature_channels[name] = out_ch
            self._out_feature_strides[name] = 2 ** (i + 2)
            in_ch = out_ch
        self.is_video = bool(temporal_stages)
        if freeze:
            self.requires_grad_(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        expected = 5 if self.is_video else 4
        if x.dim() != expected:
            shape = "B x T x 3 x H x W" if self.is_video else "N x 3 x H x W"
            raise ValueError(f"TinyConvBackbone expects {shape} input, got {tuple(x.shape)}")
        num_frames = x.shape[1] if self.is_video else 1
        outputs = {}
        x = self.stem(x.flatten(0, 1) if self.is_video else x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self.temporal:
                x = self.temporal[name](x, num_frames)
            if name in self._out_features:
                outputs[name] = x
        return outputs


@BACKBONE_REGISTRY.register()
def build_tiny_backbone(cfg, input_shape: ShapeSpec) -> TinyConvBackbone:
    """MODEL.BACKBONE.NAME = "build_tiny_backbone": the TinyConvBackbone of MODEL.TINY_BACKBONE."""
    if input_shape.channels != 3:
        raise ValueError(f"TinyConvBackbone expects 3 input channels, got {input_shape.channels}")
    tc = cfg.MODEL.TINY_BACKBONE
    return TinyConvBackbone(
        width=tc.WIDTH,
        out_features=list(tc.OUT_FEATURES),
        norm=tc.NORM,
        temporal_stages=list(tc.TEMPORAL_STAGES),
        freeze=tc.FREEZE,
    )

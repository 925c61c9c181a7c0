"""Video Swin Transformer as a detectron2 backbone: clips in, per-frame multi-scale maps out.

The temporal patch size is 1 (as ReferFormer uses Video Swin), so time is never downsampled and
every frame gets its own feature maps, while the 3D shifted windows mix information across frames.
"""

from __future__ import annotations

from torch import Tensor, nn

from rvos_d2.modeling.backbone.swin_layers import (
    SwinBackboneBase,
    WindowOptions,
    pad_to_multiple,
    swin_kwargs,
)

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY

__all__ = ["VideoSwinTransformer", "build_video_swin_backbone"]

PATCH_SIZE = (1, 4, 4)  # (time, height, width)


class PatchEmbed3D(nn.Module):
    """1x4x4 patches -> linear embedding (a strided Conv3d), then LayerNorm."""

    def __init__(self, embed_dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.proj = nn.Conv3d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        """B x T x 3 x H x W -> B x T x H/4 x W/4 x C."""
        x = pad_to_multiple(x, PATCH_SIZE[1]).transpose(1, 2)  # B x 3 x T x H x W
        x = self.proj(x).permute(0, 2, 3, 4, 1)
        if self.norm is not None:
            x = self.norm(x)
        return x


class VideoSwinTransformer(SwinBackboneBase):
    """Video-Swin-T/S/B on clips (B x T x 3 x H x W) -> (B * T) x C x h x w per stage."""

    is_video = True

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: list[int],
        num_heads: list[int],
        window_size: tuple[int, int, int],
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        patch_norm: bool = True,
        out_features: list[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
        window_options: WindowOptions = WindowOptions(),
        out_norm: bool = True,
    ) -> None:
        if len(window_size) != 3:
            raise ValueError(f"MODEL.VIDEO_SWIN.WINDOW_SIZE={window_size}: expected (T, H, W)")
        super().__init__(
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window=tuple(window_size),
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            out_features=list(out_features),
            use_checkpoint=use_checkpoint,
            window_options=window_options,
            out_norm=out_norm,
            config_prefix="MODEL.VIDEO_SWIN",
        )
        self.patch_embed = PatchEmbed3D(embed_dim, patch_norm)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 5 or x.shape[2] != 3:
            raise ValueError(
                f"VideoSwinTransformer expects B x T x 3 x H x W input, got {tuple(x.shape)}"
            )
        return self.forward_stages(self.patch_embed(x))


@BACKBONE_REGISTRY.register()
def build_video_swin_backbone(cfg, input_shape: ShapeSpec) -> VideoSwinTransformer:
    """MODEL.BACKBONE.NAME = "build_video_swin_backbone": MODEL.VIDEO_SWIN's Video Swin."""
    if input_shape.channels != 3:
        raise ValueError(f"Video Swin expects 3 input channels, got {input_shape.channels}")
    vc = cfg.MODEL.VIDEO_SWIN
    return VideoSwinTransformer(window_size=tuple(vc.WINDOW_SIZE), **swin_kwargs(vc))

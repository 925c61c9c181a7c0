"""Swin Transformer (2D) as a detectron2 backbone: res2..res5 at strides 4..32."""

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

__all__ = ["D2SwinTransformer", "build_swin_backbone"]

PATCH_SIZE = 4


class PatchEmbed(nn.Module):
    """Non-overlapping 4x4 patches -> linear embedding (a strided conv), then LayerNorm."""

    def __init__(self, embed_dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=PATCH_SIZE, stride=PATCH_SIZE)
        self.norm = nn.LayerNorm(embed_dim) if patch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        """N x 3 x H x W -> N x 1 x H/4 x W/4 x C (a one-frame clip for the shared stages)."""
        x = self.proj(pad_to_multiple(x, PATCH_SIZE)).permute(0, 2, 3, 1)
        if self.norm is not None:
            x = self.norm(x)
        return x.unsqueeze(1)


class D2SwinTransformer(SwinBackboneBase):
    """Swin-T/S/B/L on single images (N x 3 x H x W); any H, W (padded internally)."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: list[int],
        num_heads: list[int],
        window_size: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.2,
        patch_norm: bool = True,
        out_features: list[str] = ("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
        window_options: WindowOptions = WindowOptions(),
        out_norm: bool = True,
    ) -> None:
        super().__init__(
            embed_dim=embed_dim,
            depths=depths,
            num_heads=num_heads,
            window=(1, window_size, window_size),
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path_rate=drop_path_rate,
            out_features=list(out_features),
            use_checkpoint=use_checkpoint,
            window_options=window_options,
            out_norm=out_norm,
            config_prefix="MODEL.SWIN",
        )
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"D2SwinTransformer expects N x 3 x H x W input, got {tuple(x.shape)}")
        return self.forward_stages(self.patch_embed(x))


@BACKBONE_REGISTRY.register()
def build_swin_backbone(cfg, input_shape: ShapeSpec) -> D2SwinTransformer:
    """MODEL.BACKBONE.NAME = "build_swin_backbone": the Swin described by MODEL.SWIN."""
    if input_shape.channels != 3:
        raise ValueError(f"Swin expects 3 input channels, got {input_shape.channels}")
    sc = cfg.MODEL.SWIN
    return D2SwinTransformer(window_size=sc.WINDOW_SIZE, **swin_kwargs(sc))

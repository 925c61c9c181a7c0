"""Shifted-window transformer layers shared by Swin (2D) and Video Swin (3D).

Everything works on B x D x H x W x C tensors with 3D windows; the 2D Swin is the special case
D = 1 with windows of depth 1. Parameter names follow the official checkpoints
(layers.{i}.blocks.{j}.attn.qkv, attn.relative_position_bias_table, downsample.reduction, ...)
so that converting them is a key mapping.

Two documented choices: a window larger than the feature map along a dimension is clipped to it
(and that dimension is not shifted), as in Video Swin and the classification Swin; tokens added
by padding to a multiple of the window are masked out of the attention, so padding never changes
the features of real positions. `WindowOptions` switches each choice to what the detection Swin
and the Video Swin used by ReferFormer compute, so that their checkpoints give their numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from detectron2.config import CfgNode
from detectron2.modeling import Backbone

__all__ = [
    "PatchMerging",
    "SwinBackboneBase",
    "SwinBlock",
    "SwinStage",
    "WindowAttention",
    "WindowOptions",
]

STAGE_NAMES = ("res2", "res3", "res4", "res5")
Size3 = tuple[int, int, int]
MASKED = -100.0  # added to attention logits between tokens that must not attend to each other


@dataclass(frozen=True)
class WindowOptions:
    """How windows treat feature maps smaller than the window and the tokens added by padding.

    clip_window: a window larger than the map along a dimension shrinks to it and that dimension
        is not shifted (Video Swin, classification Swin); False pads the map up to the full
        window and shifts it as usual (detection Swin).
    mask_padding: tokens added by padding never serve as keys; False lets them act as keys (the
        zero vectors after norm1), as the official implementations do.
    truncated_bias: a clipped window of N tokens reads the bias table through the first N x N
        entries of the full window's index (official Video Swin) rather than through its own
        relative offsets.
    """

    clip_window: bool = True
    mask_padding: bool = True
    truncated_bias: bool = False


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability `p`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Two-layer feed-forward network with GELU (names fc1, fc2 as in the checkpoints)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def effective_window(window: Size3, shift: Size3, size: Size3) -> tuple[Size3, Size3]:
    """Clips the window to the feature size; a clipped dimension is not shifted."""
    eff_window, eff_shift = [], []
    for w, s, n in zip(window, shift, size):
        eff_window.append(min(w, n))
        eff_shift.append(0 if n <= w else s)
    return tuple(eff_window), tuple(eff_shift)


def window_partition(x: Tensor, window: Size3) -> Tensor:
    """B x D x H x W x C (multiples of the window) -> (B * windows) x N x C, N = window volume."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: Tensor, window: Size3, b: int, size: Size3) -> Tensor:
    """Inverse of `window_partition`: (B * num_windows) x N x C -> B x D x H x W x C."""
    d, h, w = size
    wd, wh, ww = window
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


@lru_cache(maxsize=64)
def relative_position_index(window: Size3, table_window: Size3, device: torch.device) -> Tensor:
    """N x N indices into a bias table built for `table_window` (>= `window`), for every pair
    (query i, key j) of a `window`, from the offset coords_i - coords_j."""
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in window], indexing="ij")).flatten(
        1
    )
    rel = coords[:, :, None] - coords[:, None, :]  # 3 x N x N
    span_h, span_w = 2 * table_window[1] - 1, 2 * table_window[2] - 1
    index = (rel[0] + table_window[0] - 1) * span_h * span_w
    index += (rel[1] + table_window[1] - 1) * span_w + (rel[2] + table_window[2] - 1)
    return index.to(device)


def _region_slices(n: int, window: int, shift: int) -> tuple[slice, ...]:
    if shift == 0:
        return (slice(None),)
    return (slice(0, n - window), slice(n - window, n - shift), slice(n - shift, n))


@lru_cache(maxsize=64)
def window_labels(
    padded: Size3, size: Size3, window: Size3, shift: Size3, device: torch.device
) -> tuple[Tensor, Tensor] | None:
    """Per window token: the shift region (num_windows x N, long) and whether it is a real
    token rather than padding (num_windows x N, bool); None if nothing needs masking.

    After the cyclic shift, a window may gather tokens from regions that are not neighbours in
    the image; they must be kept apart. Tokens of the padding never serve as keys. Only these
    compact labels are cached; the N x N masks are built per call (they can be large).
    """
    if not any(shift) and padded == size:
        return None
    region = torch.zeros(padded, dtype=torch.long)
    count = 0
    for sd in _region_slices(padded[0], window[0], shift[0]):
        for sh in _region_slices(padded[1], window[1], shift[1]):
            for sw in _region_slices(padded[2], window[2], shift[2]):
                region[sd, sh, sw] = count
                count += 1
    valid = torch.zeros(padded, dtype=torch.bool)
    valid[: size[0], : size[1], : size[2]] = True
    valid = torch.roll(valid, shifts=[-s for s in shift], dims=(0, 1, 2))
    region = window_partition(region[None, ..., None], window).squeeze(-1)
    valid = window_partition(valid[None, ..., None], window).squeeze(-1)
    return region.to(device), valid.to(device)


def attention_mask(labels: tuple[Tensor, Tensor], dtype: torch.dtype) -> Tensor:
    """num_windows x N x N additive mask from `window_labels`."""
    region, valid = labels
    blocked = (region[:, :, None] != region[:, None, :]) | ~valid[:, None, :]
    return torch.zeros(blocked.shape, dtype=dtype, device=region.device).masked_fill_(
        blocked, MASKED
    )


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias."""

    def __init__(
        self, dim: int, window: Size3, num_heads: int, qkv_bias: bool, truncated_bias: bool = False
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin: width {dim} is not divisible by {num_heads} heads")
        self.window = window
        self.num_heads = num_heads
        self.truncated_bias = truncated_bias
        table_size = (2 * window[0] - 1) * (2 * window[1] - 1) * (2 * window[2] - 1)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def relative_position_bias(self, window: Size3) -> Tensor:
        """heads x N x N bias for a (possibly clipped) window."""
        table = self.relative_position_bias_table
        if self.truncated_bias:
            n = window[0] * window[1] * window[2]
            index = relative_position_index(self.window, self.window, table.device)[:n, :n]
        else:
            index = relative_position_index(window, self.window, table.device)
        n = index.shape[0]
        return table[index.reshape(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(
        self, x: Tensor, window: Size3, labels: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """x: (B * num_windows) x N x C; labels: `window_labels` of the map, or None."""
        bw, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(x).view(bw, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.relative_position_bias(window).to(q.dtype)
        if labels is not None:  # group windows so that the mask broadcasts over the batch
            mask = attention_mask(labels, q.dtype)
            num_windows = mask.shape[0]
            bias = (bias[None] + mask[:, None]).reshape(1, num_windows * heads, n, n)
            q, k, v = (t.reshape(bw // num_windows, num_windows * heads, n, -1) for t in (q, k, v))
        else:
            bias = bias[None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.reshape(bw, heads, n, -1).transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    """(Shifted-)window attention and MLP, each a pre-norm residual branch."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: Size3,
        shift: Size3,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: float,
        options: WindowOptions = WindowOptions(),
    ) -> None:
        super().__init__()
        self.window, self.shift, self.options = window, shift, options
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads, qkv_bias, options.truncated_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        b, d, h, w, _ = x.shape
        size = (d, h, w)
        if self.options.clip_window:
            window, shift = effective_window(self.window, self.shift, size)
        else:
            window, shift = self.window, self.shift
        padded = tuple(-(-n // k) * k for n, k in zip(size, window))
        y = self.norm1(x)
        if padded != size:
            y = F.pad(y, (0, 0, 0, padded[2] - w, 0, padded[1] - h, 0, padded[0] - d))
        if any(shift):
            y = torch.roll(y, shifts=[-s for s in shift], dims=(1, 2, 3))
        valid_size = size if self.options.mask_padding else padded
        labels = window_labels(padded, valid_size, window, shift, x.device)
        y = self.attn(window_partition(y, window), window, labels)
        y = window_reverse(y, window, b, padded)
        if any(shift):
            y = torch.roll(y, shifts=list(shift), dims=(1, 2, 3))
        x = x + self.drop_path(y[:, :d, :h, :w])
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Halves H and W (not D): concatenates 2x2 neighbours (4C) and projects them to 2C."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        _, _, h, w, _ = x.shape
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        # Neighbour order (row, col offsets) (0,0), (1,0), (0,1), (1,1) as in the checkpoints.
        x = torch.cat(
            [x[:, :, 0::2, 0::2], x[:, :, 1::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 1::2]],
            dim=-1,
        )
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """`depth` blocks alternating regular and shifted windows, then an optional PatchMerging."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window: Size3,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path: list[float],
        downsample: bool,
        use_checkpoint: bool,
        options: WindowOptions = WindowOptions(),
    ) -> None:
        super().__init__()
        half = tuple(k // 2 for k in window)
        self.blocks = nn.ModuleList(
            SwinBlock(
                dim,
                num_heads,
                window,
                (0, 0, 0) if j % 2 == 0 else half,
                mlp_ratio,
                qkv_bias,
                drop_path[j],
                options,
            )
            for j in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Returns (stage output, input of the next stage or None)."""
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else None)


class SwinBackboneBase(Backbone):
    """The four Swin stages, with a LayerNorm on every returned stage (norm{i}) when `out_norm`
    (Video Swin as ReferFormer uses it has none); subclasses add the patch embedding
    (`patch_embed`) and the input layout."""

    def __init__(
        self,
        *,
        embed_dim: int,
        depths: list[int],
        num_heads: list[int],
        window: Size3,
        mlp_ratio: float,
        qkv_bias: bool,
        drop_path_rate: float,
        out_features: list[str],
        use_checkpoint: bool,
        config_prefix: str,
        window_options: WindowOptions = WindowOptions(),
        out_norm: bool = True,
    ) -> None:
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4:
            raise ValueError(
                f"{config_prefix}.DEPTHS / NUM_HEADS need 4 entries, got {depths} / {num_heads}"
            )
        if not out_features or set(out_features) - set(STAGE_NAMES):
            raise ValueError(
                f"{config_prefix}.OUT_FEATURES={out_features}: choose among {STAGE_NAMES}"
            )
        if any(k < 1 for k in window):
            raise ValueError(f"{config_prefix}.WINDOW_SIZE={window}: must be positive")
        self.embed_dim = embed_dim
        self._out_features = [n for n in STAGE_NAMES if n in out_features]
        num_stages = max(STAGE_NAMES.index(n) for n in out_features) + 1
        total = sum(depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            start = sum(depths[:i])
            self.layers.append(
                SwinStage(
                    dim=embed_dim * 2**i,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window=window,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    drop_path=rates[start : start + depths[i]],
                    downsample=i < num_stages - 1,
                    use_checkpoint=use_checkpoint,
                    options=window_options,
                )
            )
        self._out_feature_channels = {}
        self._out_feature_strides = {}
        self.out_norm = out_norm
        for name in self._out_features:
            i = STAGE_NAMES.index(name)
            if out_norm:
                self.add_module(f"norm{i}", nn.LayerNorm(embed_dim * 2**i))
            self._out_feature_channels[name] = embed_dim * 2**i
            self._out_feature_strides[name] = 4 * 2**i
        self.apply(_init_weights)

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """x: B x D x H x W x C embedded patches -> name -> (B * D) x C_i x H_i x W_i."""
        outputs = {}
        for i, layer in enumerate(self.layers):
            out, x = layer(x)
            name = STAGE_NAMES[i]
            if name in self._out_features:
                if self.out_norm:
                    out = getattr(self, f"norm{i}")(out)
                outputs[name] = out.flatten(0, 1).permute(0, 3, 1, 2).contiguous()
        return outputs


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Zero-pads the last two dimensions (H, W) at the end to multiples of `multiple`."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x


def swin_kwargs(node: CfgNode) -> dict:
    """Constructor kwargs shared by both Swin backbones from a MODEL.SWIN-like config node.

    WINDOW_SIZE is left to the caller: an int for the 2D Swin, (T, H, W) for Video Swin.
    """
    return {
        "embed_dim": node.EMBED_DIM,
        "depths": list(node.DEPTHS),
        "num_heads": list(node.NUM_HEADS),
        "mlp_ratio": node.MLP_RATIO,
        "qkv_bias": node.QKV_BIAS,
        "drop_path_rate": node.DROP_PATH_RATE,
        "patch_norm": node.PATCH_NORM,
        "out_features": list(node.OUT_FEATURES),
        "use_checkpoint": node.USE_CHECKPOINT,
        "window_options": WindowOptions(
            clip_window=node.CLIP_WINDOW,
            mask_padding=node.MASK_PADDING,
            truncated_bias=node.TRUNCATED_BIAS_INDEX,
        ),
        "out_norm": node.OUT_NORM,
    }

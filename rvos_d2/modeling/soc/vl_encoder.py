"""SOC's vision-language encoder: ReferFormer's projection, position encoding and deformable
encoder (shared parts), with SOC's two-stream multi-modal fusion before the encoder."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from rvos_d2.modeling.heads.input_projection import MultiScaleProjection
from rvos_d2.modeling.heads.vision_language_fpn import sine_text_position
from rvos_d2.modeling.registry import VL_ENCODER_REGISTRY
from rvos_d2.modeling.soc.fusion import MultiModalFusion
from rvos_d2.modeling.transformer import DeformableTransformerEncoder, PositionEmbeddingSine
from rvos_d2.modeling.utils import resize_mask
from rvos_d2.modeling.vl_encoder import check_features

from detectron2.config import CfgNode, configurable
from detectron2.layers import ShapeSpec

__all__ = ["MultiModalVLEncoder"]


@VL_ENCODER_REGISTRY.register()
class MultiModalVLEncoder(nn.Module):
    """Projects the backbone maps (plus strided extra levels), fuses them with the expression
    (MMF, parameters shared by all levels) and runs the deformable encoder.

    L2V: every projected position of every level is gated by the words it reads (keys carry a
    1-D sine position). V2L: the words are gated by what they read from all frames of the clip
    at the coarsest backbone level (keys carry the 2-D sine position); the official model runs
    V2L on every backbone level but uses only this last one (the textual guidance of Eq. 5),
    so only it is computed. Outputs: the encoder's dict plus "pos", "masks" (per level) and
    "fused_words" (B x L x C, one per clip).
    """

    @configurable
    def __init__(
        self,
        *,
        in_features: list[str],
        in_channels: list[int],
        encoder: DeformableTransformerEncoder,
        num_heads: int,
        fusion_mode: str,
    ):
        super().__init__()
        hidden = encoder.d_model
        self.in_features = in_features
        self.input_proj = MultiScaleProjection(in_channels, hidden, encoder.n_levels)
        self.fusion = MultiModalFusion(hidden, num_heads, fusion_mode)
        self.position = PositionEmbeddingSine(hidden // 2, normalize=True)
        self.encoder = encoder

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> dict[str, Any]:
        names = list(cfg.MODEL.VL_ENCODER.IN_FEATURES)
        check_features(input_shape, names, "MODEL.VL_ENCODER.IN_FEATURES")
        return {
            "in_features": names,
            "in_channels": [input_shape[n].channels for n in names],
            "encoder": DeformableTransformerEncoder(cfg),
            "num_heads": cfg.MODEL.DEFORMABLE_TRANSFORMER.NHEADS,
            "fusion_mode": cfg.MODEL.SOC.FUSION,
        }

    def forward(
        self,
        features: dict[str, Tensor],
        padding: Tensor,
        words: Tensor,
        word_mask: Tensor,
        num_frames: int,
    ) -> dict[str, Any]:
        """features: backbone maps of F = B*T frames (clip-major); padding F x H x W (True =
        padding); words F x L x C with word_mask F x L (each clip's words repeated per frame)."""
        srcs = self.input_proj([features[n] for n in self.in_features])
        masks = [resize_mask(padding, s.shape[-2:]) for s in srcs]
        pos = [self.position(s, m) for s, m in zip(srcs, masks)]
        word_pos = sine_text_position(word_mask, words.shape[-1]).to(words.dtype)
        fused = [self._fuse_vision(s, words, word_mask, word_pos) for s in srcs]
        last = len(self.in_features) - 1
        fused_words = self.fusion.fuse_language(
            words[::num_frames],
            _clip_tokens(srcs[last], num_frames),
            masks[last].flatten(1).unflatten(0, (-1, num_frames)).flatten(1),
            _clip_tokens(pos[last], num_frames),
        )
        enc = self.encoder(fused, masks, pos)
        return {**enc, "pos": pos, "masks": masks, "fused_words": fused_words}

    def _fuse_vision(self, src: Tensor, words: Tensor, word_mask: Tensor, word_pos: Tensor):
        flat = src.flatten(2).transpose(1, 2)
        fused = self.fusion.fuse_vision(flat, words, word_mask, word_pos)
        return fused.transpose(1, 2).reshape(src.shape)


def _clip_tokens(maps: Tensor, num_frames: int) -> Tensor:
    """F x C x h x w maps of B clips -> B x (T h w) x C tokens, frame-major within a clip."""
    tokens = maps.flatten(2).transpose(1, 2)  # F x hw x C
    return tokens.unflatten(0, (-1, num_frames)).flatten(1, 2)

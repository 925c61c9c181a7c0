"""STCN (Cheng et al., NeurIPS 2021): key/value encoders, memory read and decoder.

Keys come from one encoder shared by query and memory frames; a memory frame's values come
from a second encoder that also sees the object's mask and the other objects' masks and is
fused with the key encoder's stride-16 map. A query frame reads the memory through an L2
affinity (top-k softmax at inference) and a decoder with stride-8/4 skip connections turns the
readout into one mask logit map per object. With `matching="cfbi"`, CFBI-style foreground /
background matching maps (rvos_d2.modeling.propagation.matching) join the decoder's input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.propagation.aggregation import others_sum
from rvos_d2.modeling.propagation.blocks import FeatureFusion, ResBlock, UpsampleBlock
from rvos_d2.modeling.propagation.matching import FgBgMatching, MatchingContext
from rvos_d2.modeling.propagation.memory import MemoryBank, read_memory
from rvos_d2.modeling.propagation.resnet import ResNetTrunk
from rvos_d2.modeling.registry import PROPAGATION_REGISTRY

from detectron2.config import configurable

SIZE_DIVISIBILITY = 16  # frames are padded to a multiple of the key stride
MATCHING_TYPES = ("stcn", "cfbi")


@dataclass
class KeyFeatures:
    """Key-encoder outputs of frames (batch first): key, compressed stride-16 map, skips."""

    key: Tensor  # B x C_k x H/16 x W/16, projected key
    key_comp: Tensor  # B x C_v x H/16 x W/16, decoder input next to the readout
    f16: Tensor  # B x C x H/16 x W/16, fused into the memory values
    f8: Tensor  # B x C x H/8 x W/8, decoder skip
    f4: Tensor  # B x C x H/4 x W/4, decoder skip

    def __getitem__(self, index) -> KeyFeatures:
        return KeyFeatures(*(getattr(self, n)[index] for n in self.__dataclass_fields__))


class ValueEncoder(nn.Module):
    """ResNet trunk on (frame, object mask, other objects' masks), fused with key features."""

    def __init__(self, depth: int, width: int, key_channels: int, value_dim: int):
        super().__init__()
        self.trunk = ResNetTrunk(depth, in_channels=5, width=width, bias=True)
        self.fusion = FeatureFusion(self.trunk.out_channels["res4"] + key_channels, value_dim)

    def forward(self, image: Tensor, key_f16: Tensor, masks: Tensor, others: Tensor) -> Tensor:
        x = torch.cat([image, masks, others], dim=1)
        return self.fusion(self.trunk(x)["res4"], key_f16)


class Decoder(nn.Module):
    """(readout, compressed key) at stride 16 -> mask logits at full resolution."""

    def __init__(self, in_channels: int, f8_channels: int, f4_channels: int, dims: tuple[int, int]):
        super().__init__()
        mid, out = dims
        self.compress = ResBlock(in_channels, mid)
        self.up16 = UpsampleBlock(f8_channels, mid, out)
        self.up8 = UpsampleBlock(f4_channels, out, out)
        self.pred = nn.Conv2d(out, 1, 3, padding=1)

    def forward(self, x: Tensor, f8: Tensor, f4: Tensor) -> Tensor:
        x = self.up8(f4, self.up16(f8, self.compress(x)))
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)


@PROPAGATION_REGISTRY.register()
class STCNNetwork(nn.Module):
    """STCN's network; frames in are RGB uint8 (or 0-255 float), normalised here."""

    @configurable
    def __init__(
        self,
        *,
        key_encoder_depth: int,
        value_encoder_depth: int,
        encoder_width: int,
        key_dim: int,
        value_dim: int,
        decoder_dim: int,
        top_k: int,
        matching: str = "stcn",
        local_radius: int = 4,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
    ):
        """
        Args:
            key_encoder_depth, value_encoder_depth: ResNet depths (STCN: 50 and 18).
            encoder_width: stem channels of both encoders (64 in standard ResNets).
            key_dim, value_dim, decoder_dim: channels of keys, values, decoder maps.
            top_k: memory entries kept per query position at inference (training: all).
            matching: "stcn" (memory read only) or "cfbi" (plus fg/bg matching maps).
            local_radius: window radius of the local matching, in stride-16 positions.
            pixel_mean, pixel_std: RGB normalisation in 0-255 units.
        """
        super().__init__()
        if matching not in MATCHING_TYPES:
            raise ValueError(
                f"MODEL.PROPAGATION.MATCHING={matching!r}: expected one of {MATCHING_TYPES}"
            )
        self.matching = FgBgMatching(local_radius) if matching == "cfbi" else None
        extra = FgBgMatching.num_maps if self.matching is not None else 0
        self.key_encoder = ResNetTrunk(key_encoder_depth, width=encoder_width, bias=False)
        channels = self.key_encoder.out_channels
        self.key_proj = nn.Conv2d(channels["res4"], key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight)  # as STCN: keys start spread out, not collapsed
        nn.init.zeros_(self.key_proj.bias)
        self.key_comp = nn.Conv2d(channels["res4"], value_dim, 3, padding=1)
        self.value_encoder = ValueEncoder(
            value_encoder_depth, encoder_width, channels["res4"], value_dim
        )
        self.decoder = Decoder(
            2 * value_dim + extra, channels["res3"], channels["res2"], (value_dim, decoder_dim)
        )
        self.top_k = top_k
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg) -> dict:
        p = cfg.MODEL.PROPAGATION
        return {
            "key_encoder_depth": p.KEY_ENCODER_DEPTH,
            "value_encoder_depth": p.VALUE_ENCODER_DEPTH,
            "encoder_width": p.ENCODER_WIDTH,
            "key_dim": p.KEY_DIM,
            "value_dim": p.VALUE_DIM,
            "decoder_dim": p.DECODER_DIM,
            "top_k": p.TOP_K,
            "matching": p.MATCHING,
            "local_radius": p.MATCHING_LOCAL_RADIUS,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
        }

    def normalize(self, images: Tensor) -> Tensor:
        """RGB 0-255 frames (..., 3, H, W) -> normalised float frames."""
        return (images.to(self.pixel_mean.device, torch.float32) - self.pixel_mean) / self.pixel_std

    def encode_key(self, images: Tensor) -> KeyFeatures:
        """Normalised, padded frames (B, 3, H, W) -> key features."""
        feats = self.key_encoder(images)
        f16 = feats["res4"]
        return KeyFeatures(
            self.key_proj(f16), self.key_comp(f16), f16, feats["res3"], feats["res2"]
        )

    def encode_value(self, image: Tensor, key_f16: Tensor, masks: Tensor) -> Tensor:
        """One normalised frame (3, H, W), its key f16 (C, h, w) and K object masks or
        probabilities (K, H, W) -> memory values (K, C_v, h, w)."""
        k = masks.shape[0]
        masks = masks.unsqueeze(1)
        image = image.unsqueeze(0).expand(k, -1, -1, -1)
        key_f16 = key_f16.unsqueeze(0).expand(k, -1, -1, -1)
        return self.value_encoder(image, key_f16, masks, others_sum(masks))

    def decode(self, readout: Tensor, feats: KeyFeatures, context: MatchingContext | None = None):
        """Readout (K, C_v, h, w) for one frame's features (unbatched) -> logits (K, H, W);
        `context` (reference and previous frame) is needed with CFBI matching."""
        k = readout.shape[0]
        parts = [readout, feats.key_comp.unsqueeze(0).expand(k, -1, -1, -1)]
        if self.matching is not None:
            if context is None:
                raise ValueError("CFBI matching needs the reference and previous frames")
            parts.append(self.matching(feats.key, context))
        x = torch.cat(parts, dim=1)
        f8 = feats.f8.unsqueeze(0).expand(k, -1, -1, -1)
        f4 = feats.f4.unsqueeze(0).expand(k, -1, -1, -1)
        return self.decoder(x, f8, f4).squeeze(1)

    def segment(
        self, memory: MemoryBank, feats: KeyFeatures, context: MatchingContext | None = None
    ) -> Tensor:
        """Per-object mask logits (K, H, W) of one frame (unbatched features) read from memory."""
        return self.decode(memory.read(feats.key, self.top_k), feats, context)

    def segment_dense(
        self,
        memory_keys: Tensor,
        memory_values: Tensor,
        feats: KeyFeatures,
        context: MatchingContext | None = None,
    ) -> Tensor:
        """As `segment` for raw memory tensors (C_k, N), (K, C_v, N), full softmax (training)."""
        readout = read_memory(memory_keys, memory_values, feats.key, None)
        return self.decode(readout, feats, context)

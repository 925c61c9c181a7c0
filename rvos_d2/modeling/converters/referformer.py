"""Official ReferFormer checkpoints (github.com/wjn922/ReferFormer) -> rvos_d2 ReferFormer.

`convert_referformer` renames every key of an official state dict (any released backbone:
ResNet-50/101, Swin-T/B/L, Video-Swin-T/S/B) to the rvos_d2 model built from the matching
config in configs/ReferFormer; a key it does not know raises `UnmappedKeyError` naming it.
Dropped on purpose: the Swin `relative_position_index` buffers (rvos_d2 recomputes them), the
text model's `position_ids` buffer, and the decoder's second name for the shared box heads.

`rule_state_dict` regenerates the deterministic weights of the reference fixtures
(../shared/fixtures/referformer_official/README.md, "Weights: the exact rule").
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from rvos_d2.modeling.converters.backbones import resnet_key
from rvos_d2.modeling.converters.registry import CHECKPOINT_FORMAT_REGISTRY, CheckpointFormat

__all__ = [
    "UnmappedKeyError",
    "convert_referformer",
    "is_referformer_checkpoint",
    "rule_state_dict",
    "rule_tensor",
]

BACKBONE = "backbone.0.body."
TEXT_MODEL = "text_encoder."
DECODER_BOX_ALIAS = "transformer.decoder.bbox_embed."  # the same tensors as bbox_embed.*
DROPPED_SUFFIXES = ("relative_position_index", "embeddings.position_ids", "num_batches_tracked")
TRANSFORMER_BACKBONE_LEVELS = 3  # input_proj 0..2 project backbone maps, later ones stride

# Official name -> rvos_d2 name, for everything but the backbone (first full match wins).
HEAD_RULES: list[tuple[str, str]] = [
    (r"transformer\.level_embed", r"vl_encoder.encoder.level_embed"),
    (r"transformer\.encoder\.layers\.(.+)", r"vl_encoder.encoder.layers.\1"),
    (r"fusion_module\.multihead_attn\.(.+)", r"vl_encoder.early_fusion.attn.\1"),
    (r"transformer\.decoder\.layers\.(.+)", r"query_decoder.decoder.layers.\1"),
    (r"transformer\.reference_points\.(weight|bias)", r"query_decoder.reference_points.\1"),
    (r"query_embed\.weight", r"query_decoder.query_embed.weight"),
    (r"class_embed\.(\d+)\.(weight|bias)", r"query_decoder.class_embed.\1.\2"),
    (
        r"bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)",
        r"query_decoder.decoder.bbox_embed.\1.layers.\2.\3",
    ),
    (r"resizer\.fc\.(weight|bias)", r"text_encoder.word_resizer.fc.\1"),
    (r"resizer\.layer_norm\.(weight|bias)", r"text_encoder.word_resizer.norm.\1"),
    (r"controller\.layers\.(\d+)\.(weight|bias)", r"mask_branch.head.controller.layers.\1.\2"),
    (r"pixel_decoder\.mask_features\.(weight|bias)", r"mask_branch.fpn.mask_proj.\1"),
]
INPUT_PROJ_LATERAL = "vl_encoder.input_proj.lateral"  # levels fed by the backbone
INPUT_PROJ_EXTRA = "vl_encoder.input_proj.extra"  # strided extra levels
FPN = "mask_branch.fpn"  # official pixel_decoder.{adapter,layer,cross_attn}_<k>, k = 1..4
FPN_PARTS = {"adapter": "lateral", "layer": "output", "cross_attn": "blocks"}
TEXT_MODEL_TARGET = "text_encoder.language_model."


class UnmappedKeyError(ValueError):
    """An official checkpoint key that the converter does not know."""


def rule_tensor(key: str, shape: Iterable[int], seed: int) -> Tensor:
    """The fixtures' deterministic value of one official tensor (float32)."""
    shape = tuple(int(s) for s in shape)
    g = torch.Generator().manual_seed(seed + zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape)
    if key.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if key.endswith("running_mean"):
        return 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1 and key.endswith(".weight"):
        return 1 + 0.1 * torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 0.02 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g) / math.sqrt(float(math.prod(shape[1:])))


def rule_state_dict(rows: Iterable[tuple[str, list[int]]], seed: int) -> dict[str, Tensor]:
    """Rule values for the (key, shape) rows of an official state dict, leaving out what the
    rule exempts: the text model (pretrained weights) and the Swin index buffers."""
    return {
        key: rule_tensor(key, shape, seed)
        for key, shape, *_ in rows
        if not key.startswith(TEXT_MODEL) and not key.endswith("relative_position_index")
    }


def is_referformer_checkpoint(weights: dict[str, Tensor]) -> bool:
    """Whether a state dict has the official ReferFormer layout."""
    markers = ("pixel_decoder.mask_features.weight", "controller.layers.0.weight")
    return all(k in weights for k in markers) and any(k.startswith(BACKBONE) for k in weights)


def convert_referformer(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official ReferFormer state dict -> rvos_d2 ReferFormer state dict (see module doc)."""
    return rename_official(weights, "ReferFormer", _backbone_converter(weights), _convert_head)


def rename_official(
    weights: dict[str, Tensor],
    method: str,
    convert_backbone: Callable[[str], str | None],
    convert_head: Callable[[str], str | None],
) -> dict[str, Tensor]:
    """Renames an official Deformable-DETR-style state dict (ReferFormer's layout, shared by
    SOC): index buffers dropped, the decoder's alias of the box heads folded into `bbox_embed`,
    backbone keys through `convert_backbone`, the text model kept, the rest through
    `convert_head`. A key without a new name, or two keys with one, is an UnmappedKeyError."""
    out: dict[str, Tensor] = {}
    for key, value in weights.items():
        if key.endswith(DROPPED_SUFFIXES):
            continue
        if key.startswith(DECODER_BOX_ALIAS):
            if "bbox_embed." + key[len(DECODER_BOX_ALIAS) :] in weights:
                continue
            key = "bbox_embed." + key[len(DECODER_BOX_ALIAS) :]
        if key.startswith(BACKBONE):
            new = convert_backbone(key[len(BACKBONE) :])
        elif key.startswith(TEXT_MODEL):
            new = TEXT_MODEL_TARGET + key[len(TEXT_MODEL) :]
        else:
            new = convert_head(key)
        if new is None:
            raise UnmappedKeyError(f"official {method} key {key!r} has no rvos_d2 name")
        if new in out:
            raise UnmappedKeyError(f"official {method} key {key!r}: {new!r} given twice")
        out[new] = value
    return out


def input_proj_key(key: str) -> str | None:
    """The rvos_d2 name of an official `input_proj.<level>.<0|1>.*` key (None for others)."""
    match = re.fullmatch(r"input_proj\.(\d+)\.([01])\.(weight|bias)", key)
    if match is None:
        return None
    level, part, name = int(match.group(1)), match.group(2), match.group(3)
    if level < TRANSFORMER_BACKBONE_LEVELS:
        return f"{INPUT_PROJ_LATERAL}.{level}.{part}.{name}"
    return f"{INPUT_PROJ_EXTRA}.{level - TRANSFORMER_BACKBONE_LEVELS}.{part}.{name}"


def head_key(key: str, rules: Iterable[tuple[str, str]]) -> str | None:
    """The rvos_d2 name of an official head key by the first of `rules` (pattern, replacement)
    that matches it in full, else by the input-projection rule (None when neither applies)."""
    for pattern, replacement in rules:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, replacement, key)
    return input_proj_key(key)


def _convert_head(key: str) -> str | None:
    renamed = head_key(key, HEAD_RULES)
    if renamed is not None:
        return renamed
    match = re.fullmatch(r"pixel_decoder\.(adapter|layer|cross_attn)_(\d)\.(.+)", key)
    if match:
        part, k, rest = match.groups()
        return f"{FPN}.{FPN_PARTS[part]}.{int(k) - 1}.{rest}"
    return None


def _backbone_converter(weights: dict[str, Tensor]):
    """The renaming of backbone keys (without the official `backbone.0.body.` prefix)."""
    if BACKBONE + "conv1.weight" in weights:
        return _resnet_key
    if BACKBONE + "patch_embed.proj.weight" in weights:
        return _swin_key
    raise UnmappedKeyError(
        "official ReferFormer checkpoint: unknown backbone (expected torchvision ResNet, Swin or "
        f"Video Swin keys under {BACKBONE!r})"
    )


def _resnet_key(key: str) -> str | None:
    """torchvision ResNet -> detectron2 ResNet (FrozenBN buffers included)."""
    new = resnet_key(key)
    return None if new is None else "backbone." + new


def _swin_key(key: str) -> str | None:
    """Swin (detection layout, norm0..3) / Video Swin (downsamples.<i>) -> rvos_d2 Swin."""
    key = re.sub(r"^downsamples\.(\d+)\.", r"layers.\1.downsample.", key)
    if not re.fullmatch(
        r"patch_embed\.(proj|norm)\.(weight|bias)|norm[0-3]\.(weight|bias)|"
        r"layers\.\d+\.(downsample\.(norm\.(weight|bias)|reduction\.weight)|blocks\.\d+\..+)",
        key,
    ):
        return None
    return "backbone." + key


CHECKPOINT_FORMAT_REGISTRY.register_as("referformer")(
    CheckpointFormat(convert_referformer, is_referformer_checkpoint, prefix="", priority=2)
)

"""Converters of classification / detection backbone checkpoints (torchvision and timm ResNet,
official, timm and detection Swin, Kinetics Video Swin) into rvos_d2 backbone names."""

from __future__ import annotations

import re

from torch import Tensor

from rvos_d2.modeling.converters.registry import (
    CHECKPOINT_FORMAT_REGISTRY,
    CheckpointFormat,
    CheckpointFormatError,
)

__all__ = ["convert_resnet", "convert_swin", "convert_video_swin", "resnet_key"]

SWIN_BUFFERS = ("relative_position_index", "attn_mask")


def is_resnet(weights: dict[str, Tensor]) -> bool:
    """A torchvision / timm ResNet; detectron2 ResNets and deep stems are refused by name."""
    if "stem.conv1.weight" in weights or "res2.0.conv1.weight" in weights:
        raise CheckpointFormatError("already a detectron2 ResNet checkpoint: nothing to convert")
    if "conv1.0.weight" in weights and "layer1.0.conv1.weight" in weights:
        raise CheckpointFormatError(
            "ResNet with a deep (3-conv) stem, e.g. timm resnet*d: detectron2's ResNet has a "
            "single 7x7 stem conv; use a plain ResNet checkpoint"
        )
    return "conv1.weight" in weights and "layer1.0.conv1.weight" in weights


def _patch_embed_dims(weights: dict[str, Tensor]) -> int | None:
    embed = weights.get("patch_embed.proj.weight")
    return None if embed is None else embed.dim()


def resnet_key(key: str) -> str | None:
    """A torchvision / timm ResNet key -> detectron2 ResNet (BatchNorm buffers included), or None
    for a key outside the stem and the four stages."""
    if key.startswith(("conv1.", "bn1.")):
        new = "stem." + key
    else:
        match = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
        if match is None:
            return None
        new = f"res{int(match.group(1)) + 1}.{match.group(2)}.{match.group(3)}"
    new = re.sub(r"\bbn(\d)\.", r"conv\1.norm.", new)
    new = new.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
    if not re.fullmatch(
        r"(stem\.conv1|res[2-5]\.\d+\.(conv[1-3]|shortcut))(\.norm)?\."
        r"(weight|bias|running_mean|running_var)",
        new,
    ):
        return None
    return new


def convert_resnet(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """torchvision/timm ResNet names -> detectron2 ResNet names."""
    out = {}
    for key, value in weights.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = resnet_key(key)
        if new is None:
            raise CheckpointFormatError(f"ResNet checkpoint: unexpected key {key!r}")
        out[new] = value
    return out


def _convert_swin_common(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drops heads and recomputed buffers, renames the classifier's final norm to norm3."""
    if "absolute_pos_embed" in weights:
        raise CheckpointFormatError(
            "Swin checkpoint with absolute position embedding (ape): not supported"
        )
    out = {}
    for key, value in weights.items():
        if key.startswith(("head.", "cls_head.")) or key.endswith(SWIN_BUFFERS):
            continue
        if key.startswith("norm."):
            key = "norm3." + key[len("norm.") :]
        out[key] = value
    return out


def convert_swin(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official / timm / detection Swin names -> D2SwinTransformer names."""
    timm_layout = "layers.0.downsample.reduction.weight" not in weights and any(
        k.startswith("layers.1.downsample.") for k in weights
    )
    out = {}
    for key, value in _convert_swin_common(weights).items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if timm_layout and match:  # timm merges patches at the start of the next stage
            key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
        out[key] = value
    return out


def convert_video_swin(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Video Swin names -> VideoSwinTransformer names; temporal patch size summed down to 1."""
    out = _convert_swin_common(weights)
    embed = out["patch_embed.proj.weight"]  # C x 3 x t x 4 x 4
    out["patch_embed.proj.weight"] = embed.sum(dim=2, keepdim=True)
    return out


CHECKPOINT_FORMAT_REGISTRY.register_as("resnet")(
    CheckpointFormat(convert_resnet, is_resnet, priority=10)
)
CHECKPOINT_FORMAT_REGISTRY.register_as("swin")(
    CheckpointFormat(convert_swin, lambda w: _patch_embed_dims(w) == 4, priority=10)
)
CHECKPOINT_FORMAT_REGISTRY.register_as("video_swin")(
    CheckpointFormat(convert_video_swin, lambda w: _patch_embed_dims(w) == 5, priority=10)
)

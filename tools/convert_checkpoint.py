#!/usr/bin/env python
"""Converts pretrained backbone checkpoints into detectron2 files that MODEL.WEIGHTS accepts.

Supported inputs (detected from the keys, or forced with --format):
  resnet      torchvision / timm ResNet state dicts (conv1, bn1, layer1..4, fc)
              -> detectron2's ResNet (stem, res2..res5). Use MODEL.RESNETS.STRIDE_IN_1X1 False and
              RGB MODEL.PIXEL_MEAN/STD in 0-255 units ([123.675, 116.28, 103.53] /
              [58.395, 57.12, 57.375]). For ResNet-18/34 also set RES2_OUT_CHANNELS 64.
  swin        official Swin ("model": ...), timm Swin (downsampling at the start of stages 1..3)
              or Swin detection backbones ("state_dict": backbone.*, norm0..3)
              -> rvos_d2 D2SwinTransformer (MODEL.SWIN; WINDOW_SIZE must match the checkpoint).
  video_swin  Video Swin Kinetics checkpoints ("state_dict": backbone.*, cls_head.*)
              -> rvos_d2 VideoSwinTransformer (MODEL.VIDEO_SWIN, WINDOW_SIZE must match).
              The 3D patch embedding of temporal size t (2 in the Kinetics models) is summed over
              time to temporal size 1, as ReferFormer/MTTR do: a clip of t identical frames then
              gives the same embedding as the original kernel.
  stcn        the official STCN network (hkchengrex/STCN `stcn.pth`)
              -> rvos_d2 SpaceTimeMemoryNetwork (configs/Propagation/STCN-R50.yaml); every key is
              renamed (rvos_d2/modeling/propagation/convert.py), an unknown key is an error.
  soc         the released SOC models (RobertLuo1/NeurIPS2023_SOC, "model_state_dict")
              -> rvos_d2 SOC (configs/SOC); every key is renamed
              (rvos_d2/modeling/converters/soc.py), an unknown key is an error.
  referformer the released ReferFormer models (wjn922/ReferFormer, "model"; any backbone)
              -> rvos_d2 ReferFormer (configs/ReferFormer); every key is renamed
              (rvos_d2/modeling/converters/referformer.py), an unknown key is an error.

Dropped on purpose: classifier heads (fc, head, cls_head), BatchNorm num_batches_tracked and the
Swin buffers relative_position_index / attn_mask (rvos_d2 recomputes them). The classifiers'
final LayerNorm `norm` becomes `norm3` (the res5 output norm); norm0..norm2 of the other returned
stages do not exist in classification checkpoints and keep their initialisation.

Each format is a CheckpointFormat in CHECKPOINT_FORMAT_REGISTRY (rvos_d2/modeling/converters).

Usage: tools/convert_checkpoint.py INPUT.pth OUTPUT.pth [--format auto|<registered name>]
"""

from __future__ import annotations

import argparse
import pickle
import sys

import torch
from torch import Tensor

from rvos_d2.engine.checkpoint import atomic_write, check_checkpoint_file
from rvos_d2.modeling.converters import (
    CHECKPOINT_FORMAT_REGISTRY,
    CheckpointFormatError,
    detect_format,
)
from rvos_d2.utils.cli import exit_with_error, run_cli

# where training frameworks nest the weights
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")


def load_state_dict(path: str) -> dict[str, Tensor]:
    """Reads a checkpoint without running code from it and returns its flat weight dict."""
    check_checkpoint_file(path)  # missing, empty or truncated: an error naming the file
    try:
        # training scripts (ReferFormer's among them) store their argparse.Namespace beside
        # the weights: allowed as plain data, nothing else is
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointFormatError(
            f"{path}: torch.load(weights_only=True) refused the file, which stores Python objects "
            f"beyond tensors and containers ({e}). Re-save only its state dict and convert that."
        ) from e
    while isinstance(data, dict):
        wrapper = next((k for k in WRAPPER_KEYS if isinstance(data.get(k), dict)), None)
        if wrapper is None:
            break
        data = data[wrapper]
    if not isinstance(data, dict) or not data:
        raise CheckpointFormatError(f"{path}: expected a (possibly nested) state dict")
    weights = {k: v for k, v in data.items() if isinstance(v, Tensor)}
    if not weights:
        raise CheckpointFormatError(f"{path}: no tensors found; keys: {sorted(data)[:10]}")
    weights = _strip_prefix(weights, "module.")
    # detection / video models: keep the backbone (full SOC / ReferFormer models are whole)
    whole = any(spec.whole_model and spec.detect(weights) for _, spec in CHECKPOINT_FORMAT_REGISTRY)
    if not whole and any(k.startswith("backbone.") for k in weights):
        weights = {
            k[len("backbone.") :]: v for k, v in weights.items() if k.startswith("backbone.")
        }
    return weights


def _strip_prefix(weights: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    if all(k.startswith(prefix) for k in weights):
        return {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def convert(weights: dict[str, Tensor], fmt: str = "auto") -> tuple[dict[str, object], str]:
    """Returns (detectron2 checkpoint dict, detected format) for a backbone state dict."""
    if fmt == "auto":
        fmt = detect_format(weights)
    elif fmt not in CHECKPOINT_FORMAT_REGISTRY:
        raise CheckpointFormatError(
            f"--format {fmt!r}: expected auto or one of {CHECKPOINT_FORMAT_REGISTRY.names()}"
        )
    spec = CHECKPOINT_FORMAT_REGISTRY.get(fmt)
    model = {spec.prefix + k: v.contiguous() for k, v in spec.convert(weights).items()}
    checkpoint = {
        "model": model,
        "__author__": f"rvos_d2 tools/convert_checkpoint.py ({fmt})",
        # lets DetectionCheckpointer match the keys by suffix, wherever the backbone sits
        "matching_heuristics": True,
    }
    return checkpoint, fmt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("input", help="pretrained checkpoint (.pth / .pt / .bin)")
    parser.add_argument("output", help="detectron2 checkpoint to write (.pth)")
    parser.add_argument(
        "--format", default="auto", choices=("auto", *CHECKPOINT_FORMAT_REGISTRY.names())
    )
    args = parser.parse_args(argv)
    if not args.output.endswith(".pth"):
        parser.error(f"output {args.output!r}: use a .pth name (detectron2 reads .pkl differently)")
    try:
        checkpoint, fmt = convert(load_state_dict(args.input), args.format)
    except ValueError as e:  # CheckpointFormatError, or a converter naming an unknown key
        exit_with_error(f"{args.input}: {e}")
    with atomic_write(args.output) as f:
        torch.save(checkpoint, f)
    print(f"{args.input} ({fmt}) -> {args.output}: {len(checkpoint['model'])} tensors")


if __name__ == "__main__":
    sys.exit(run_cli(main))

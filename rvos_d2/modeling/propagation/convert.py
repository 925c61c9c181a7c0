"""Official STCN state dicts (hkchengrex/STCN, `stcn.pth`) -> STCNNetwork state dicts.

The released file is the training network's state_dict, whose keys equal the evaluation
network's. Every key is renamed by the rules below; a key no rule covers is an error. A
single-object (stage-0) checkpoint, whose value encoder sees only RGB + mask, gets a zero
weight for the "other objects" input channel, as the official evaluation does.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

# (official pattern, our replacement), applied in order; the first match wins
_RESNET_INNER = [
    (r"\.bn(\d)\.", r".norm\1."),
    (r"\.downsample\.0\.", ".shortcut.conv."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
]
_RULES: list[tuple[str, str, list[tuple[str, str]]]] = [
    # (prefix pattern, replacement, inner renames)
    (r"^key_encoder\.conv1\.", "key_encoder.stem.conv.", []),
    (r"^key_encoder\.bn1\.", "key_encoder.stem.norm.", []),
    (r"^key_encoder\.res2\.", "key_encoder.res2.", _RESNET_INNER),
    (r"^key_encoder\.layer2\.", "key_encoder.res3.", _RESNET_INNER),
    (r"^key_encoder\.layer3\.", "key_encoder.res4.", _RESNET_INNER),
    (r"^value_encoder\.conv1\.", "value_encoder.trunk.stem.conv.", []),
    (r"^value_encoder\.bn1\.", "value_encoder.trunk.stem.norm.", []),
    (r"^value_encoder\.layer1\.", "value_encoder.trunk.res2.", _RESNET_INNER),
    (r"^value_encoder\.layer2\.", "value_encoder.trunk.res3.", _RESNET_INNER),
    (r"^value_encoder\.layer3\.", "value_encoder.trunk.res4.", _RESNET_INNER),
    (
        r"^value_encoder\.fuser\.attention\.ChannelGate\.mlp\.1\.",
        "value_encoder.fusion.attention.channel_mlp.0.",
        [],
    ),
    (
        r"^value_encoder\.fuser\.attention\.ChannelGate\.mlp\.3\.",
        "value_encoder.fusion.attention.channel_mlp.2.",
        [],
    ),
    (
        r"^value_encoder\.fuser\.attention\.SpatialGate\.spatial\.conv\.",
        "value_encoder.fusion.attention.spatial.",
        [],
    ),
    (r"^value_encoder\.fuser\.block([12])\.", r"value_encoder.fusion.block\1.", []),
    (r"^key_proj\.key_proj\.", "key_proj.", []),
    (r"^key_comp\.", "key_comp.", []),
    (r"^decoder\.compress\.", "decoder.compress.", []),
    (r"^decoder\.up_16_8\.skip_conv\.", "decoder.up16.skip_conv.", []),
    (r"^decoder\.up_16_8\.out_conv\.", "decoder.up16.block.", []),
    (r"^decoder\.up_8_4\.skip_conv\.", "decoder.up8.skip_conv.", []),
    (r"^decoder\.up_8_4\.out_conv\.", "decoder.up8.block.", []),
    (r"^decoder\.pred\.", "decoder.pred.", []),
]
_RESBLOCK_SHORTCUT = (r"\.downsample\.(weight|bias)$", r".shortcut.\1")
_TENSOR_NAME = re.compile(r"(weight|bias|running_mean|running_var|num_batches_tracked)$")
VALUE_INPUT_KEY = "value_encoder.conv1.weight"


def is_stcn_state_dict(weights: dict[str, Tensor]) -> bool:
    """True for an official STCN network state dict (key encoder, value fuser, key projection)."""
    return (
        "key_encoder.conv1.weight" in weights
        and "key_proj.key_proj.weight" in weights
        and any(k.startswith("value_encoder.fuser.") for k in weights)
    )


def rename_key(key: str) -> str:
    """Our name of one official key; ValueError if no rule covers it."""
    for pattern, replacement, inner in _RULES:
        if re.match(pattern, key):
            new = re.sub(pattern, replacement, key)
            for inner_pattern, inner_replacement in inner:
                new = re.sub(inner_pattern, inner_replacement, new)
            if not inner:  # residual blocks of the fusion and decoder
                new = re.sub(*_RESBLOCK_SHORTCUT, new)
            if _TENSOR_NAME.search(new):
                return new
    raise ValueError(f"STCN checkpoint: no conversion rule for key {key!r}")


def convert_stcn(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official STCN state dict -> STCNNetwork state dict (every key mapped or an error)."""
    out = {}
    for key, value in weights.items():
        if key == VALUE_INPUT_KEY and value.dim() == 4 and value.shape[1] == 4:
            zeros = value.new_zeros(value.shape[0], 1, *value.shape[2:])
            value = torch.cat([value, zeros], dim=1)  # no "other objects" input yet
        new = rename_key(key)
        if new in out:
            raise ValueError(f"STCN checkpoint: key {key!r} maps onto {new!r} twice")
        out[new] = value
    return out

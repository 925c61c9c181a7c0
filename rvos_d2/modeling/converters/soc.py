"""Official SOC checkpoints (github.com/RobertLuo1/NeurIPS2023_SOC) -> rvos_d2 SOC.

`convert_soc` renames every key of an official state dict (Video-Swin-T/B backbones) to the
rvos_d2 model built from the matching config in configs/SOC; a key it does not know raises
`UnmappedKeyError` naming it. Dropped on purpose, as for ReferFormer: the Swin
`relative_position_index` buffers (rvos_d2 recomputes them), the text model's `position_ids`
buffer and the decoder's second name for the shared box heads (`transformer.decoder.bbox_embed`
is the same module as `bbox_embed`).

`soc_rule_state_dict` regenerates the deterministic weights of the reference fixture
(../shared/fixtures/soc_official/README.md, "Weights: the exact rule"), aliases resolved.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import Tensor

from rvos_d2.modeling.converters.referformer import (
    BACKBONE,
    DECODER_BOX_ALIAS,
    head_key,
    rename_official,
    rule_state_dict,
)
from rvos_d2.modeling.converters.referformer import _swin_key as swin_key
from rvos_d2.modeling.converters.registry import CHECKPOINT_FORMAT_REGISTRY, CheckpointFormat

__all__ = ["convert_soc", "is_soc_checkpoint", "soc_rule_state_dict"]

VOC = "object_cluster."
VL = "vl_encoder."
QD = "query_decoder."
SPATIAL = "mask_branch.decoder."
# official spatial_decoder layer -> rvos_d2 SpatialDecoder block (conv "lay<k>", norm "gn<k>")
SPATIAL_LAYERS = {1: "stem.0", 2: "stem.1", 3: "blocks.0", 4: "blocks.1", 5: "blocks.2"}

# Official name -> rvos_d2 name, for everything but the backbone (first full match wins).
HEAD_RULES: list[tuple[str, str]] = [
    (r"transformer\.level_embed", VL + r"encoder.level_embed"),
    (r"transformer\.encoder\.layers\.(.+)", VL + r"encoder.layers.\1"),
    (r"transformer\.decoder\.layers\.(.+)", QD + r"decoder.layers.\1"),
    (r"transformer\.reference_points\.(weight|bias)", QD + r"reference_points.\1"),
    (r"query_embed\.weight", QD + r"query_embed.weight"),
    (r"class_embed\.(\d+)\.(weight|bias)", QD + r"class_embed.\1.\2"),
    (
        r"bbox_embed\.(\d+)\.layers\.(\d+)\.(weight|bias)",
        QD + r"decoder.bbox_embed.\1.layers.\2.\3",
    ),
    (r"txt_proj\.fc\.(weight|bias)", r"text_encoder.word_resizer.fc.\1"),
    (r"txt_proj\.layer_norm\.(weight|bias)", r"text_encoder.word_resizer.norm.\1"),
    (r"vlf\.multihead_attn\.(.+)", VL + r"fusion.language_to_vision.attn.\1"),
    (r"lvf\.multihead_attn\.(.+)", VL + r"fusion.vision_to_language.attn.\1"),
    (r"controller\.layers\.(\d+)\.(weight|bias)", r"mask_branch.head.controller.layers.\1.\2"),
    (r"spatial_decoder\.out_lay\.(weight|bias)", SPATIAL + r"out.\1"),
    (r"voc\.enc_self_attn\.(\d+)\.self_attn\.(.+)", VOC + r"encoder.\1.self_attn.attn.\2"),
    (r"voc\.enc_self_attn\.(\d+)\.norm\.(.+)", VOC + r"encoder.\1.self_attn.norm.\2"),
    (r"voc\.enc_ffn\.(\d+)\.(.+)", VOC + r"encoder.\1.ffn.\2"),
    (
        r"voc\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(.+)",
        VOC + r"decoder.\1.cross_attn.attn.\2",
    ),
    (
        r"voc\.transformer_cross_attention_layers\.(\d+)\.norm\.(.+)",
        VOC + r"decoder.\1.cross_attn.norm.\2",
    ),
    (
        r"voc\.transformer_self_attention_layers\.(\d+)\.self_attn\.(.+)",
        VOC + r"decoder.\1.self_attn.attn.\2",
    ),
    (
        r"voc\.transformer_self_attention_layers\.(\d+)\.norm\.(.+)",
        VOC + r"decoder.\1.self_attn.norm.\2",
    ),
    (r"voc\.transformer_ffn_layers\.(\d+)\.(.+)", VOC + r"decoder.\1.ffn.\2"),
    (r"voc\.fq_pos\.weight", VOC + "frame_query_pos.weight"),
    (r"voc\.query_embed\.weight", VOC + "query_pos.weight"),
    (r"voc\.decoder_norm\.(weight|bias)", VOC + r"norm.\1"),
]


def soc_rule_state_dict(rows: Iterable[tuple[str, list[int]]], seed: int) -> dict[str, Tensor]:
    """The fixture's weights in the official layout: rule values, with each `bbox_embed.*` key
    taking the value of its `transformer.decoder.bbox_embed.*` alias (the one that loads last)."""
    weights = rule_state_dict(rows, seed)
    for key in [k for k in weights if k.startswith(DECODER_BOX_ALIAS)]:
        weights["bbox_embed." + key[len(DECODER_BOX_ALIAS) :]] = weights[key]
    return weights


def is_soc_checkpoint(weights: dict[str, Tensor]) -> bool:
    """Whether a state dict has the official SOC layout."""
    return any(k.startswith("voc.") for k in weights) and any(
        k.startswith(BACKBONE) for k in weights
    )


def convert_soc(weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official SOC state dict -> rvos_d2 SOC state dict (see module doc)."""
    return rename_official(weights, "SOC", swin_key, _convert_head)


def _convert_head(key: str) -> str | None:
    renamed = head_key(key, HEAD_RULES)
    if renamed is not None:
        return renamed
    match = re.fullmatch(r"spatial_decoder\.(lay|gn)(\d)\.(weight|bias)", key)
    if match and int(match.group(2)) in SPATIAL_LAYERS:
        norm = ".norm" if match.group(1) == "gn" else ""
        return f"{SPATIAL}{SPATIAL_LAYERS[int(match.group(2))]}{norm}.{match.group(3)}"
    match = re.fullmatch(r"spatial_decoder\.adapter(\d)\.(weight|bias)", key)
    if match:
        return f"{SPATIAL}adapters.{int(match.group(1)) - 1}.{match.group(2)}"
    return None


CHECKPOINT_FORMAT_REGISTRY.register_as("soc")(
    CheckpointFormat(convert_soc, is_soc_checkpoint, prefix="", priority=1)
)

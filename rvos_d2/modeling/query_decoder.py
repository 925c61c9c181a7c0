"""Query decoders: encoder memory + expression -> per-layer query states, boxes and scores."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from rvos_d2.modeling.heads.prediction import MLP
from rvos_d2.modeling.heads.reference_search import TextGuidedReference
from rvos_d2.modeling.registry import QUERY_DECODER_REGISTRY
from rvos_d2.modeling.transformer import DeformableTransformerDecoder, refine_boxes, token_centres

from detectron2.config import CfgNode, configurable

__all__ = [
    "add_query_decoder_config",
    "ConditionalQueryDecoder",
    "box_heads",
    "build_query_decoder",
]


def build_query_decoder(cfg: CfgNode) -> nn.Module:
    """The decoder named by MODEL.QUERY_DECODER.NAME."""
    return QUERY_DECODER_REGISTRY.get(cfg.MODEL.QUERY_DECODER.NAME)(cfg)


def box_heads(hidden: int, num_layers: int) -> nn.ModuleList:
    """One box-delta MLP per decoder layer, zero-initialised so that layer 0 starts from its
    reference point with boxes about 0.12 wide (sigmoid(-2))."""
    heads = nn.ModuleList(MLP(hidden, hidden, 4, 3) for _ in range(num_layers))
    for head in heads:
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
    nn.init.constant_(heads[0].layers[-1].bias[2:], -2.0)
    return heads


@QUERY_DECODER_REGISTRY.register()
class ConditionalQueryDecoder(nn.Module):
    """ReferFormer's conditional queries: N learned positions whose content is the sentence
    feature, decoded per frame by a deformable decoder with iterative box refinement into
    referred-or-not logits and cxcywh boxes at every layer.

    With `sentence_content` False (SOC) the queries' content starts at zero instead.

    Initial reference points come from each query's position embedding ("learned") or, with
    `reference_search`, from the queries' attention over the encoder memory after reading the
    words (TextGuidedReference), which also returns that attention for "loss_search".
    """

    @configurable
    def __init__(
        self,
        *,
        decoder: DeformableTransformerDecoder,
        num_queries: int,
        num_heads: int,
        reference_search: bool = False,
        sentence_content: bool = True,
    ):
        super().__init__()
        hidden, num_layers = decoder.d_model, len(decoder.layers)
        self.num_queries = num_queries
        self.sentence_content = sentence_content
        self.query_embed = nn.Embedding(num_queries, hidden)
        if reference_search:
            self.reference_search = TextGuidedReference(hidden, num_heads)
        else:
            self.reference_search = None
            self.reference_points = nn.Linear(hidden, 2)
            nn.init.xavier_uniform_(self.reference_points.weight)
            nn.init.zeros_(self.reference_points.bias)
        self.class_embed = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_layers))
        for head in self.class_embed:  # prior probability 0.01 of "referred"
            nn.init.constant_(head.bias, -math.log(99.0))
        if decoder.bbox_embed is None:
            raise ValueError("ConditionalQueryDecoder needs a decoder built with box heads")
        self.decoder = decoder

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        qd, t = cfg.MODEL.QUERY_DECODER, cfg.MODEL.DEFORMABLE_TRANSFORMER
        return {
            "decoder": DeformableTransformerDecoder(
                cfg, bbox_embed=box_heads(t.HIDDEN_DIM, t.DEC_LAYERS)
            ),
            "num_queries": qd.NUM_QUERIES,
            "num_heads": cfg.MODEL.DEFORMABLE_TRANSFORMER.NHEADS,
            "reference_search": qd.REFERENCE_SEARCH,
            "sentence_content": qd.SENTENCE_CONTENT,
        }

    def forward(
        self, enc: dict[str, Any], sentence: Tensor, words: Tensor, word_mask: Tensor
    ) -> dict[str, Tensor | None]:
        """enc: the VL encoder's outputs for F frames; sentence F x C; words F x L x C with
        word_mask F x L. Returns hs (L x F x N x C), boxes (L x F x N x 4, each predicted
        relative to the reference its layer used), logits (L x F x N), search (F x N x S
        attention over the memory, None without the reference search) and references (per
        layer, the F x N x 2 or x 4 reference it refined)."""
        n = sentence.shape[0]
        query_pos = self.query_embed.weight[None].expand(n, -1, -1)
        tgt = sentence[:, None].expand(-1, self.num_queries, -1).contiguous()
        if not self.sentence_content:
            tgt = torch.zeros_like(tgt)
        search = None
        if self.reference_search is None:
            initial = self.reference_points(query_pos).sigmoid()
        else:
            initial, search, tgt = self.reference_search(
                tgt,
                query_pos,
                words,
                word_mask,
                enc["memory"],
                torch.cat([p.flatten(2).transpose(1, 2) for p in enc["pos"]], dim=1),
                token_centres(enc["spatial_shapes"].tolist(), enc["valid_ratios"]),
                enc["mask_flatten"],
            )
        hs, refined = self.decoder(
            tgt,
            initial,
            enc["memory"],
            enc["spatial_shapes"],
            enc["level_start_index"],
            enc["valid_ratios"],
            query_pos,
            enc["mask_flatten"],
        )
        references = [initial, *refined[:-1]]
        embeds = self.decoder.bbox_embed
        boxes = [refine_boxes(embed(h), ref) for embed, h, ref in zip(embeds, hs, references)]
        logits = torch.stack([head(h).squeeze(-1) for head, h in zip(self.class_embed, hs)])
        return {
            "hs": hs,
            "boxes": torch.stack(boxes),
            "logits": logits,
            "search": search,
            "references": references,
        }


def add_query_decoder_config(cfg: CfgNode) -> None:
    """Query decoder part (MODEL.QUERY_DECODER)."""
    cfg.MODEL.QUERY_DECODER = CfgNode()
    cfg.MODEL.QUERY_DECODER.NAME = "ConditionalQueryDecoder"  # class in QUERY_DECODER_REGISTRY
    cfg.MODEL.QUERY_DECODER.NUM_QUERIES = 5  # conditional queries N per frame
    # queries read the words, and their initial reference points come from attention over the
    # encoder memory instead of the learned query positions (TextGuidedReference), trained with
    # "loss_search"; off in the paper's configs
    cfg.MODEL.QUERY_DECODER.REFERENCE_SEARCH = False
    cfg.MODEL.QUERY_DECODER.SENTENCE_CONTENT = True  # queries start as the sentence feature; else 0

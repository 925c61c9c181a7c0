"""Optimizer construction: parameter groups, AdamW/SGD, and gradient clipping.

Parameter groups follow these rules (first match wins for weight decay):
  * parameters with ``requires_grad=False`` (e.g. a frozen text encoder) are left out;
  * learning rate is ``SOLVER.BASE_LR``, times ``SOLVER.BACKBONE_MULTIPLIER`` for parameters of the
    model's ``backbone`` submodule, times ``SOLVER.TEXT_ENCODER_MULTIPLIER`` for those of a trained
    language model (``text_encoder.language_model``), times ``SOLVER.BIAS_LR_FACTOR`` for biases;
  * weight decay is ``SOLVER.WEIGHT_DECAY_EMBED`` for embeddings (every ``nn.Embedding`` and the
    parameters a module names in its ``embedding_param_names`` attribute),
    ``SOLVER.WEIGHT_DECAY_NORM`` for normalisation layers, ``SOLVER.WEIGHT_DECAY_BIAS`` for biases
    (``None`` keeps ``SOLVER.WEIGHT_DECAY``), and ``SOLVER.WEIGHT_DECAY`` otherwise.

Gradient clipping uses ``SOLVER.CLIP_GRADIENTS``: detectron2's per-parameter "value" and "norm"
types, plus "full_model", which clips the norm of all gradients together.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

__all__ = ["EMBEDDING_ATTR", "build_optimizer", "get_param_groups"]

EMBEDDING_ATTR = "embedding_param_names"
"""Modules may list names of their own parameters (relative to the module) that are embeddings."""

NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,  # BatchNorm1d/2d/3d, SyncBatchNorm, detectron2's NaiveSyncBN
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)

OPTIMIZERS = ("ADAMW", "SGD")
CLIP_TYPES = ("value", "norm", "full_model")


def _embedding_param_ids(model: nn.Module) -> set[int]:
    """ids of every nn.Embedding parameter and of the parameters modules declare as embeddings."""
    ids: set[int] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            ids.update(id(p) for p in module.parameters(recurse=False))
        names = getattr(module, EMBEDDING_ATTR, ())
        if isinstance(names, str):
            names = (names,)
        params = dict(module.named_parameters())
        for name in names:
            if name not in params:
                raise ValueError(
                    f"{type(module).__name__} (at '{prefix or '<model>'}') lists '{name}' in "
                    f"{EMBEDDING_ATTR}, but it has no such parameter"
                )
            ids.add(id(params[name]))
    return ids


def _param_ids(module: object) -> set[int]:
    """ids of the parameters of `module` (none when it is not an nn.Module)."""
    return {id(p) for p in module.parameters()} if isinstance(module, nn.Module) else set()


def get_param_groups(model: nn.Module, cfg: CfgNode) -> list[dict[str, Any]]:
    """Trainable parameters of `model` grouped by (lr, weight_decay) following SOLVER.* rules."""
    solver = cfg.SOLVER
    base_lr = solver.BASE_LR
    backbone = getattr(model, "backbone", None)
    backbone_ids = _param_ids(backbone)
    language_ids = _param_ids(getattr(getattr(model, "text_encoder", None), "language_model", None))
    embedding_ids = _embedding_param_ids(model)
    wd_bias = solver.WEIGHT_DECAY if solver.WEIGHT_DECAY_BIAS is None else solver.WEIGHT_DECAY_BIAS

    params: list[dict[str, Any]] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            is_bias = name == "bias"
            lr = base_lr
            if id(param) in backbone_ids:
                lr *= solver.BACKBONE_MULTIPLIER
            if id(param) in language_ids:
                lr *= solver.TEXT_ENCODER_MULTIPLIER
            if is_bias:
                lr *= solver.BIAS_LR_FACTOR
            if id(param) in embedding_ids:
                weight_decay = solver.WEIGHT_DECAY_EMBED
            elif isinstance(module, NORM_TYPES):
                weight_decay = solver.WEIGHT_DECAY_NORM
            elif is_bias:
                weight_decay = wd_bias
            else:
                weight_decay = solver.WEIGHT_DECAY
            params.append({"params": [param], "lr": lr, "weight_decay": weight_decay})
    if not params:
        raise ValueError(f"{type(model).__name__} has no trainable parameter to optimize")
    return reduce_param_groups(params)


def _full_model_clipping(
    optimizer_cls: type[torch.optim.Optimizer], max_norm: float, norm_type: float
) -> type[torch.optim.Optimizer]:
    """Subclass of `optimizer_cls` whose step() first clips the norm of all gradients together."""

    def step(self, closure=None):
        all_params: Iterable[torch.Tensor] = itertools.chain.from_iterable(
            group["params"] for group in self.param_groups
        )
        torch.nn.utils.clip_grad_norm_(all_params, max_norm, norm_type)
        return optimizer_cls.step(self, closure)

    return type(f"{optimizer_cls.__name__}FullModelClip", (optimizer_cls,), {"step": step})


def _optimizer_class(cfg: CfgNode) -> type[torch.optim.Optimizer]:
    """The torch optimizer class for SOLVER.OPTIMIZER, with SOLVER.CLIP_GRADIENTS applied."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: expected one of {OPTIMIZERS}")
    optimizer_cls = torch.optim.AdamW if name == "ADAMW" else torch.optim.SGD
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not clip.ENABLED:
        return optimizer_cls
    if clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(
            f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE={clip.CLIP_TYPE!r}: expected one of {CLIP_TYPES}"
        )
    if clip.CLIP_TYPE == "full_model":
        return _full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer_cls)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """AdamW or SGD (SOLVER.OPTIMIZER) over `get_param_groups`, with optional gradient clipping."""
    groups = get_param_groups(model, cfg)
    optimizer_cls = _optimizer_class(cfg)
    if issubclass(optimizer_cls, torch.optim.SGD):
        optimizer = optimizer_cls(
            groups,
            lr=cfg.SOLVER.BASE_LR,
            momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV,
            weight_decay=cfg.SOLVER.WEIGHT_DECAY,
        )
    else:
        optimizer = optimizer_cls(
            groups, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY
        )
    logger = logging.getLogger(__name__)
    summary = ", ".join(
        f"{len(g['params'])} params lr={g['lr']:.3g} wd={g['weight_decay']:.3g}" for g in groups
    )
    logger.info(f"{type(optimizer).__name__} parameter groups: {summary}")
    return optimizer

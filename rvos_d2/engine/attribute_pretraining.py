"""Dense attribute pretraining of a backbone, run by the ordinary trainer, and its export.

A DenseAttributeClassifier config (configs/Synthetic/Attributes-tiny.yaml) trains like any
other with RVOSTrainer (`tools/train_net.py` works too). `pretrain_backbone` runs that training
in the calling process, evaluates DATASETS.TEST, and exports the backbone (`export_backbone`):
a file holding only the "backbone.*" weights, which MODEL.WEIGHTS loads into any meta-arch
whose `backbone` is the same, and under "pretraining" the recipe it was trained with
(`pretraining_record`), so that a reused file can be checked against the recipe a job asks for.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rvos_d2.config import load_config
from rvos_d2.engine.checkpoint import atomic_write, load_checkpoint_file
from rvos_d2.engine.trainer import RVOSTrainer

from detectron2.config import CfgNode
from detectron2.evaluation import inference_on_dataset
from detectron2.utils.env import seed_all_rng

__all__ = [
    "ATTRIBUTE_META_ARCH",
    "attribute_config",
    "backbone_checkpoint",
    "export_backbone",
    "pretrain_backbone",
    "pretraining_record",
    "read_pretraining_record",
]

ATTRIBUTE_META_ARCH = "DenseAttributeClassifier"

logger = logging.getLogger(__name__)


def attribute_config(
    config_file: str | os.PathLike, output: str | os.PathLike, opts: Sequence[str] = ()
) -> CfgNode:
    """The config of a pretraining that exports to `output`: `config_file` with `opts`, and the
    trainer's files in the folder named like `output` without its suffix (a.pth -> a/)."""
    cfg = load_config(config_file, list(opts))
    if cfg.MODEL.META_ARCHITECTURE != ATTRIBUTE_META_ARCH:
        raise ValueError(
            f"{config_file}: MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; backbone "
            f"pretraining takes a {ATTRIBUTE_META_ARCH} config such as "
            "configs/Synthetic/Attributes-tiny.yaml"
        )
    cfg.OUTPUT_DIR = str(Path(output).with_suffix(""))
    return cfg


def pretraining_record(cfg: CfgNode) -> dict[str, Any]:
    """The recipe of a DenseAttributeClassifier config, as plain values."""
    return {
        "datasets": list(cfg.DATASETS.TRAIN),
        "attributes": list(cfg.MODEL.DENSE_ATTRIBUTES.NAMES),
        "iterations": cfg.SOLVER.MAX_ITER,
        "clips_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "frames_per_clip": cfg.INPUT.SAMPLING_FRAME_NUM,
        "size": list(cfg.INPUT.MIN_SIZE_TRAIN),
        "lr": cfg.SOLVER.BASE_LR,
        "seed": cfg.SEED,
    }


def backbone_checkpoint(backbone: nn.Module, record: dict[str, Any] | None = None) -> dict:
    """The backbone's weights under "backbone.", as MODEL.WEIGHTS loads into a meta-arch, and
    under "pretraining" the `record` of how it was pretrained (plain values)."""
    checkpoint: dict[str, Any] = {
        "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    }
    if record is not None:
        checkpoint["pretraining"] = dict(record)
    return checkpoint


def export_backbone(
    model: nn.Module, output: str | os.PathLike, record: dict[str, Any] | None = None
) -> Path:
    """Writes `model.backbone` (`backbone_checkpoint`) atomically to `output`: an interrupted
    run leaves no partial MODEL.WEIGHTS file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as f:
        torch.save(backbone_checkpoint(model.backbone, record), f)
    logger.info("pretrained backbone written to %s", output)
    return output


def read_pretraining_record(weights: str) -> dict[str, Any] | None:
    """The "pretraining" record of a MODEL.WEIGHTS file, loaded without running code; None
    for a file without one (detectron2 model-zoo pickles never hold one)."""
    if weights.endswith(".pkl"):
        return None
    return load_checkpoint_file(weights).get("pretraining")


def pretrain_backbone(
    cfg: CfgNode, output: str | os.PathLike, *, resume: bool = False
) -> dict[str, dict]:
    """Trains the DenseAttributeClassifier of `cfg` with RVOSTrainer in this process (files in
    OUTPUT_DIR; with `resume`, from its last checkpoint), exports its backbone with the recipe
    to `output`, and returns the evaluation results of each DATASETS.TEST dataset by name."""
    if cfg.MODEL.META_ARCHITECTURE != ATTRIBUTE_META_ARCH:
        raise ValueError(
            f"MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}: backbone pretraining "
            f"trains a {ATTRIBUTE_META_ARCH}"
        )
    if cfg.SEED >= 0:
        seed_all_rng(cfg.SEED)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()  # evaluated below, once
    trainer = RVOSTrainer(train_cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    results = {
        name: inference_on_dataset(
            model,
            RVOSTrainer.build_test_loader(cfg, name),
            RVOSTrainer.build_evaluator(cfg, name),
        )
        for name in cfg.DATASETS.TEST
    }
    for name, result in results.items():
        logger.info("%s: %s", name, result)
    export_backbone(model, output, pretraining_record(cfg))
    return results

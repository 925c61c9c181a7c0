"""Dataset mappers selected by name (INPUT.DATASET_MAPPER_NAME) and the loaders built on them."""

from __future__ import annotations

from typing import Any

from detectron2.config import CfgNode
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.utils.registry import Registry

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """Dataset mappers: dataset dict -> model input; each is called
as Mapper(cfg, is_train=...)."""


def build_dataset_mapper(cfg: CfgNode, is_train: bool) -> Any:
    """The mapper named by INPUT.DATASET_MAPPER_NAME, for training or inference."""
    name = cfg.INPUT.DATASET_MAPPER_NAME
    if name not in DATASET_MAPPER_REGISTRY:
        raise KeyError(
            f"INPUT.DATASET_MAPPER_NAME={name!r} names no registered mapper; "
            f"registered: {sorted(n for n, _ in DATASET_MAPPER_REGISTRY)}"
        )
    return DATASET_MAPPER_REGISTRY.get(name)(cfg, is_train=is_train)


def build_train_loader(cfg: CfgNode):
    """detectron2's training loader over DATASETS.TRAIN with the configured mapper."""
    return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, is_train=True))


def build_test_loader(cfg: CfgNode, dataset_name: str):
    """detectron2's inference loader over `dataset_name` with the configured mapper."""
    return build_detection_test_loader(
        cfg, dataset_name, mapper=build_dataset_mapper(cfg, is_train=False)
    )

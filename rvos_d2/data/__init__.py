"""Datasets, dataset mappers and clip-consistent transforms."""

from rvos_d2.data import datasets  # noqa: F401  (registers the datasets)
from rvos_d2.data.attribute_mapper import AttributeDatasetMapper
from rvos_d2.data.build import DATASET_MAPPER_REGISTRY, build_dataset_mapper
from rvos_d2.data.mappers import RVOSDatasetMapper
from rvos_d2.data.vos_mapper import VOSDatasetMapper

__all__ = [
    "DATASET_MAPPER_REGISTRY",
    "AttributeDatasetMapper",
    "RVOSDatasetMapper",
    "VOSDatasetMapper",
    "build_dataset_mapper",
]

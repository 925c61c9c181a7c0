"""Datasets, dataset mappers and clip-consistent transforms."""

from rvos_d2.data import datasets  # noqa: F401  (registers the datasets)
from rvos_d2.data.mappers import RVOSDatasetMapper  # noqa: F401

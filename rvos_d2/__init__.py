"""rvos_d2: referring video object segmentation methods as detectron2 components.

Importing the package applies the detectron2 compatibility shims and registers every
meta-architecture, backbone and dataset with detectron2's registries.
"""

from rvos_d2 import compat

compat.apply()

from rvos_d2 import data, evaluation, modeling  # noqa: E402,F401  (registration side effects)
from rvos_d2.config import add_rvos_config  # noqa: E402

__all__ = ["add_rvos_config"]
__version__ = "0.1.0"

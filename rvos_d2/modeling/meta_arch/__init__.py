"""Meta-architectures registered in detectron2's META_ARCH_REGISTRY."""

from rvos_d2.modeling.meta_arch.dense_attributes import DenseAttributeClassifier
from rvos_d2.modeling.meta_arch.mlrl import MLRL
from rvos_d2.modeling.meta_arch.referformer import ReferFormer
from rvos_d2.modeling.meta_arch.soc import SOC
from rvos_d2.modeling.meta_arch.topdown import TopDownRVOS
from rvos_d2.modeling.meta_arch.urvos import URVOS

__all__ = ["DenseAttributeClassifier", "MLRL", "SOC", "ReferFormer", "TopDownRVOS", "URVOS"]

"""Meta-architectures registered in detectron2's META_ARCH_REGISTRY."""

from rvos_d2.modeling.meta_arch.referformer import ReferFormer

__all__ = ["ReferFormer"]

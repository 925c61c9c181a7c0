"""Models: backbones, text encoder, transformer, heads, losses and meta-architectures."""

from rvos_d2.modeling import backbone, meta_arch, propagation  # noqa: F401  (registration side effects)

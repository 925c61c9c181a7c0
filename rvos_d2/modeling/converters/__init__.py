"""Converters from other implementations' checkpoints to rvos_d2 state dicts; importing the
package registers every format in CHECKPOINT_FORMAT_REGISTRY."""

from rvos_d2.modeling.converters import backbones, soc, stcn  # noqa: F401  (registrations)
from rvos_d2.modeling.converters.referformer import (
    UnmappedKeyError,
    convert_referformer,
    is_referformer_checkpoint,
    rule_state_dict,
)
from rvos_d2.modeling.converters.registry import (
    CHECKPOINT_FORMAT_REGISTRY,
    CheckpointFormat,
    CheckpointFormatError,
    detect_format,
)

__all__ = [
    "CHECKPOINT_FORMAT_REGISTRY",
    "CheckpointFormat",
    "CheckpointFormatError",
    "UnmappedKeyError",
    "convert_referformer",
    "detect_format",
    "is_referformer_checkpoint",
    "rule_state_dict",
]

"""Converters from other implementations' checkpoints to rvos_d2 state dicts."""

from rvos_d2.modeling.converters.referformer import (
    UnmappedKeyError,
    convert_referformer,
    is_referformer_checkpoint,
    rule_state_dict,
)

__all__ = [
    "UnmappedKeyError",
    "convert_referformer",
    "is_referformer_checkpoint",
    "rule_state_dict",
]

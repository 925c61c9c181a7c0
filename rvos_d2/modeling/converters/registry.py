"""The registry of checkpoint formats that tools/convert_checkpoint.py converts.

Each format registers how to recognise a state dict of its kind, how to rename its keys, and
where the converted weights sit in an rvos_d2 model; the tool selects one by name (--format) or
by detection, so a new format only registers itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from rvos_d2.utils.registry import NamedRegistry

__all__ = [
    "CHECKPOINT_FORMAT_REGISTRY",
    "CheckpointFormat",
    "CheckpointFormatError",
    "detect_format",
]

CHECKPOINT_FORMAT_REGISTRY = NamedRegistry("CHECKPOINT_FORMAT")
CHECKPOINT_FORMAT_REGISTRY.__doc__ = "Checkpoint formats of other implementations, by name."

StateDict = dict[str, Tensor]


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint in one of the supported formats."""


@dataclass(frozen=True)
class CheckpointFormat:
    """One convertible format: `detect` recognises its state dicts (checked in ascending
    `priority`, so a specific format is tried before a generic one), `convert` renames the keys,
    `prefix` is where the converted weights sit in the model ("backbone." for backbones; a
    whole model has none)."""

    convert: Callable[[StateDict], StateDict]
    detect: Callable[[StateDict], bool]
    prefix: str = "backbone."
    priority: int = 0

    @property
    def whole_model(self) -> bool:
        """Whether the format holds a whole model (kept as it is) rather than a backbone."""
        return self.prefix != "backbone."


def detect_format(weights: StateDict) -> str:
    """The name of the registered format whose detection accepts `weights`."""
    formats = sorted(CHECKPOINT_FORMAT_REGISTRY, key=lambda item: item[1].priority)
    for name, fmt in formats:
        if fmt.detect(weights):
            return name
    raise CheckpointFormatError(
        f"unknown checkpoint format (expected one of {CHECKPOINT_FORMAT_REGISTRY.names()}); "
        f"first keys: {sorted(weights)[:8]}"
    )

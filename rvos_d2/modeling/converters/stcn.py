"""Registers the official STCN network's checkpoint format (converted into the
SpaceTimeMemoryNetwork's `network.`; the renaming lives beside the network)."""

from rvos_d2.modeling.converters.registry import CHECKPOINT_FORMAT_REGISTRY, CheckpointFormat
from rvos_d2.modeling.propagation.convert import convert_stcn, is_stcn_state_dict

CHECKPOINT_FORMAT_REGISTRY.register_as("stcn")(
    CheckpointFormat(convert_stcn, is_stcn_state_dict, prefix="network.", priority=0)
)

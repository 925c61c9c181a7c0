"""Space-time memory networks for mask propagation (STCN) and their propagator."""

from rvos_d2.modeling.propagation.config import add_propagation_config
from rvos_d2.modeling.propagation.meta_arch import SpaceTimeMemoryNetwork
from rvos_d2.modeling.propagation.network import STCNNetwork
from rvos_d2.modeling.propagation.propagator import PropagationResult, Propagator

__all__ = [
    "STCNNetwork",
    "SpaceTimeMemoryNetwork",
    "Propagator",
    "PropagationResult",
    "add_propagation_config",
]

"""Training and evaluation engine: trainer, optimizer, checkpointing and CPU-capable launching."""

from rvos_d2.engine.checkpoint import RVOSCheckpointer, load_checkpoint_file
from rvos_d2.engine.defaults import argument_parser, setup
from rvos_d2.engine.launch import create_ddp_model, launch
from rvos_d2.engine.optimizer import build_optimizer, get_param_groups
from rvos_d2.engine.predictor import VideoPredictor
from rvos_d2.engine.trainer import RVOSTrainer, check_meta_architecture, evaluate

__all__ = [
    "RVOSCheckpointer",
    "RVOSTrainer",
    "VideoPredictor",
    "argument_parser",
    "build_optimizer",
    "check_meta_architecture",
    "create_ddp_model",
    "evaluate",
    "get_param_groups",
    "launch",
    "load_checkpoint_file",
    "setup",
]

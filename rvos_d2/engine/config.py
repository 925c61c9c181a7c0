"""Config keys of rvos_d2.engine."""

from detectron2.config import CfgNode as CN


def add_checkpoint_config(cfg: CN) -> None:
    """Loading of MODEL.WEIGHTS (rvos_d2.engine.checkpoint)."""
    # load MODEL.WEIGHTS even if some tensors' shapes differ from the model's (those stay at their
    # initialisation); otherwise such a file is an error
    cfg.MODEL.WEIGHTS_ALLOW_PARTIAL = False

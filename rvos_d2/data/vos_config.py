"""Config keys of the semi-supervised VOS data pipeline (rvos_d2.data.vos_mapper)."""

from detectron2.config import CfgNode as CN


def add_vos_data_config(cfg: CN) -> None:
    """INPUT.VOS.*: clip and object sampling of VOSDatasetMapper (STCN's values as defaults)."""
    cfg.INPUT.VOS = CN()
    cfg.INPUT.VOS.MAX_OBJECTS = 2  # objects per training clip, drawn among those in its first frame
    cfg.INPUT.VOS.MAX_JUMP = 5  # largest gap, in dataset frames, between consecutive clip frames
    cfg.INPUT.VOS.REVERSE_PROB = 0.5  # probability that a training clip is played backwards
    cfg.INPUT.VOS.SAMPLING_TRIES = 5  # clips drawn until one shows an object in its first frame

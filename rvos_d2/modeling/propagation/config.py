"""Config keys of the space-time memory network (STCN) and its propagation."""

from detectron2.config import CfgNode as CN


def add_propagation_config(cfg: CN) -> None:
    """MODEL.PROPAGATION: network shape, memory read, propagation schedule and training loss."""
    cfg.MODEL.PROPAGATION = CN()
    cfg.MODEL.PROPAGATION.NAME = "STCNNetwork"  # network class in PROPAGATION_REGISTRY
    cfg.MODEL.PROPAGATION.KEY_ENCODER_DEPTH = 50  # ResNet depth (18/34/50/101) of the key encoder
    cfg.MODEL.PROPAGATION.VALUE_ENCODER_DEPTH = 18  # ResNet depth of the value encoder
    cfg.MODEL.PROPAGATION.ENCODER_WIDTH = 64  # channels of both encoders' stems (64 in ResNets)
    cfg.MODEL.PROPAGATION.KEY_DIM = 64  # channels of the projected keys
    cfg.MODEL.PROPAGATION.VALUE_DIM = 512  # channels of the memory values and compressed keys
    cfg.MODEL.PROPAGATION.DECODER_DIM = 256  # channels of the decoder's stride-8 and -4 maps
    # "stcn": memory read only; "cfbi": plus CFBI-style fg/bg matching maps in the decoder input
    cfg.MODEL.PROPAGATION.MATCHING = "stcn"
    cfg.MODEL.PROPAGATION.MATCHING_LOCAL_RADIUS = 4  # local matching window radius (stride 16)
    cfg.MODEL.PROPAGATION.TOP_K = 20  # memory entries kept per query position at inference
    cfg.MODEL.PROPAGATION.MEM_EVERY = 5  # every k-th frame from the anchor enters the memory
    cfg.MODEL.PROPAGATION.INCLUDE_LAST = False  # also read the previous frame (temporary memory)
    # memory frames kept per pass (0 = no limit); when full, a new frame replaces the
    # least-confident one (the anchor frame stays)
    cfg.MODEL.PROPAGATION.MAX_MEMORY_FRAMES = 0
    # bootstrapped cross-entropy: plain CE before START_WARM iterations, then the hardest pixels,
    # a fraction falling linearly from 1 at START_WARM to TOP_P at END_WARM
    cfg.MODEL.PROPAGATION.BOOTSTRAP_START_WARM = 20000  # first iteration of bootstrapping
    cfg.MODEL.PROPAGATION.BOOTSTRAP_END_WARM = 70000  # iteration from which TOP_P is used
    cfg.MODEL.PROPAGATION.BOOTSTRAP_TOP_P = 0.15  # final fraction of pixels in the loss

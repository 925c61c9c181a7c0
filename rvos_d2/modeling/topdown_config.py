"""Config keys of the top-down method (TopDownRVOS: key-frame candidates, tracklets, grounding)."""

from detectron2.config import CfgNode as CN


def add_topdown_config(cfg: CN) -> None:
    """MODEL.TOPDOWN: candidates, tracklet construction and NMS, the grounding model, ensemble."""
    cfg.MODEL.TOPDOWN = CN()
    cfg.MODEL.TOPDOWN.NUM_KEY_FRAMES = 7  # K key frames sampled uniformly (the paper: 7)

    cfg.MODEL.TOPDOWN.CANDIDATES = CN()  # frozen detectron2 instance segmentation models
    # each model's own detectron2 config: a file or a name in detectron2's model-zoo configs
    cfg.MODEL.TOPDOWN.CANDIDATES.CONFIG_FILES = [
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    ]
    # each model's weights, read by assemble_topdown_weights ("" = none; model-zoo URLs work)
    cfg.MODEL.TOPDOWN.CANDIDATES.WEIGHTS = [""]
    cfg.MODEL.TOPDOWN.CANDIDATES.OPTS = [[]]  # each model's KEY VALUE overrides of its config
    cfg.MODEL.TOPDOWN.CANDIDATES.SCORE_THRESH = 0.1  # candidates scored lower are dropped
    cfg.MODEL.TOPDOWN.CANDIDATES.MAX_PER_FRAME = 20  # best candidates kept per model, key frame

    # propagation network (MODEL.PROPAGATION) weights, read by assemble_topdown_weights
    cfg.MODEL.TOPDOWN.PROPAGATION_WEIGHTS = ""
    # propagate a key frame's candidates together (one pass) instead of one pass each (paper)
    cfg.MODEL.TOPDOWN.JOINT_PROPAGATION = False
    cfg.MODEL.TOPDOWN.TRACKLET_STRIDE = 4  # tracklet masks kept at 1/stride of the input frames
    cfg.MODEL.TOPDOWN.NMS_THRESH = 0.5  # tracklet-NMS IoU threshold (1.0: no suppression)
    cfg.MODEL.TOPDOWN.NMS_DOWNSAMPLE = 1  # tracklet IoU on every k-th mask pixel
    cfg.MODEL.TOPDOWN.MAX_TRACKLETS = 10  # P tracklets kept after NMS (the paper: 10)

    cfg.MODEL.TOPDOWN.GROUNDING = CN()  # visual encoder = MODEL.BACKBONE, words: TEXT_ENCODER
    cfg.MODEL.TOPDOWN.GROUNDING.IN_FEATURE = "res5"  # backbone map pooled under the masks
    # pretrained visual encoder (e.g. ImageNet ResNet), read by assemble_topdown_weights
    cfg.MODEL.TOPDOWN.GROUNDING.BACKBONE_WEIGHTS = ""
    cfg.MODEL.TOPDOWN.GROUNDING.HIDDEN_DIM = 768  # token width D (the paper: 768)
    cfg.MODEL.TOPDOWN.GROUNDING.NUM_LAYERS = 4  # Transformer encoder layers (the paper: 4)
    cfg.MODEL.TOPDOWN.GROUNDING.NHEADS = 12  # attention heads (the paper: 12)
    cfg.MODEL.TOPDOWN.GROUNDING.DIM_FEEDFORWARD = 3072  # feed-forward width of each layer
    cfg.MODEL.TOPDOWN.GROUNDING.DROPOUT = 0.1  # dropout in the Transformer layers
    # training: clips whose best tracklet has a lower tracklet IoU with the target are skipped
    cfg.MODEL.TOPDOWN.GROUNDING.MIN_TARGET_IOU = 0.3
    # ... or, instead of being skipped, get the ground-truth tracklet as an extra tracklet and the
    # target (as detectron2's PROPOSAL_APPEND_GT adds ground-truth boxes to the proposals)
    cfg.MODEL.TOPDOWN.GROUNDING.APPEND_GT = True

    cfg.MODEL.TOPDOWN.ENSEMBLE = CN()  # grounding models averaged with this one at inference
    cfg.MODEL.TOPDOWN.ENSEMBLE.CONFIG_FILES = []  # TopDownRVOS config file of each extra model
    cfg.MODEL.TOPDOWN.ENSEMBLE.WEIGHTS = []  # its checkpoint (its "grounding." weights are used)

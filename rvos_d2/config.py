"""Every rvos_d2 config key with its default and one-line meaning.

Keys are added to detectron2's default config by `add_rvos_config(cfg)`; a YAML key that is not
declared here makes detectron2 raise its usual "Non-existent config key" error.
Each `_add_*` function below owns one group of keys.
"""

from collections.abc import Sequence
from os import PathLike

from rvos_d2.data.vos_config import add_vos_data_config
from rvos_d2.modeling.propagation.config import add_propagation_config

from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg


def _add_input_config(cfg: CN) -> None:
    """Clip sampling and augmentation (rvos_d2.data.mappers / transforms)."""
    cfg.INPUT.DATASET_MAPPER_NAME = "RVOSDatasetMapper"  # registered in DATASET_MAPPER_REGISTRY
    cfg.INPUT.FORMAT = "RGB"  # channel order of the `image` tensors given to models
    cfg.INPUT.SAMPLING_FRAME_NUM = 5  # frames per training clip (T)
    # clip frames lie within +-range of the reference frame (nearest frames beyond when too few)
    cfg.INPUT.SAMPLING_FRAME_RANGE = 10
    cfg.INPUT.COLOR_AUG = True  # photometric distortion (same parameters for every frame of a clip)
    cfg.INPUT.TEST_FRAME_STRIDE = 1  # inference uses every k-th frame
    cfg.INPUT.TEST_WITH_GT = False  # inference inputs carry GT `instances` if the dataset has masks
    cfg.INPUT.SAMPLING_REFERENCE_TRIES = 3  # annotated frames tried for a visible-target reference
    cfg.INPUT.CROP.MAX_TRIES = 10  # random crops tried to keep the target; then one placed over it
    cfg.INPUT.PSEUDO_VIDEO = CN()  # image dicts (is_image) -> T copies, each its own random affine
    cfg.INPUT.PSEUDO_VIDEO.ROTATION = 20.0  # max rotation in degrees (uniform in +-ROTATION)
    cfg.INPUT.PSEUDO_VIDEO.SCALE = 0.1  # scale factor uniform in [1 - SCALE, 1 + SCALE]
    cfg.INPUT.PSEUDO_VIDEO.TRANSLATION = 0.1  # shift uniform in +-TRANSLATION x image width/height


def _add_text_encoder_config(cfg: CN) -> None:
    """Language encoder shared by all methods (rvos_d2.modeling.text_encoder)."""
    cfg.MODEL.TEXT_ENCODER = CN()
    cfg.MODEL.TEXT_ENCODER.TYPE = "TextEncoder"  # class registered in TEXT_ENCODER_REGISTRY
    # "minilm" = the offline all-MiniLM-L6-v2 package; otherwise a transformers name or local path
    cfg.MODEL.TEXT_ENCODER.NAME = "minilm"
    cfg.MODEL.TEXT_ENCODER.FREEZE = True  # keep the language model's weights fixed
    cfg.MODEL.TEXT_ENCODER.MAX_TOKENS = 32  # expressions are truncated to this many tokens
    # sentence feature: "mean" of the valid tokens' states or the first ("cls") token's state
    cfg.MODEL.TEXT_ENCODER.POOLING = "mean"
    cfg.MODEL.TEXT_ENCODER.CACHE_SIZE = 1024  # frozen model: expressions whose outputs are cached


def _add_transformer_config(cfg: CN) -> None:
    """Deformable encoder/decoder shared by ReferFormer and SOC (rvos_d2.modeling.transformer)."""
    cfg.MODEL.DEFORMABLE_TRANSFORMER = CN()
    cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM = 256  # model width C
    cfg.MODEL.DEFORMABLE_TRANSFORMER.NHEADS = 8  # attention heads M
    cfg.MODEL.DEFORMABLE_TRANSFORMER.ENC_LAYERS = 4  # deformable encoder layers
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS = 4  # decoder layers (one prediction each)
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DIM_FEEDFORWARD = 1024  # hidden width of each layer's FFN
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DROPOUT = 0.1  # dropout in attention and FFN blocks
    cfg.MODEL.DEFORMABLE_TRANSFORMER.NUM_FEATURE_LEVELS = 4  # multi-scale levels L
    cfg.MODEL.DEFORMABLE_TRANSFORMER.ENC_N_POINTS = 4  # sampling points P per level in the encoder
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_N_POINTS = 4  # sampling points P per level in the decoder


def _add_backbone_config(cfg: CN) -> None:
    """Backbones beyond detectron2's ResNet (rvos_d2.modeling.backbone)."""
    cfg.MODEL.TINY_BACKBONE = CN()  # build_tiny_backbone: small conv net for fast CPU runs
    cfg.MODEL.TINY_BACKBONE.WIDTH = 16  # channels of res2; doubled at every later stage
    cfg.MODEL.TINY_BACKBONE.NORM = "BN"  # detectron2 norm name ("BN", "GN", "FrozenBN", "")
    cfg.MODEL.TINY_BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4..32
    # stages followed by a residual 3x3x3 conv across the clip's frames (makes it a video backbone)
    cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = []
    cfg.MODEL.TINY_BACKBONE.FREEZE = False  # keep every weight fixed (a pretrained backbone)

    cfg.MODEL.SWIN = CN()  # build_swin_backbone: Swin Transformer on single frames (Swin-T here)
    cfg.MODEL.SWIN.EMBED_DIM = 96  # width C of res2 (T/S 96, B 128, L 192); doubled per stage
    cfg.MODEL.SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage (S/B/L: [2, 2, 18, 2])
    cfg.MODEL.SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage (B 4.., L 6..)
    cfg.MODEL.SWIN.WINDOW_SIZE = 7  # attention window side in patches (12 for 384 checkpoints)
    cfg.MODEL.SWIN.MLP_RATIO = 4.0  # MLP hidden width / C
    cfg.MODEL.SWIN.QKV_BIAS = True  # bias in the query/key/value projection
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.2  # stochastic depth, rising linearly to this rate
    cfg.MODEL.SWIN.PATCH_NORM = True  # LayerNorm after the patch embedding
    cfg.MODEL.SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4..32
    cfg.MODEL.SWIN.USE_CHECKPOINT = False  # activation checkpointing per block (saves memory)

    cfg.MODEL.VIDEO_SWIN = CN()  # build_video_swin_backbone: clips in, per-frame maps out
    cfg.MODEL.VIDEO_SWIN.EMBED_DIM = 96  # width C of res2 (T/S 96, B 128); doubled per stage
    cfg.MODEL.VIDEO_SWIN.DEPTHS = [2, 2, 6, 2]  # blocks per stage (S/B: [2, 2, 18, 2])
    cfg.MODEL.VIDEO_SWIN.NUM_HEADS = [3, 6, 12, 24]  # attention heads per stage (B: [4, 8, 16, 32])
    cfg.MODEL.VIDEO_SWIN.WINDOW_SIZE = [8, 7, 7]  # (frames, height, width), clipped to the clip
    cfg.MODEL.VIDEO_SWIN.MLP_RATIO = 4.0  # MLP hidden width / C
    cfg.MODEL.VIDEO_SWIN.QKV_BIAS = True  # bias in the query/key/value projection
    cfg.MODEL.VIDEO_SWIN.DROP_PATH_RATE = 0.2  # stochastic depth, rising linearly to this rate
    cfg.MODEL.VIDEO_SWIN.PATCH_NORM = True  # LayerNorm after the patch embedding
    cfg.MODEL.VIDEO_SWIN.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4..32
    cfg.MODEL.VIDEO_SWIN.USE_CHECKPOINT = False  # activation checkpointing per block


def _add_referformer_config(cfg: CN) -> None:
    """ReferFormer meta-architecture, heads, matcher and loss weights."""
    cfg.MODEL.REFERFORMER = CN()
    cfg.MODEL.REFERFORMER.NUM_QUERIES = 5  # conditional queries N per frame
    cfg.MODEL.REFERFORMER.FPN_DIM = 256  # channels inside the cross-modal FPN (the paper: C)
    cfg.MODEL.REFERFORMER.MASK_DIM = 8  # channels of the stride-4 mask features (CM-FPN output)
    cfg.MODEL.REFERFORMER.DYNAMIC_CONV_CHANNELS = 8  # channels of the dynamic 1x1 convolutions
    cfg.MODEL.REFERFORMER.CLASS_WEIGHT = 2.0  # lambda_cls: referred-or-not focal loss and cost
    cfg.MODEL.REFERFORMER.L1_WEIGHT = 5.0  # lambda_L1: box L1 loss and cost
    cfg.MODEL.REFERFORMER.GIOU_WEIGHT = 2.0  # lambda_giou: box GIoU loss and cost
    cfg.MODEL.REFERFORMER.DICE_WEIGHT = 5.0  # lambda_dice: clip-level mask Dice loss and cost
    cfg.MODEL.REFERFORMER.MASK_WEIGHT = 2.0  # lambda_focal: mask sigmoid focal loss and cost
    # queries read the words, and their initial reference points come from attention over the
    # encoder memory instead of the learned query positions (TextGuidedReference), trained with
    # "loss_search"
    cfg.MODEL.REFERFORMER.REFERENCE_SEARCH = False  # off in the paper's configs
    cfg.MODEL.REFERFORMER.SEARCH_WEIGHT = 1.0  # weight of loss_search (-log attention on target)


def _add_solver_config(cfg: CN) -> None:
    """Optimizer extras used by rvos_d2.engine.

    detectron2's SOLVER.CLIP_GRADIENTS.CLIP_TYPE also accepts "full_model" here: the norm of all
    gradients together is clipped to CLIP_VALUE.
    """
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD" (SGD uses SOLVER.MOMENTUM and NESTEROV)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.5  # lr of the model's `backbone` submodule = BASE_LR * this
    # weight decay of nn.Embedding tables and of parameters modules list in `embedding_param_names`
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0


def _add_test_config(cfg: CN) -> None:
    """Inference and evaluation (meta-architectures, rvos_d2.evaluation)."""
    cfg.TEST.WINDOW = 36  # frames per inference window; selection still spans the whole video


def add_rvos_config(cfg: CN) -> None:
    """Adds every rvos_d2 key to a detectron2 config (call before `merge_from_file`)."""
    _add_input_config(cfg)
    add_vos_data_config(cfg)
    _add_text_encoder_config(cfg)
    _add_transformer_config(cfg)
    _add_backbone_config(cfg)
    _add_referformer_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    add_propagation_config(cfg)


def load_config(config_file: str | PathLike | None, opts: Sequence[str] = ()) -> CN:
    """detectron2's defaults plus every rvos_d2 key, then `config_file` (if any) and the
    KEY VALUE overrides `opts`; returned unfrozen so callers can add their own settings."""
    cfg = get_cfg()
    add_rvos_config(cfg)
    if config_file:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return cfg

"""Config keys of the backbones beyond detectron2's ResNet (TINY_BACKBONE, SWIN, VIDEO_SWIN)."""

from detectron2.config import CfgNode


def add_backbone_config(cfg: CfgNode) -> None:
    """Backbones beyond detectron2's ResNet (rvos_d2.modeling.backbone)."""
    cfg.MODEL.TINY_BACKBONE = CfgNode()  # build_tiny_backbone: small conv net for fast CPU runs
    cfg.MODEL.TINY_BACKBONE.WIDTH = 16  # channels of res2; doubled at every later stage
    cfg.MODEL.TINY_BACKBONE.NORM = "BN"  # detectron2 norm name ("BN", "GN", "FrozenBN", "")
    cfg.MODEL.TINY_BACKBONE.OUT_FEATURES = ["res2", "res3", "res4", "res5"]  # strides 4..32
    # stages followed by a residual 3x3x3 conv across the clip's frames (makes it a video backbone)
    cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = []
    cfg.MODEL.TINY_BACKBONE.FREEZE = False  # keep every weight fixed (a pretrained backbone)

    cfg.MODEL.SWIN = (
        CfgNode()
    )  # build_swin_backbone: Swin Transformer on single frames (Swin-T here)
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
    # Window choices (swin_layers.WindowOptions) and output norms; the released ReferFormer
    # models need CLIP_WINDOW / MASK_PADDING False (see configs/ReferFormer/Base-ReferFormer.yaml)
    # a window larger than the map shrinks to it, unshifted; False pads the map to the window
    cfg.MODEL.SWIN.CLIP_WINDOW = True
    cfg.MODEL.SWIN.MASK_PADDING = True  # padding tokens never serve as keys; False: they do
    # a clipped window of N tokens reads the bias table through the first N x N entries of the
    # full window's index instead of its own offsets
    cfg.MODEL.SWIN.TRUNCATED_BIAS_INDEX = False
    cfg.MODEL.SWIN.OUT_NORM = True  # LayerNorm on every returned stage (norm0..norm3)

    cfg.MODEL.VIDEO_SWIN = CfgNode()  # build_video_swin_backbone: clips in, per-frame maps out
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
    # as for MODEL.SWIN; the Video Swin of the released ReferFormer models has MASK_PADDING
    # False, TRUNCATED_BIAS_INDEX True and OUT_NORM False
    cfg.MODEL.VIDEO_SWIN.CLIP_WINDOW = True  # a window larger than the map shrinks to it
    cfg.MODEL.VIDEO_SWIN.MASK_PADDING = True  # padding tokens never serve as keys; False: they do
    # a clipped window reads the bias table through the full window's truncated index
    cfg.MODEL.VIDEO_SWIN.TRUNCATED_BIAS_INDEX = False
    cfg.MODEL.VIDEO_SWIN.OUT_NORM = True  # LayerNorm on every returned stage (norm0..norm3)

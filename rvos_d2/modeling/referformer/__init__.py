"""ReferFormer (Wu et al., CVPR 2022): its config and the published model's dataset-specific
training targets and inference schemes; the architecture is built from shared parts."""

from rvos_d2.modeling.referformer.config import add_referformer_config
from rvos_d2.modeling.referformer.inference import infer_annotated_clips, infer_per_window
from rvos_d2.modeling.referformer.reference_frame import keep_clip_frames, reference_frame_losses
from rvos_d2.modeling.referformer.target_sampling import point_sampled_targets

__all__ = [
    "add_referformer_config",
    "infer_annotated_clips",
    "infer_per_window",
    "keep_clip_frames",
    "point_sampled_targets",
    "reference_frame_losses",
]

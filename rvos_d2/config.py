"""rvos_d2's config: detectron2's defaults plus the keys of every rvos_d2 part and method.

`add_rvos_config(cfg)` composes the config functions that live beside each part and method
(`add_referformer_config` in modeling/referformer/config.py, ...); this file owns only the keys that
every method shares (INPUT, SOLVER, TEST). A YAML key that no function declares makes detectron2
raise its usual "Non-existent config key" error.
"""

from collections.abc import Sequence
from os import PathLike

from rvos_d2.data.vos_config import add_vos_data_config
from rvos_d2.modeling.backbone.config import add_backbone_config
from rvos_d2.modeling.mask_branch import add_mask_branch_config
from rvos_d2.modeling.meta_arch.dense_attributes import add_dense_attribute_config
from rvos_d2.modeling.mlrl.config import add_mlrl_config
from rvos_d2.modeling.propagation.config import add_propagation_config
from rvos_d2.modeling.propagation.postprocess import add_test_propagation_config
from rvos_d2.modeling.query_decoder import add_query_decoder_config
from rvos_d2.modeling.referformer import add_referformer_config
from rvos_d2.modeling.soc.config import add_soc_config
from rvos_d2.modeling.text_encoder import add_text_encoder_config
from rvos_d2.modeling.topdown_config import add_topdown_config
from rvos_d2.modeling.transformer import add_deformable_transformer_config
from rvos_d2.modeling.urvos.config import add_urvos_config
from rvos_d2.modeling.vl_encoder import add_vl_encoder_config

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


def _add_solver_config(cfg: CN) -> None:
    """Optimizer extras used by rvos_d2.engine.

    detectron2's SOLVER.CLIP_GRADIENTS.CLIP_TYPE also accepts "full_model" here: the norm of all
    gradients together is clipped to CLIP_VALUE.
    """
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # "ADAMW" or "SGD" (SGD uses SOLVER.MOMENTUM and NESTEROV)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.5  # lr of the model's `backbone` submodule = BASE_LR * this
    # lr of a trained language model (`text_encoder.language_model`) = BASE_LR * this
    cfg.SOLVER.TEXT_ENCODER_MULTIPLIER = 1.0
    # weight decay of nn.Embedding tables and of parameters modules list in `embedding_param_names`
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0


def _add_test_config(cfg: CN) -> None:
    """Inference and evaluation (meta-architectures, rvos_d2.evaluation)."""
    cfg.TEST.WINDOW = 36  # frames per inference window; selection still spans the whole video


def add_rvos_config(cfg: CN) -> None:
    """Adds every rvos_d2 key to a detectron2 config (call before `merge_from_file`)."""
    from rvos_d2.engine.config import add_checkpoint_config  # rvos_d2.engine imports this module

    _add_input_config(cfg)
    add_vos_data_config(cfg)
    add_text_encoder_config(cfg)
    add_backbone_config(cfg)
    add_deformable_transformer_config(cfg)
    add_vl_encoder_config(cfg)
    add_query_decoder_config(cfg)
    add_mask_branch_config(cfg)
    add_referformer_config(cfg)
    add_soc_config(cfg)
    add_mlrl_config(cfg)
    add_urvos_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    add_checkpoint_config(cfg)
    add_propagation_config(cfg)
    add_test_propagation_config(cfg)
    add_topdown_config(cfg)
    add_dense_attribute_config(cfg)


def load_config(config_file: str | PathLike | None, opts: Sequence[str] = ()) -> CN:
    """detectron2's defaults plus every rvos_d2 key, then `config_file` (if any) and the
    KEY VALUE overrides `opts`; returned unfrozen so callers can add their own settings."""
    cfg = get_cfg()
    add_rvos_config(cfg)
    if config_file:
        cfg.merge_from_file(str(config_file))
    cfg.merge_from_list(list(opts))
    return cfg

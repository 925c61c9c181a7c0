"""Every config in configs/ loads, names registered datasets, builds its model and trains one step.

The step runs on tiny inputs on the CPU with the model narrowed by config overrides: a small
transformer, one-block stages for Swin / Video Swin backbones, ResNet at its configured depth.
Configs naming a text encoder that is not available offline (e.g. roberta-base without a Hugging
Face cache) are built with the bundled MiniLM instead; the test says so in its output.
"""

from pathlib import Path

import pytest
import torch

from rvos_d2.config import load_config
from tests.fixtures.model import make_clip

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.yaml") if not p.name.startswith("Base-"))
SMALL_MODEL = [
    "MODEL.DEVICE", "cpu",
    "MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM", 32,
    "MODEL.DEFORMABLE_TRANSFORMER.NHEADS", 4,
    "MODEL.DEFORMABLE_TRANSFORMER.DIM_FEEDFORWARD", 64,
    "MODEL.DEFORMABLE_TRANSFORMER.ENC_LAYERS", 1,
    "MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS", 2,
]  # fmt: skip
# Top-down candidates: each frozen instance segmentation model on small frames, one key frame.
SMALL_CANDIDATE_OPTS = ["INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96]
SMALL_SWIN = {
    "DEPTHS": [1, 1, 1, 1],
    "EMBED_DIM": 32,
    "NUM_HEADS": [1, 2, 4, 8],
}


def _text_encoder_available(name: str) -> bool:
    """True for the bundled MiniLM, a local folder, or a model in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    if name == "minilm" or Path(name).is_dir():
        return True
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def test_configs_exist():
    names = {str(p.relative_to(CONFIG_ROOT)) for p in CONFIGS}
    assert "Synthetic/ReferFormer-tiny.yaml" in names
    for dataset in ("refcoco", "ref_ytvos", "ref_ytvos_joint", "ref_davis", "a2d_sentences"):
        for backbone in ("R50", "R101", "Swin-L", "VideoSwin-T", "VideoSwin-B"):
            assert f"ReferFormer/{dataset}/{backbone}.yaml" in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_names_registered_datasets(path):
    cfg = load_config(path)
    registered = set(DatasetCatalog.list())
    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        assert name in registered, f"{path}: dataset {name!r} is not registered"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_builds_and_trains_one_step(path, capsys):
    cfg = load_config(path)
    cfg.merge_from_list(SMALL_MODEL)
    for key in ("SWIN", "VIDEO_SWIN"):
        node = cfg.MODEL[key]
        node.merge_from_list([item for kv in SMALL_SWIN.items() for item in kv])
    if cfg.MODEL.META_ARCHITECTURE == "TopDownRVOS":
        candidates = cfg.MODEL.TOPDOWN.CANDIDATES
        candidates.OPTS = [SMALL_CANDIDATE_OPTS for _ in candidates.CONFIG_FILES]
        cfg.MODEL.TOPDOWN.NUM_KEY_FRAMES = 1
    if not _text_encoder_available(cfg.MODEL.TEXT_ENCODER.NAME):
        with capsys.disabled():
            print(
                f"\n{path.name}: {cfg.MODEL.TEXT_ENCODER.NAME} is not available offline, "
                "built with MiniLM instead"
            )
        cfg.MODEL.TEXT_ENCODER.NAME = "minilm"
    torch.manual_seed(0)
    model = build_model(cfg).train()
    num_frames = cfg.INPUT.SAMPLING_FRAME_NUM
    clip = make_clip(num_frames, 96, 96)
    if cfg.MODEL.META_ARCHITECTURE == "DenseAttributeClassifier":  # per-pixel classes at 1/4
        attributes = cfg.MODEL.DENSE_ATTRIBUTES
        clip["attribute_labels"] = {
            name: torch.randint(0, n + 1, (num_frames, 24, 24))
            for name, n in zip(attributes.NAMES, attributes.NUM_CLASSES)
        }
    losses = model([clip])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)

"""Every registered RVOS meta-architecture follows the model contract of
rvos_d2/modeling/meta_arch/base.py: a training step gives finite losses with gradients, and
inference gives per-frame probabilities and scores at the original size."""

from pathlib import Path

import pytest
import torch

from rvos_d2.config import load_config
from tests.fixtures.model import make_clip

from detectron2.modeling import META_ARCH_REGISTRY, build_model

SYNTHETIC = Path(__file__).resolve().parents[1] / "configs" / "Synthetic"
# Semi-supervised VOS models take reference masks instead of a sentence (own tests).
VOS_MODELS = {"SpaceTimeMemoryNetwork"}
# Backbone pretraining models classify pixels and segment nothing (own tests).
PRETRAINING_MODELS = {"DenseAttributeClassifier"}


def _synthetic_configs() -> dict[str, Path]:
    """META_ARCHITECTURE -> the synthetic config that builds it."""
    found = {}
    for path in sorted(SYNTHETIC.glob("*.yaml")):
        found.setdefault(load_config(path).MODEL.META_ARCHITECTURE, path)
    return found


RVOS_MODELS = sorted(
    name
    for name, cls in META_ARCH_REGISTRY
    if cls.__module__.startswith("rvos_d2.") and name not in VOS_MODELS | PRETRAINING_MODELS
)


def test_every_rvos_meta_architecture_has_a_synthetic_config():
    missing = sorted(set(RVOS_MODELS) - set(_synthetic_configs()))
    assert not missing, f"meta-architectures without a configs/Synthetic/*.yaml: {missing}"


@pytest.fixture(params=RVOS_MODELS)
def small_model(request):
    path = _synthetic_configs()[request.param]
    cfg = load_config(path, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    return build_model(cfg)


def test_training_step_gives_finite_losses_and_gradients(small_model):
    small_model.train()
    torch.manual_seed(0)
    losses = small_model([make_clip(3, 64, 64, absent=(1,)), make_clip(3, 48, 80)])
    assert losses and all(k.startswith("loss") for k in losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    trained = [p for p in small_model.parameters() if p.requires_grad]
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_inference_follows_the_output_contract(small_model):
    small_model.eval()
    torch.manual_seed(0)
    video = {**make_clip(5, 40, 56), "height": 81, "width": 168}
    video.pop("instances")
    with torch.no_grad():
        (out,) = small_model([video])
    masks, scores = out["pred_masks"], out["scores"]
    assert masks.shape == (5, 81, 168) and masks.dtype.is_floating_point
    assert 0 <= masks.min() and masks.max() <= 1
    assert scores.shape == (5,) and 0 <= scores.min() and scores.max() <= 1
    if "pred_boxes" in out:
        assert out["pred_boxes"].shape == (5, 4)

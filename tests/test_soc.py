"""SOC: configs, training step, ablation switches, inference, synthetic-clip learning."""

from pathlib import Path

import numpy as np
import pytest
import torch

from rvos_d2.config import load_config
from rvos_d2.data.mappers import RVOSDatasetMapper
from rvos_d2.modeling.meta_arch.soc import SOC
from rvos_d2.modeling.soc import VideoObjectCluster
from tests.fixtures.model import make_clip

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
SOC_CONFIGS = sorted(
    [*(CONFIG_ROOT / "SOC").rglob("*.yaml"), CONFIG_ROOT / "Synthetic" / "SOC-tiny.yaml"]
)
LOSSES = ("loss_cls", "loss_bbox", "loss_giou", "loss_dice", "loss_mask", "loss_con")


@pytest.fixture
def soc_cfg():
    """configs/Synthetic/SOC-tiny.yaml, narrowed further for fast CPU tests."""
    cfg = load_config(CONFIG_ROOT / "Synthetic" / "SOC-tiny.yaml")
    cfg.MODEL.TINY_BACKBONE.WIDTH = 8
    cfg.MODEL.TINY_BACKBONE.FREEZE = False  # no pretrained weights here: train the backbone too
    cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM = 32
    cfg.MODEL.DEFORMABLE_TRANSFORMER.DIM_FEEDFORWARD = 64
    cfg.MODEL.SOC.VOC.DIM_FEEDFORWARD = 64
    cfg.MODEL.QUERY_DECODER.NUM_QUERIES = 3
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 128
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 128
    return cfg


@pytest.mark.parametrize("path", SOC_CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_every_soc_config_builds(path):
    cfg = load_config(path)
    assert cfg.MODEL.META_ARCHITECTURE == "SOC"
    cfg.MODEL.TEXT_ENCODER.NAME = "minilm"  # RoBERTa is not available offline
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.VIDEO_SWIN.DEPTHS = [1, 1, 1, 1]  # build speed; widths stay as configured
    model = build_model(cfg)
    assert isinstance(model, SOC)
    assert isinstance(model.object_cluster, VideoObjectCluster)
    assert model.test_level == 0


def test_training_step_gives_finite_losses_and_gradients_everywhere(soc_cfg):
    torch.manual_seed(0)
    model = build_model(soc_cfg).train()
    batch = [make_clip(3, 64, 64, absent=(1,)), make_clip(3, 48, 80)]
    losses = model(batch)
    layers = soc_cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS
    expected = set(LOSSES) | {f"{n}_{i}" for n in LOSSES for i in range(layers - 1)}
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    modules = {
        "backbone": model.backbone,
        "input_proj": model.vl_encoder.input_proj,
        "l2v": model.vl_encoder.fusion.language_to_vision,
        "v2l": model.vl_encoder.fusion.vision_to_language,
        "encoder": model.vl_encoder.encoder,
        "query_decoder": model.query_decoder,
        "object_cluster": model.object_cluster,
        "spatial_decoder": model.mask_branch.decoder,
        "mask_head": model.mask_branch.head,
        "word_resizer": model.text_encoder.word_resizer,
    }
    for name, module in modules.items():
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in model.text_encoder.language_model.parameters())


def test_contrastive_loss_follows_the_weight(soc_cfg):
    torch.manual_seed(0)
    model = build_model(soc_cfg).train()
    batch = [make_clip(3, 64, 64)]
    torch.manual_seed(1)
    base = model(batch)
    model.criterion.weight_dict["loss_con"] = 3.0
    torch.manual_seed(1)
    tripled = model(batch)
    torch.testing.assert_close(tripled["loss_con"], 3 * base["loss_con"])
    torch.testing.assert_close(tripled["loss_cls"], base["loss_cls"])


@pytest.mark.parametrize(
    "voc, weight, fusion",
    [
        (True, 0.0, "both"),
        (False, 0.0, "both"),
        (True, 1.0, "l2v"),
        (True, 1.0, "v2l"),
        (True, 1.0, "none"),
    ],
)
def test_ablation_switches(soc_cfg, voc, weight, fusion):
    soc_cfg.MODEL.SOC.VOC.ENABLED = voc
    soc_cfg.MODEL.SOC.CONTRASTIVE_WEIGHT = weight
    soc_cfg.MODEL.SOC.FUSION = fusion
    torch.manual_seed(0)
    model = build_model(soc_cfg).train()
    assert (model.object_cluster is not None) == voc
    fusion_parts = model.vl_encoder.fusion
    assert (fusion_parts.language_to_vision is not None) == (fusion in ("l2v", "both"))
    assert (fusion_parts.vision_to_language is not None) == (fusion in ("v2l", "both"))
    losses = model([make_clip(3, 64, 64)])
    assert ("loss_con" in losses) == (weight > 0)
    assert all(torch.isfinite(v) for v in losses.values())


def test_contrastive_loss_needs_the_object_cluster(soc_cfg):
    soc_cfg.MODEL.SOC.VOC.ENABLED = False
    with pytest.raises(ValueError, match="VOC.ENABLED"):
        build_model(soc_cfg)


def _video(num_frames, height=40, width=56):
    clip = make_clip(num_frames, height, width)
    return {**clip, "height": 2 * height + 1, "width": 3 * width}


def test_inference_returns_the_configured_level(soc_cfg):
    torch.manual_seed(0)
    model = build_model(soc_cfg).eval()
    video = _video(5)
    first = model([video])[0]
    assert first["pred_masks"].shape == (5, 81, 168)
    assert first["scores"].shape == (5,) and first["pred_boxes"].shape == (5, 4)
    assert 0 <= first["pred_masks"].min() and first["pred_masks"].max() <= 1
    model.test_level = 1
    last = model([video])[0]
    assert not torch.allclose(first["scores"], last["scores"])


def test_inference_adds_the_last_layer_video_queries_to_every_level(soc_cfg):
    """At inference the cluster runs once, on the last decoder layer's frame queries."""
    torch.manual_seed(0)
    model = build_model(soc_cfg).eval()
    calls = []
    model.object_cluster.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    seen = {}
    model.query_decoder.register_forward_hook(lambda m, args, out: seen.update(hs=out["hs"]))
    model([_video(3)])
    assert len(calls) == 1
    torch.testing.assert_close(calls[0][0], seen["hs"][-1])


def _overfit(cfg, num_clips, iters):
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_model(cfg)
    dicts = DatasetCatalog.get("synth_test_train")[:num_clips]
    train_mapper = RVOSDatasetMapper(cfg, is_train=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(iters):
        model.train()
        loss = sum(model([train_mapper(d) for d in dicts]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    test_mapper = RVOSDatasetMapper(cfg, is_train=False)
    return model, losses, [test_mapper(d) for d in dicts], dicts


def _jf(model, inputs, dataset_dicts):
    """Mean J&F of the model's masks against the GT of each clip's frames."""
    from rvos_d2.data.mask_io import load_target_mask
    from rvos_d2.evaluation import metrics

    model.eval()
    scores = []
    with torch.no_grad():
        for x, d in zip(inputs, dataset_dicts):
            out = model([x])[0]
            for i, frame in enumerate(x["frame_ids"]):
                pred = out["pred_masks"][i].numpy() > 0.5
                gt = load_target_mask(d, frame)
                j = metrics.region_similarity(pred, gt)
                scores.append((j + metrics.contour_accuracy(pred, gt)) / 2)
    return float(np.mean(scores))


def test_loss_decreases_on_synthetic_clips(soc_cfg, synth_root):
    _, losses, _, _ = _overfit(soc_cfg, num_clips=2, iters=25)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


@pytest.mark.slow
def test_overfits_a_few_synthetic_clips(soc_cfg, synth_root):
    soc_cfg.MODEL.TINY_BACKBONE.WIDTH = 16
    soc_cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM = 64
    model, _, inputs, dicts = _overfit(soc_cfg, num_clips=3, iters=300)
    assert _jf(model, inputs, dicts) >= 0.8

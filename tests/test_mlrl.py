"""MLRL: training step, ablation switches, inference scores, synthetic-clip learning."""

import numpy as np
import pytest
import torch

from rvos_d2.config import load_config
from rvos_d2.data.mappers import RVOSDatasetMapper
from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.evaluation import metrics
from rvos_d2.modeling.meta_arch.mlrl import MLRL
from tests.fixtures.model import CONFIGS, make_clip

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model


@pytest.fixture
def mlrl_cfg():
    """configs/Synthetic/MLRL-tiny.yaml, narrowed for fast CPU tests, backbone trained."""
    cfg = load_config(CONFIGS / "Synthetic" / "MLRL-tiny.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.TINY_BACKBONE.WIDTH = 8
    cfg.MODEL.TINY_BACKBONE.FREEZE = False
    cfg.MODEL.MLRL.HIDDEN_DIM = 32
    cfg.MODEL.MLRL.DECODER_DIM = 16
    cfg.MODEL.MLRL.LANGUAGE_DIM_FEEDFORWARD = 64
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 128
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 128
    return cfg


def _train_step(cfg):
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model([make_clip(3, 64, 64, absent=(1,)), make_clip(3, 48, 80)])
    sum(losses.values()).backward()
    return model, losses


def test_training_step_gives_finite_losses_and_gradients_everywhere(mlrl_cfg):
    model, losses = _train_step(mlrl_cfg)
    assert isinstance(model, MLRL)
    assert set(losses) == {
        "loss_mask_dice",
        "loss_mask_focal",
        "loss_boundary",
        "loss_confidence",
        "loss_object_dice",
        "loss_object_focal",
    }
    assert all(torch.isfinite(v) for v in losses.values()), losses
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert not [n for n, p in trained.items() if p.grad is None or not p.grad.isfinite().all()]
    # the backbone's temporal-mixing branches start at zero (zero norm scale): their convs get
    # a gradient only once that scale has moved
    starting_at_zero = {f"backbone.temporal.{s}.conv.weight" for s in ("res2", "res3", "res4")}
    zero = {n for n, p in trained.items() if not p.grad.abs().sum() > 0}
    assert zero == starting_at_zero


@pytest.mark.parametrize(
    "opts",
    [
        ["MODEL.MLRL.LEVELS", ["frame", "object"]],
        ["MODEL.MLRL.LEVELS", ["video", "object"]],
        ["MODEL.MLRL.LEVELS", ["video", "frame"]],
        ["MODEL.MLRL.OBJECT_ENCODER", "fcn"],
        ["MODEL.MLRL.OBJECT_ENCODER", "frame"],
        ["MODEL.MLRL.ALIGNMENT", False],
    ],
    ids=["no-video", "no-frame", "no-object", "fcn-objects", "frame-objects", "no-alignment"],
)
def test_ablation_switches_build_what_they_name(mlrl_cfg, opts):
    mlrl_cfg.merge_from_list(opts)
    model, losses = _train_step(mlrl_cfg)
    levels = list(mlrl_cfg.MODEL.MLRL.LEVELS)
    assert list(model.embeddings) == levels
    assert ("loss_object_dice" in losses) == ("object" in levels)
    assert (model.object_decoder is None) == ("object" not in levels)
    d = mlrl_cfg.MODEL.MLRL.HIDDEN_DIM
    assert model.confidence_head.layers[0].in_features == len(levels) * d
    alignment = type(model.alignments[levels[0]]).__name__
    assert alignment == ("SemanticAlignment" if mlrl_cfg.MODEL.MLRL.ALIGNMENT else "SentenceFusion")
    assert all(torch.isfinite(v) for v in losses.values())


def test_bad_levels_and_backbones_are_refused(mlrl_cfg):
    for levels in (["video", "pixel"], [], ["frame", "frame"]):
        cfg = mlrl_cfg.clone()
        cfg.MODEL.MLRL.LEVELS = levels
        with pytest.raises(ValueError, match="MODEL.MLRL.LEVELS"):
            build_model(cfg)
    mlrl_cfg.MODEL.TINY_BACKBONE.OUT_FEATURES = ["res3", "res4", "res5"]
    with pytest.raises(ValueError, match="missing \\['res2'\\]"):
        build_model(mlrl_cfg)


def test_scores_are_the_confidence_head(mlrl_cfg):
    torch.manual_seed(0)
    model = build_model(mlrl_cfg).eval()
    video = {**make_clip(4, 64, 64), "height": 64, "width": 64}
    with torch.no_grad():
        (out,) = model([video])
        images = model.preprocess([video["image"]])
        text = model.text_encoder([video["expression"]], model.device)
        pred = model.predict(images, text, 4, all_layers=False)
    assert set(pred) == {"pred_logits", "pred_masks"}
    torch.testing.assert_close(out["scores"], pred["pred_logits"][0, :, 0].sigmoid())


def test_stcn_post_processing_starts_from_the_most_confident_frame(mlrl_cfg):
    small_stcn = [
        "MODEL.PROPAGATION.KEY_ENCODER_DEPTH", "18",
        "MODEL.PROPAGATION.ENCODER_WIDTH", "16",
        "MODEL.PROPAGATION.KEY_DIM", "16",
        "MODEL.PROPAGATION.VALUE_DIM", "64",
        "MODEL.PROPAGATION.DECODER_DIM", "32",
    ]  # fmt: skip
    mlrl_cfg.merge_from_list([*small_stcn, "TEST.PROPAGATION.NAME", "stcn"])
    torch.manual_seed(0)
    model = build_model(mlrl_cfg).eval()
    video = {**make_clip(4, 40, 56), "height": 40, "width": 56}
    with torch.no_grad():
        propagated = model([video])[0]
        model.propagation = None
        own = model([video])[0]
    best = int(own["scores"].argmax())
    torch.testing.assert_close(propagated["pred_masks"][best], own["pred_masks"][best])
    torch.testing.assert_close(propagated["scores"], own["scores"])
    assert not torch.allclose(propagated["pred_masks"], own["pred_masks"])


def _jf(model, inputs, dataset_dicts):
    """Mean J&F of the model's masks against the GT of each clip's frames."""
    model.eval()
    scores = []
    with torch.no_grad():
        for x, d in zip(inputs, dataset_dicts):
            out = model([x])[0]
            for i, frame in enumerate(x["frame_ids"]):
                pred = out["pred_masks"][i].numpy() > 0.5
                gt = load_target_mask(d, frame)
                scores.append(
                    (metrics.region_similarity(pred, gt) + metrics.contour_accuracy(pred, gt)) / 2
                )
    return float(np.mean(scores))


def _overfit(cfg, num_clips, iters):
    """The model trained `iters` steps on the first `num_clips` training expressions (all of
    them each step), their inference inputs and dataset dicts."""
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_model(cfg)
    dicts = DatasetCatalog.get("synth_test_train")[:num_clips]
    train_mapper = RVOSDatasetMapper(cfg, is_train=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for _ in range(iters):
        loss = sum(model([train_mapper(d) for d in dicts]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test_mapper = RVOSDatasetMapper(cfg, is_train=False)
    return model, [test_mapper(d) for d in dicts], dicts


def test_overfits_one_synthetic_clip(mlrl_cfg, synth_root):
    model, inputs, dicts = _overfit(mlrl_cfg, num_clips=1, iters=100)
    jf = _jf(model, inputs, dicts)
    assert jf >= 0.8, jf


@pytest.mark.slow
def test_overfits_a_few_synthetic_clips(mlrl_cfg, synth_root):
    model, inputs, dicts = _overfit(mlrl_cfg, num_clips=3, iters=300)
    jf = _jf(model, inputs, dicts)
    assert jf >= 0.8, jf

"""URVOS: training step, two-stage inference (anchor, bounded memory, schemes, iterations),
ablations, configs, weight loading and synthetic-clip learning."""

import numpy as np
import pytest
import torch

from rvos_d2.config import load_config
from rvos_d2.data.mappers import RVOSDatasetMapper
from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.engine.checkpoint import RVOSCheckpointer
from rvos_d2.evaluation import metrics
from rvos_d2.modeling.meta_arch.urvos import URVOS
from rvos_d2.modeling.urvos import inference
from rvos_d2.modeling.urvos.attention import ConcatFusion, CrossModalAttention
from tests.fixtures.model import CONFIGS, make_clip

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

URVOS_CONFIGS = sorted((CONFIGS / "URVOS").rglob("*.yaml")) + [
    CONFIGS / "Synthetic" / "URVOS-tiny.yaml"
]


@pytest.fixture
def urvos_cfg():
    """configs/Synthetic/URVOS-tiny.yaml, narrowed for fast CPU tests, backbone trained."""
    cfg = load_config(CONFIGS / "Synthetic" / "URVOS-tiny.yaml")
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.TINY_BACKBONE.WIDTH = 8
    cfg.MODEL.TINY_BACKBONE.FREEZE = False
    cfg.MODEL.URVOS.ATTENTION_DIM = 32
    cfg.MODEL.URVOS.DECODER_DIM = 32
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (128,), 128
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 128, 128
    return cfg


def _model(cfg, **overrides):
    cfg = cfg.clone()
    for key, value in overrides.items():
        setattr(cfg.MODEL.URVOS, key, value)
    torch.manual_seed(0)
    return build_model(cfg)


def _video(num_frames: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    video = {**make_clip(num_frames, 64, 64), "height": 64, "width": 64}
    video.pop("instances")
    return video


def test_training_step_gives_finite_losses_and_gradients_in_every_module(urvos_cfg):
    model = _model(urvos_cfg).train()
    torch.manual_seed(0)
    losses = model([make_clip(3, 64, 64, absent=(1,)), make_clip(3, 48, 80)])
    assert set(losses) == {"loss_mask"} and torch.isfinite(losses["loss_mask"])
    losses["loss_mask"].backward()
    for name in ("backbone", "cross_modal", "memory_encoder", "memory_attention", "decoder"):
        params = list(getattr(model, name).parameters())
        assert params and all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
        assert sum(p.grad.abs().sum() for p in params) > 0, name
    # the memory encoder's mask channel is trained: the memory reads the masks
    mask_weight = dict(model.memory_encoder.named_parameters())[model.memory_encoder.input_weight]
    assert mask_weight.grad[:, 3].abs().sum() > 0


def test_training_memory_reads_ground_truth_masks_of_earlier_frames(urvos_cfg):
    model = _model(urvos_cfg).train()
    clip = make_clip(3, 64, 64)
    changed = make_clip(3, 64, 64)
    changed["image"], changed["expression"] = clip["image"], clip["expression"]
    for inst in changed["instances"]:
        inst.gt_masks.tensor[:] = False  # the same frames with empty masks
    images = model.preprocess([clip["image"]])
    text = model.text_encoder([clip["expression"]], model.device)
    outs = []
    for x in (clip, changed):
        target = model.prepare_targets([x], images)[0]
        model.eval()  # same BN statistics for both
        outs.append(model.predict(images, text, 3, True, target["masks"][0], target["annotated"]))
    first, other = (o["pred_masks"][0, :, 0] for o in outs)
    torch.testing.assert_close(first[0], other[0])  # frame 0 has no memory
    assert not torch.allclose(first[1], other[1]) and not torch.allclose(first[2], other[2])


def _spy_banks(monkeypatch) -> list:
    """Records every MemoryBank stage 2 builds: per add, (index, memory before as
    {index: confidence}, memory indices after)."""
    banks = []

    class SpyBank(inference.MemoryBank):
        def __post_init__(self):
            super().__post_init__()
            self.log = []
            banks.append(self)

        def add(self, index, confidence, key, value):
            before = dict(zip(self.indices, self.confidences))
            super().add(index, confidence, key, value)
            self.log.append((index, before, set(self.indices)))

    monkeypatch.setattr("rvos_d2.modeling.meta_arch.urvos.MemoryBank", SpyBank)
    return banks


def test_anchor_is_the_most_confident_frame_and_memory_stays_within_t(urvos_cfg, monkeypatch):
    model = _model(urvos_cfg, MEMORY_FRAMES=2, INFERENCE_ITERATIONS=0).eval()
    video = _video(7)
    with torch.no_grad():
        stage1 = model([video])[0]
    banks = _spy_banks(monkeypatch)
    model.inference_iterations = 1
    with torch.no_grad():
        stage2 = model([video])[0]
    anchor = int(stage1["scores"].argmax())
    assert len(banks) == 2  # one propagation each way, each starting from the anchor
    forward, backward = ([index for index, _, _ in bank.log] for bank in banks)
    assert forward == list(range(anchor, 7)) and backward == list(range(anchor, -1, -1))
    full = 0
    for index, before, after in (entry for bank in banks for entry in bank.log):
        assert len(after) <= 2
        if len(before) == 2:  # a full memory loses its least confident frame
            full += 1
            assert after == set(before) - {min(before, key=before.get)} | {index}
    assert full > 0
    assert stage2["scores"][anchor] == stage1["scores"][anchor]  # the anchor is kept
    assert not torch.allclose(stage2["pred_masks"], stage1["pred_masks"])


@pytest.mark.parametrize("scheme", ["anchor", "anchor_previous", "forward"])
def test_each_inference_scheme_runs_on_a_video_longer_than_t(urvos_cfg, monkeypatch, scheme):
    model = _model(urvos_cfg, MEMORY_FRAMES=2, INFERENCE_SCHEME=scheme).eval()
    banks = _spy_banks(monkeypatch)
    with torch.no_grad():
        out = model([_video(6)])[0]
    assert out["pred_masks"].shape == (6, 64, 64) and out["scores"].shape == (6,)
    assert 0 <= out["scores"].min() and out["scores"].max() <= 1
    updated = sorted(index for bank in banks for index, _, _ in bank.log[1:])
    starts = [bank.log[0][0] for bank in banks]
    if scheme == "forward":
        assert starts == [0] and updated == [1, 2, 3, 4, 5]
    else:
        assert len(starts) == 2 and updated == sorted(set(range(6)) - {starts[0]})
    for bank in banks:
        for index, before, after in bank.log:
            assert len(after) <= 2
            if len(before) == 2 and scheme != "anchor":  # the oldest memory frame goes
                order = [i for i, _, _ in bank.log]
                oldest = min(before, key=order.index)
                assert after == set(before) - {oldest} | {index}


def test_each_iteration_restarts_from_the_new_most_confident_frame(urvos_cfg, monkeypatch):
    model = _model(urvos_cfg, INFERENCE_ITERATIONS=1).eval()
    video = _video(6, seed=1)
    with torch.no_grad():
        once = model([video])[0]
    banks = _spy_banks(monkeypatch)
    model.inference_iterations = 2
    with torch.no_grad():
        twice = model([video])[0]
    assert len(banks) == 4
    assert banks[2].log[0][0] == banks[3].log[0][0] == int(once["scores"].argmax())
    assert not torch.allclose(once["pred_masks"], twice["pred_masks"])


def test_inference_sees_one_window_or_one_frame_at_a_time(urvos_cfg):
    cfg = urvos_cfg.clone()
    cfg.TEST.WINDOW = 4
    model = _model(cfg, MEMORY_FRAMES=2).eval()
    batches = []
    model.backbone.register_forward_hook(lambda m, inp, out: batches.append(len(inp[0])))
    memory = []
    model.memory_encoder.register_forward_hook(lambda m, inp, out: memory.append(len(inp[0])))
    with torch.no_grad():
        out = model([_video(11)])[0]
    assert out["pred_masks"].shape[0] == 11
    assert batches[:3] == [4, 4, 3] and set(batches[3:]) == {1} and len(batches) == 3 + 10
    assert set(memory) == {1} and len(memory) == 2 + 10  # the anchor once per direction


def test_ablation_switches_build_what_they_name(urvos_cfg):
    full = _model(urvos_cfg)
    assert isinstance(full.cross_modal, CrossModalAttention)
    no_cross = _model(urvos_cfg, CROSS_MODAL_ATTENTION=False)
    assert isinstance(no_cross.cross_modal, ConcatFusion)
    no_memory = _model(urvos_cfg, MEMORY_ATTENTION=False)
    assert no_memory.memory_encoder is None and no_memory.memory_attention is None
    for model in (no_cross, no_memory):
        model.train()
        losses = model([make_clip(3, 64, 64)])
        losses["loss_mask"].backward()
        assert all(p.grad is not None for p in model.decoder.parameters())
    no_memory.eval()
    with torch.no_grad():
        out = no_memory([_video(5)])[0]
        no_memory.inference_iterations = 0
        stage1 = no_memory([_video(5)])[0]
    torch.testing.assert_close(out["pred_masks"], stage1["pred_masks"])


def test_bad_settings_are_refused(urvos_cfg):
    cfg = urvos_cfg.clone()
    cfg.MODEL.TINY_BACKBONE.TEMPORAL_STAGES = ["res3"]
    with pytest.raises(ValueError, match="video backbone"):
        build_model(cfg)
    with pytest.raises(ValueError, match="INFERENCE_SCHEME"):
        _model(urvos_cfg, INFERENCE_SCHEME="backward")
    with pytest.raises(ValueError, match="MEMORY_FRAMES"):
        _model(urvos_cfg, MEMORY_FRAMES=0)


@pytest.mark.parametrize("path", URVOS_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_urvos_config_builds(path):
    cfg = load_config(path, ["MODEL.DEVICE", "cpu", "MODEL.TEXT_ENCODER.NAME", "minilm"])
    model = build_model(cfg)
    assert isinstance(model, URVOS)
    assert model.memory_frames == cfg.MODEL.URVOS.MEMORY_FRAMES
    assert model.mask_stride == 4
    assert all(p.requires_grad for p in model.memory_encoder.parameters())
    if "Synthetic" not in path.parts:  # the paper's settings
        assert cfg.MODEL.URVOS.MEMORY_FRAMES == 4 and cfg.SOLVER.BASE_LR == 2e-5
        assert cfg.INPUT.MIN_SIZE_TRAIN == (320,) and cfg.MODEL.TEXT_ENCODER.MAX_TOKENS == 20


def test_backbone_checkpoint_initialises_the_memory_encoder(urvos_cfg, tmp_path):
    cfg = urvos_cfg.clone()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    model = _model(cfg)
    torch.manual_seed(1)
    weights = {k: torch.randn_like(v) for k, v in build_model(cfg).backbone.state_dict().items()}
    # an ImageNet-style file: backbone names without prefix, matched by suffix
    torch.save({"model": weights, "matching_heuristics": True}, tmp_path / "imagenet.pth")
    mask_channel = model.memory_encoder.layers[0].conv1.weight[:, 3:].clone()
    RVOSCheckpointer(model).load(str(tmp_path / "imagenet.pth"))
    torch.testing.assert_close(model.backbone.res4[0].conv1.weight, weights["res4.0.conv1.weight"])
    torch.testing.assert_close(
        model.memory_encoder.layers[3][0].conv1.weight, weights["res4.0.conv1.weight"]
    )
    stem = model.memory_encoder.layers[0].conv1.weight
    torch.testing.assert_close(stem[:, :3], weights["stem.conv1.weight"])
    torch.testing.assert_close(stem[:, 3:], mask_channel)
    # a full URVOS checkpoint keeps its own memory encoder
    own = {k: v.clone() for k, v in model.state_dict().items()}
    own["memory_encoder.layers.3.0.conv1.weight"].zero_()
    torch.save({"model": own}, tmp_path / "urvos.pth")
    RVOSCheckpointer(model).load(str(tmp_path / "urvos.pth"))
    assert model.memory_encoder.layers[3][0].conv1.weight.abs().sum() == 0


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


def test_overfits_one_synthetic_clip(urvos_cfg, synth_root):
    model, inputs, dicts = _overfit(urvos_cfg, num_clips=1, iters=150)
    jf = _jf(model, inputs, dicts)
    assert jf >= 0.8, jf


@pytest.mark.slow
def test_overfits_a_few_synthetic_clips(urvos_cfg, synth_root):
    model, inputs, dicts = _overfit(urvos_cfg, num_clips=3, iters=300)
    jf = _jf(model, inputs, dicts)
    assert jf >= 0.8, jf

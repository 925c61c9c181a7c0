"""TopDownRVOS: tracklet construction, the whole pipeline on a tiny video, training, ensemble,
weight assembly, and every top-down config."""

import dataclasses
from pathlib import Path

import pytest
import torch

from rvos_d2.config import load_config
from rvos_d2.data.build import build_train_loader
from rvos_d2.engine import RVOSTrainer
from rvos_d2.modeling.meta_arch.topdown import TopDownRVOS, main
from rvos_d2.modeling.propagation import Propagator, STCNNetwork
from rvos_d2.modeling.tracklets import build_tracklets, object_confidence
from tests.fixtures.model import make_clip

from detectron2.modeling import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = CONFIGS / "Synthetic" / "TopDown-tiny.yaml"
TOPDOWN_CONFIGS = [
    TINY,
    *sorted(p for p in (CONFIGS / "TopDown").rglob("*.yaml") if not p.name.startswith("Base-")),
]


def tiny_cfg():
    """The synthetic config narrowed further; untrained candidate models keep every proposal."""
    cfg = load_config(TINY)
    cfg.MODEL.TINY_BACKBONE.WIDTH = 8
    cfg.MODEL.PROPAGATION.ENCODER_WIDTH = 8
    cfg.MODEL.PROPAGATION.VALUE_DIM = 32
    cfg.MODEL.PROPAGATION.DECODER_DIM = 16
    cfg.MODEL.TOPDOWN.CANDIDATES.OPTS = [
        list(cfg.MODEL.TOPDOWN.CANDIDATES.OPTS[0])
        + ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "INPUT.MIN_SIZE_TEST", "64"]
        + ["INPUT.MAX_SIZE_TEST", "64", "MODEL.RPN.POST_NMS_TOPK_TEST", "30"]
    ]
    cfg.MODEL.TOPDOWN.CANDIDATES.SCORE_THRESH = 0.0
    cfg.MODEL.TOPDOWN.CANDIDATES.MAX_PER_FRAME = 3
    cfg.MODEL.TOPDOWN.NUM_KEY_FRAMES = 2
    cfg.MODEL.TOPDOWN.MAX_TRACKLETS = 4
    cfg.MODEL.TOPDOWN.GROUNDING.HIDDEN_DIM = 32
    cfg.MODEL.TOPDOWN.GROUNDING.DIM_FEEDFORWARD = 64
    return cfg


def small_propagator() -> Propagator:
    cfg = tiny_cfg()
    return Propagator.from_config(cfg, STCNNetwork(cfg).eval())


class StubPropagator:
    """Gives each object probability 0.8 inside its anchor mask in every other frame."""

    def __init__(self):
        self.calls = []

    def stream(self, frames, anchor, masks):
        self.calls.append((anchor, masks.shape[0]))
        for t in range(len(frames)):
            yield t, masks.float() * (1.0 if t == anchor else 0.8), 0.0


def test_tracklets_cover_the_whole_video_from_a_key_frame_in_the_middle():
    torch.manual_seed(0)
    frames = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    mask = torch.zeros(1, 32, 32, dtype=torch.bool)
    mask[0, 8:20, 10:24] = True
    propagator = small_propagator()
    visited = []
    stream = propagator.stream

    def recording_stream(frames, anchor, masks):
        for t, probs, confidence in stream(frames, anchor, masks):
            visited.append(t)
            yield t, probs, confidence

    propagator.stream = recording_stream
    tracklets = build_tracklets(
        propagator,
        frames,
        mask,
        torch.tensor([0.9]),
        torch.tensor([3]),
        torch.tensor([0]),
        stride=2,
    )
    assert visited[0] == 0 and sorted(visited) == list(range(7))  # backward, anchor, forward
    assert tracklets.masks.shape == (1, 7, 16, 16) and tracklets.masks.dtype == torch.float16
    expected = torch.nn.functional.avg_pool2d(mask.float(), 2)
    torch.testing.assert_close(tracklets.masks[0, 3].float(), expected[0], atol=1e-3, rtol=0)
    assert (tracklets.masks[0].flatten(1).sum(1) > 0).all()  # every frame was written
    assert (tracklets.confidence > 0).all()
    torch.testing.assert_close(tracklets.scores, 0.9 * tracklets.confidence.mean(1))


def test_tracklet_scores_and_joint_propagation():
    frames = torch.zeros(5, 3, 8, 8, dtype=torch.uint8)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = masks[1, 4:, 4:] = masks[2, :4, 4:] = True
    key_frames = torch.tensor([1, 1, 3])
    for jointly, calls in ((False, [(1, 1), (1, 1), (3, 1)]), (True, [(1, 2), (3, 1)])):
        stub = StubPropagator()
        tracklets = build_tracklets(
            stub,
            frames,
            masks,
            torch.tensor([0.5, 1.0, 0.9]),
            key_frames,
            torch.tensor([0, 1, 0]),
            stride=1,
            jointly=jointly,
        )
        assert stub.calls == calls
        expected_confidence = torch.full((3, 5), 0.8)
        expected_confidence[[0, 1, 2], [1, 1, 3]] = 1.0
        torch.testing.assert_close(tracklets.confidence, expected_confidence)
        torch.testing.assert_close(
            tracklets.scores, torch.tensor([0.5, 1.0, 0.9]) * expected_confidence.mean(1)
        )
        assert tracklets.sources.tolist() == [0, 1, 0]


def test_object_confidence_of_an_absent_object():
    probs = torch.zeros(2, 4, 4)
    probs[0, :2] = 0.9
    probs[1] = 0.2  # wins no pixel: confidently absent to the degree 1 - 0.2
    torch.testing.assert_close(object_confidence(probs), torch.tensor([0.9, 0.8]))


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_pipeline_on_a_tiny_video(tiny_model):
    torch.manual_seed(0)
    clip = make_clip(5, 48, 64)
    clip["height"], clip["width"] = 60, 80  # outputs at the original size
    tracklets = tiny_model.eval().tracklets(clip["image"])
    assert 0 < len(tracklets) <= 4
    assert tracklets.masks.shape[1:] == (5, 12, 16)
    (out,) = tiny_model([clip])
    assert out["pred_masks"].shape == (5, 60, 80) and out["scores"].shape == (5,)
    assert 0 <= out["pred_masks"].min() and out["pred_masks"].max() <= 1
    assert ((0 <= out["scores"]) & (out["scores"] <= 1)).all()


def test_candidate_recall_is_the_best_kept_tracklet_iou_with_the_target(tiny_model, monkeypatch):
    torch.manual_seed(0)
    clip = make_clip(4, 48, 64)
    tiny_model.eval()
    tracklets = tiny_model.tracklets(clip["image"])
    gt, annotated = tiny_model._target_masks(clip, tracklets.masks.shape[-2:])
    expected = max(
        float(((t > 0.5) & (gt > 0.5)).sum() / ((t > 0.5) | (gt > 0.5)).sum())
        for t in tracklets.masks.float()
    )
    (out,) = tiny_model([clip])
    assert float(out["candidate_target_iou"]) == pytest.approx(expected)
    # the target itself among the tracklets: a perfect ceiling
    perfect = tracklets.masks.clone()
    perfect[-1] = gt.to(perfect.dtype)
    monkeypatch.setattr(
        tiny_model, "tracklets", lambda frames: dataclasses.replace(tracklets, masks=perfect)
    )
    (out,) = tiny_model([clip])
    assert float(out["candidate_target_iou"]) == 1.0
    del clip["instances"]
    assert "candidate_target_iou" not in tiny_model([clip])[0]


def test_tracklets_are_reused_for_the_expressions_of_one_video(tiny_model, monkeypatch):
    calls = []
    tracklets = tiny_model.tracklets
    monkeypatch.setattr(
        tiny_model, "tracklets", lambda frames: calls.append(1) or tracklets(frames)
    )
    clip = make_clip(3, 48, 64)
    clip["video_id"] = "v"
    other = {**clip, "expression": "the other one"}
    tiny_model.eval()([clip, other])
    assert len(calls) == 1
    tiny_model([{**clip, "video_id": "w"}])
    assert len(calls) == 2


def test_training_step_trains_the_grounding_model_only(tiny_model):
    torch.manual_seed(0)
    tiny_model.train()
    assert not tiny_model.candidates.models[0].training
    assert not tiny_model.propagation_network.training
    losses = tiny_model([make_clip(4, 48, 64), make_clip(4, 48, 64, absent=(1,))])
    assert set(losses) == {"loss_grounding"} and torch.isfinite(losses["loss_grounding"])
    assert losses["loss_grounding"] > 0
    losses["loss_grounding"].backward()
    head = tiny_model.grounding.head
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())
    frozen = [*tiny_model.candidates.parameters(), *tiny_model.propagation_network.parameters()]
    assert not any(p.requires_grad for p in frozen)
    tiny_model.zero_grad()


def test_ensemble_averages_grounding_models(tiny_model, tmp_path):
    cfg = tiny_cfg()
    config_file = tmp_path / "member.yaml"
    config_file.write_text(cfg.dump())
    member = build_model(cfg)
    torch.manual_seed(1)
    for p in member.grounding.head.parameters():
        p.data.normal_(0, 0.2)
    torch.save({"model": member.state_dict()}, tmp_path / "member.pth")
    cfg.MODEL.TOPDOWN.ENSEMBLE.CONFIG_FILES = [str(config_file)]
    cfg.MODEL.TOPDOWN.ENSEMBLE.WEIGHTS = [str(tmp_path / "member.pth")]
    model = build_model(cfg)
    model.load_state_dict(tiny_model.state_dict(), strict=False)
    model.eval()
    torch.testing.assert_close(
        model.ensemble[0].head.score.layers[0].weight, member.grounding.head.score.layers[0].weight
    )
    clip = make_clip(3, 48, 64)
    tracklets = model.tracklets(clip["image"])
    with torch.no_grad():
        own = model.grounding(clip["image"], tracklets.masks, clip["expression"]).softmax(-1)
        other = model.ensemble[0](clip["image"], tracklets.masks, clip["expression"]).softmax(-1)
        (out,) = model([clip])
    mean = (own + other) / 2
    best = int(mean.mean(0).argmax())
    torch.testing.assert_close(out["scores"], mean[:, best])
    cfg.MODEL.TOPDOWN.ENSEMBLE.WEIGHTS = []
    with pytest.raises(ValueError, match="ENSEMBLE"):
        TopDownRVOS(cfg)


def test_assemble_loads_part_weights(tmp_path):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    source = build_model(cfg)
    torch.save({"model": source.candidates.models[0].state_dict()}, tmp_path / "maskrcnn.pth")
    network = {f"network.{k}": v for k, v in source.propagation_network.state_dict().items()}
    torch.save({"model": network}, tmp_path / "stcn.pth")
    torch.save({"model": source.grounding.backbone.state_dict()}, tmp_path / "backbone.pth")
    cfg.MODEL.TOPDOWN.CANDIDATES.WEIGHTS = [str(tmp_path / "maskrcnn.pth")]
    cfg.MODEL.TOPDOWN.PROPAGATION_WEIGHTS = str(tmp_path / "stcn.pth")
    cfg.MODEL.TOPDOWN.GROUNDING.BACKBONE_WEIGHTS = str(tmp_path / "backbone.pth")
    config_file = tmp_path / "topdown.yaml"
    config_file.write_text(cfg.dump())
    torch.manual_seed(1)
    main(["--config-file", str(config_file), "--output", str(tmp_path / "init.pth")])
    state = torch.load(tmp_path / "init.pth", weights_only=True)["model"]
    for key, value in source.grounding.backbone.state_dict().items():
        torch.testing.assert_close(state[f"grounding.backbone.{key}"], value)
    key = "candidates.models.0.roi_heads.mask_head.predictor.weight"
    torch.testing.assert_close(state[key], source.state_dict()[key])
    key = "propagation_network.key_proj.weight"
    torch.testing.assert_close(state[key], source.state_dict()[key])


@pytest.mark.parametrize("path", TOPDOWN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_topdown_configs_build(path):
    cfg = load_config(path, ["MODEL.DEVICE", "cpu"])
    cfg.MODEL.TEXT_ENCODER.NAME = "minilm"  # the paper's BERT may not be available offline
    model = build_model(cfg)
    assert isinstance(model, TopDownRVOS)
    assert len(model.candidates.models) == len(cfg.MODEL.TOPDOWN.CANDIDATES.CONFIG_FILES)


def test_pipeline_on_synthetic_videos(synth_root, tmp_path):
    """Mapped synthetic clips train a step; the valid videos go through the RVOS evaluator."""
    cfg = tiny_cfg()
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = ("synth_test_train",), ("synth_test_valid",)
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 64
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 64
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.OUTPUT_DIR = str(tmp_path)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    losses = model(next(iter(build_train_loader(cfg))))
    assert torch.isfinite(losses["loss_grounding"])
    metrics = RVOSTrainer.test(cfg, model.eval())["rvos"]
    assert 0 <= metrics["JF"] <= 1 and 0 <= metrics["mean_IoU"] <= 1


def test_interrupted_weight_write_leaves_no_file(tmp_path, monkeypatch):
    config_file = tmp_path / "topdown.yaml"
    config_file.write_text(tiny_cfg().dump())
    real_save = torch.save

    def save_then_fail(obj, f):
        real_save(obj, f)
        raise KeyboardInterrupt  # killed after writing, before the file is complete on disk

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        main(["--config-file", str(config_file), "--output", str(tmp_path / "init.pth")])
    assert list(tmp_path.glob("*.pth")) == [] and list(tmp_path.glob(".init.pth*")) == []

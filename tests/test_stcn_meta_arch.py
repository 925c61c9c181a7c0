"""SpaceTimeMemoryNetwork: built from its configs, a training step, inference outputs, loss."""

from pathlib import Path

import pytest
import torch

from rvos_d2.config import load_config
from rvos_d2.modeling.propagation.losses import bootstrap_fraction, bootstrapped_cross_entropy
from rvos_d2.modeling.propagation.meta_arch import label_map

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_model():
    cfg = load_config(CONFIGS / "Synthetic" / "STCN-tiny.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PROPAGATION.ENCODER_WIDTH = 8
    torch.manual_seed(0)
    return build_model(cfg)


def moving_squares(num_frames: int, height: int = 48, width: int = 64, seed: int = 0):
    """Frames with two coloured squares moving in opposite directions, and their masks."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 100, (num_frames, 3, height, width), generator=g, dtype=torch.uint8)
    masks = torch.zeros(num_frames, 2, height, width, dtype=torch.uint8)
    for t in range(num_frames):
        masks[t, 0, 8:20, 4 + 3 * t : 16 + 3 * t] = 1
        masks[t, 1, 26:40, 40 - 3 * t : 52 - 3 * t] = 1
        image[t][:, masks[t, 0].bool()] = torch.tensor([250, 30, 30], dtype=torch.uint8)[:, None]
        image[t][:, masks[t, 1].bool()] = torch.tensor([30, 30, 250], dtype=torch.uint8)[:, None]
    return image, masks


def test_training_step_gives_finite_loss_and_gradients():
    model = tiny_model().train()
    image, masks = moving_squares(3)
    clip = {"image": image, "gt_masks": masks, "obj_ids": [1, 2], "video_id": "v"}
    single = {"image": image, "gt_masks": masks[:, :1], "obj_ids": [1], "video_id": "w"}
    with EventStorage(0):
        losses = model([clip, single])
    assert set(losses) == {"loss_stcn_ce"}
    assert torch.isfinite(losses["loss_stcn_ce"])
    losses["loss_stcn_ce"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["network.key_encoder.stem.conv.weight"].abs().sum() > 0
    assert grads["network.value_encoder.trunk.stem.conv.weight"].abs().sum() > 0
    assert grads["network.decoder.pred.weight"].abs().sum() > 0
    # BatchNorm statistics stay frozen in training, as in STCN
    bn = model.network.key_encoder.stem.norm
    assert not bn.training and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))


def test_a_few_training_steps_lower_the_loss():
    model = tiny_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    image, masks = moving_squares(3)
    clip = {"image": image, "gt_masks": masks, "obj_ids": [1, 2], "video_id": "v"}
    history = []
    for _ in range(8):
        loss = model([clip])["loss_stcn_ce"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.5 * history[0], history


def test_inference_output_and_objects_before_their_frame():
    model = tiny_model().eval()
    image, masks = moving_squares(5)
    video = {
        "image": image,
        "height": 96,
        "width": 128,
        "file_names": [f"{t:05d}.jpg" for t in range(5)],
        "frame_ids": list(range(5)),
        "video_id": "v",
        "obj_ids": [3, 7],
        "given_masks": torch.stack([masks[0, 0], masks[2, 1]]),
        "given_frames": [0, 2],
    }
    (out,) = model([video])
    assert out["obj_ids"] == [3, 7]
    probs = out["pred_masks"]
    assert probs.shape == (5, 2, 96, 128)
    assert (probs[:2, 1] == 0).all()  # object 7 is given at frame 2
    assert (probs >= 0).all() and (probs.sum(1) <= 1 + 1e-5).all()
    # the given frames keep their masks (resized x2)
    assert torch.equal(probs[0, 0, ::2, ::2] > 0.5, masks[0, 0].bool())


def test_inference_rejects_mismatched_given_frames():
    model = tiny_model().eval()
    image, masks = moving_squares(2)
    video = {"image": image, "height": 48, "width": 64, "obj_ids": [1], "video_id": "v"}
    with pytest.raises(ValueError, match="1 given masks but 2 given_frames"):
        model([{**video, "given_masks": masks[0, :1], "given_frames": [0, 1]}])
    with pytest.raises(IndexError, match="given frame 4 outside"):
        model([{**video, "given_masks": masks[0, :1], "given_frames": [4]}])


def test_training_clip_errors():
    model = tiny_model().train()
    image, masks = moving_squares(3)
    with pytest.raises(ValueError, match="gt_masks of shape"):
        model([{"image": image, "gt_masks": masks[:2], "video_id": "v"}])
    with pytest.raises(KeyError, match="no 'gt_masks'"):
        model([{"image": image, "video_id": "v"}])


def test_bootstrap_schedule_and_loss():
    assert bootstrap_fraction(0, 20000, 70000, 0.15) == 1.0
    assert bootstrap_fraction(45000, 20000, 70000, 0.15) == pytest.approx(0.575)
    assert bootstrap_fraction(90000, 20000, 70000, 0.15) == 0.15
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 8, 8), torch.randint(0, 3, (8, 8))
    full = torch.nn.functional.cross_entropy(logits[None], labels[None], reduction="none")
    hardest = full.flatten().sort(descending=True).values[:16].mean()
    assert bootstrapped_cross_entropy(logits, labels, 1.0) == pytest.approx(full.mean().item())
    assert bootstrapped_cross_entropy(logits, labels, 0.25) == pytest.approx(hardest.item())


def test_label_map_puts_later_objects_on_top():
    masks = torch.zeros(2, 2, 2)
    masks[0, 0] = 1
    masks[1, :, 0] = 1
    assert label_map(masks).tolist() == [[2, 1], [2, 0]]


def test_official_config_builds():
    cfg = load_config(CONFIGS / "Propagation" / "STCN-R50.yaml")
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    names = dict(model.network.named_parameters())
    assert names["key_proj.weight"].shape == (64, 1024, 3, 3)
    assert names["value_encoder.trunk.stem.conv.weight"].shape == (64, 5, 7, 7)
    assert model.propagator.mem_every == 5 and model.network.top_k == 20

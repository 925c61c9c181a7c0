"""ReferFormer: dynamic mask head, training step, windowed inference, synthetic-clip learning."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rvos_d2.data.mappers import RVOSDatasetMapper
from rvos_d2.engine import RVOSCheckpointer
from rvos_d2.evaluation import metrics
from rvos_d2.modeling.heads.dynamic_mask_head import DynamicMaskHead, relative_coordinates
from rvos_d2.modeling.meta_arch.referformer import ReferFormer
from tests.fixtures.model import make_clip

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model


def test_relative_coordinates_are_offsets_from_the_centre():
    centres = torch.tensor([[[0.5, 0.5]], [[0.0, 1.0]]])  # 2 frames, 1 query
    sizes = torch.tensor([[16, 16], [16, 8]])  # second frame: 8 px wide, rest is padding
    coords = relative_coordinates(centres, (4, 4), stride=4, image_sizes=sizes)
    assert coords.shape == (2, 1, 2, 4, 4)
    # positions sit at pixels 2, 6, 10, 14
    torch.testing.assert_close(coords[0, 0, 0, 0], torch.tensor([2, 6, 10, 14]) / 16 - 0.5)
    torch.testing.assert_close(coords[0, 0, 1, :, 0], torch.tensor([2, 6, 10, 14]) / 16 - 0.5)
    torch.testing.assert_close(coords[1, 0, 0, 0], torch.tensor([2, 6, 10, 14]) / 8)
    torch.testing.assert_close(coords[1, 0, 1, :, 3], torch.tensor([2, 6, 10, 14]) / 16 - 1)


def test_dynamic_mask_head_is_a_per_query_conv_net():
    torch.manual_seed(0)
    head = DynamicMaskHead(query_dim=16, in_channels=8, channels=8)
    queries, centres = torch.randn(2, 3, 16), torch.rand(2, 3, 2)
    features, sizes = torch.randn(2, 8, 5, 6), torch.tensor([[20, 24], [20, 24]])
    masks = head(queries, centres, features, 4, sizes)
    assert masks.shape == (2, 3, 5, 6)

    # the same result from explicit 1x1 convolutions with the generated parameters
    f, q = 1, 2
    weights, biases = head._split(head.controller(queries))
    coords = relative_coordinates(centres, (5, 6), 4, sizes)[f, q]
    x = torch.cat([features[f], coords])[None]
    for i, (w, b) in enumerate(zip(weights, biases)):
        x = F.conv2d(x, w[f, q][..., None, None], b[f, q])
        x = F.relu(x) if i < len(weights) - 1 else x
    torch.testing.assert_close(masks[f, q], x[0, 0])
    assert [tuple(w.shape[-2:]) for w in weights] == [(8, 10), (8, 8), (1, 8)]

    # each mask depends on its own query only
    changed = queries.clone()
    changed[0, 1] += 1
    moved = head(changed, centres, features, 4, sizes)
    assert not torch.allclose(moved[0, 1], masks[0, 1])
    torch.testing.assert_close(moved[0, [0, 2]], masks[0, [0, 2]])
    torch.testing.assert_close(moved[1], masks[1])


def test_training_step_gives_finite_losses_and_gradients(referformer_cfg):
    torch.manual_seed(0)
    model = build_model(referformer_cfg)
    assert isinstance(model, ReferFormer)
    model.train()
    batch = [make_clip(3, 64, 64, absent=(1,)), make_clip(3, 48, 80)]
    losses = model(batch)
    num_layers = referformer_cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS
    names = ("loss_cls", "loss_bbox", "loss_giou", "loss_dice", "loss_mask")
    expected = set(names) | {f"{n}_{i}" for n in names for i in range(num_layers - 1)}
    if referformer_cfg.MODEL.QUERY_DECODER.REFERENCE_SEARCH:
        expected.add("loss_search")
    assert set(losses) == expected
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    parts = (model.query_decoder.query_embed, model.mask_branch.head, model.mask_branch.fpn)
    for module in (model.backbone, *parts):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    frozen = model.text_encoder.language_model
    assert all(p.grad is None for p in frozen.parameters())


def test_checkpoint_leaves_out_the_frozen_language_model(referformer_cfg, tmp_path):
    torch.manual_seed(0)
    model = build_model(referformer_cfg).eval()
    RVOSCheckpointer(model, str(tmp_path)).save("model")
    language_model = model.text_encoder.language_model.state_dict()
    lm_bytes = sum(v.numel() * v.element_size() for v in language_model.values())
    assert (tmp_path / "model.pth").stat().st_size < lm_bytes / 4
    torch.manual_seed(1)
    fresh = build_model(referformer_cfg).eval()
    loader = RVOSCheckpointer(fresh)
    incompatible = loader._load_model(loader._load_file(str(tmp_path / "model.pth")))
    assert not incompatible.missing_keys and not incompatible.unexpected_keys
    video = _video(3)
    torch.testing.assert_close(fresh([video])[0], model([video])[0])


def test_training_rejects_clips_of_different_lengths(referformer_cfg):
    model = build_model(referformer_cfg).train()
    with pytest.raises(ValueError, match="one length"):
        model([make_clip(3), make_clip(2)])


def _video(num_frames, height=40, width=56):
    clip = make_clip(num_frames, height, width)
    return {**clip, "height": 2 * height + 1, "width": 3 * width}


def test_windowed_inference_equals_one_window(referformer_cfg):
    torch.manual_seed(0)
    model = build_model(referformer_cfg).eval()
    video = _video(7)
    model.test_window = 3
    windowed = model([video])[0]
    model.test_window = 36
    whole = model([video])[0]
    assert windowed["pred_masks"].shape == (7, 81, 168)
    assert windowed["scores"].shape == (7,)
    assert windowed["pred_boxes"].shape == (7, 4)
    for key in ("pred_masks", "scores", "pred_boxes"):
        torch.testing.assert_close(windowed[key], whole[key], atol=1e-4, rtol=1e-4)
    masks = windowed["pred_masks"]
    assert masks.min() >= 0 and masks.max() <= 1
    boxes = windowed["pred_boxes"]
    assert (boxes[:, 2:] >= boxes[:, :2]).all() and boxes[:, [0, 2]].max() <= 168


def test_query_is_chosen_over_the_whole_video(referformer_cfg, monkeypatch):
    """Query 2 wins the first window, query 0 wins on average over the video: 0 is kept."""
    model = build_model(referformer_cfg).eval()
    model.test_window = 2
    scripted = torch.tensor([[-5.0, -5.0, 4.0]] * 2 + [[3.0, -5.0, -5.0]] * 3)  # T x N logits
    calls = []

    def fake_predict(images, text, num_frames, all_layers):
        start = sum(calls)
        calls.append(num_frames)
        logits = scripted[start : start + num_frames]
        n = logits.shape[1]
        h, w = images.tensor.shape[-2] // 4, images.tensor.shape[-1] // 4
        masks = torch.arange(n, dtype=torch.float).view(1, n, 1, 1).expand(num_frames, n, h, w)
        boxes = torch.full((num_frames, n, 4), 0.5)
        return {"pred_logits": logits[None], "pred_boxes": boxes[None], "pred_masks": masks[None]}

    monkeypatch.setattr(model, "predict", fake_predict)
    model.num_queries = 3
    out = model([_video(5)])[0]
    assert calls == [2, 2, 1]
    torch.testing.assert_close(out["scores"], scripted[:, 0].sigmoid())
    torch.testing.assert_close(out["pred_masks"], torch.full_like(out["pred_masks"], 0.5))


def _jf(model, inputs, dataset_dicts):
    """Mean J&F of the model's masks against the GT of each clip's frames."""
    from rvos_d2.data.mask_io import load_target_mask

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


def _overfit(cfg, synth_root, num_clips, iters):
    torch.manual_seed(0)
    np.random.seed(0)
    cfg.SOLVER.BASE_LR = 1e-3
    model = build_model(cfg)
    dicts = DatasetCatalog.get("synth_test_train")[:num_clips]
    train_mapper = RVOSDatasetMapper(cfg, is_train=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(iters):
        model.train()
        batch = [train_mapper(d) for d in dicts]
        loss = sum(model(batch).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    test_mapper = RVOSDatasetMapper(cfg, is_train=False)
    return model, losses, [test_mapper(d) for d in dicts], dicts


def test_loss_decreases_on_synthetic_clips(referformer_cfg, synth_root):
    _, losses, _, _ = _overfit(referformer_cfg, synth_root, num_clips=2, iters=25)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_overfits_a_few_synthetic_clips(referformer_cfg, synth_root):
    referformer_cfg.MODEL.TINY_BACKBONE.WIDTH = 16
    referformer_cfg.MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM = 64
    model, _, inputs, dicts = _overfit(referformer_cfg, synth_root, num_clips=3, iters=300)
    assert _jf(model, inputs, dicts) >= 0.8

"""ReferFormer's published training and evaluation semantics, each behind a config option:
loss normalisation, box terms on every frame, point-sampled targets, text-encoder mode and lr,
uniform weight decay, and the A2D / JHMDB annotated-clip evaluation; checked against the
official formulas written out by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou

from rvos_d2.config import load_config
from rvos_d2.engine.optimizer import get_param_groups
from rvos_d2.evaluation import metrics
from rvos_d2.evaluation.a2d_evaluator import score_samples, summarize_samples
from rvos_d2.modeling.criterion import SetCriterion
from rvos_d2.modeling.losses import downsample_masks
from rvos_d2.modeling.matcher import MatchCostWeights, SequenceMatcher
from rvos_d2.modeling.referformer.inference import binary_masks_at_original, centred_clip
from rvos_d2.modeling.referformer.target_sampling import point_sample_masks
from tests.fixtures.model import make_clip

from detectron2.modeling import build_model

WEIGHTS = MatchCostWeights(cls=2.0, l1=5.0, giou=2.0, dice=5.0, focal=2.0)
LOSS_WEIGHTS = {n: 1.0 for n in ("loss_cls", "loss_bbox", "loss_giou", "loss_dice", "loss_mask")}


def _focal(logits, targets, alpha=0.25, gamma=2.0):
    """The official sigmoid_focal_loss, element-wise."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    return (alpha * targets + (1 - alpha) * (1 - targets)) * ce * (1 - p_t) ** gamma


def _batch():
    """One clip of T = 3 frames, N = 1 slot, the target absent at frame 1 (zero box)."""
    g = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(1, 3, 1, generator=g),
        "pred_boxes": torch.rand(1, 3, 1, 4, generator=g) * 0.4 + 0.3,
        "pred_masks": torch.randn(1, 3, 1, 4, 4, generator=g),
    }
    masks = torch.zeros(1, 3, 4, 4)
    masks[0, 0, 1:3, 1:3] = 1
    masks[0, 2, 0:2, 1:4] = 1
    boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0], [0.6, 0.25, 0.75, 0.5]]])
    valid = torch.tensor([[True, False, True]])
    return outputs, [{"valid": valid, "boxes": boxes, "masks": masks}]


def test_official_normalisation_and_box_terms_on_a_hand_made_batch():
    outputs, targets = _batch()
    criterion = SetCriterion(SequenceMatcher(WEIGHTS), LOSS_WEIGHTS, ["labels", "boxes", "masks"])
    official = SetCriterion(
        SequenceMatcher(WEIGHTS, boxes_on_all_frames=True),
        LOSS_WEIGHTS,
        ["labels", "boxes_all_frames", "masks"],
        mask_norm="frames",
    )
    num_boxes = 2.0  # valid frames of the batch
    logits, boxes = outputs["pred_logits"][0, :, 0], outputs["pred_boxes"][0, :, 0]
    tgt_boxes, valid = targets[0]["boxes"][0], targets[0]["valid"][0].float()
    giou = torch.diag(
        generalized_box_iou(
            box_convert(boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
        )
    )
    pred_masks, tgt_masks = outputs["pred_masks"][0, :, 0].flatten(), targets[0]["masks"].flatten()
    probs = pred_masks.sigmoid()
    dice = 1 - (2 * (probs * tgt_masks).sum() + 1) / (probs.sum() + tgt_masks.sum() + 1)
    expected = {
        "loss_cls": _focal(logits, valid).sum() / num_boxes,
        "loss_bbox": (boxes - tgt_boxes).abs().sum() / num_boxes,  # frame 1 against a zero box
        "loss_giou": (1 - giou).sum() / num_boxes,
        "loss_mask": _focal(pred_masks, tgt_masks).mean() / num_boxes,
        "loss_dice": dice / num_boxes,
    }
    got = official(outputs, targets)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)
    # the default: mask losses per sequence, boxes on visible frames only
    default = criterion(outputs, targets)
    torch.testing.assert_close(default["loss_mask"], expected["loss_mask"] * num_boxes)
    keep = valid.bool()
    torch.testing.assert_close(
        default["loss_bbox"], (boxes - tgt_boxes)[keep].abs().sum() / num_boxes
    )
    assert not torch.isclose(default["loss_giou"], expected["loss_giou"])


def test_matcher_box_costs_over_every_frame():
    outputs, targets = _batch()
    logits = outputs["pred_logits"][0].repeat(1, 2)  # T x 2 slots
    boxes = torch.cat([outputs["pred_boxes"][0], outputs["pred_boxes"][0].flip(0)], dim=1)
    masks = outputs["pred_masks"][0].repeat(1, 2, 1, 1)
    tgt = targets[0]
    l1 = torch.stack([torch.cdist(boxes[t], tgt["boxes"][:, t], p=1) for t in range(3)])
    giou = torch.stack(
        [
            generalized_box_iou(
                box_convert(boxes[t], "cxcywh", "xyxy"),
                box_convert(tgt["boxes"][:, t], "cxcywh", "xyxy"),
            )
            for t in range(3)
        ]
    )
    box_all = (5.0 * l1 - 2.0 * giou).mean(0)  # the official per-frame average over all frames
    box_valid = (5.0 * l1 - 2.0 * giou)[[0, 2]].mean(0)
    official = SequenceMatcher(WEIGHTS, boxes_on_all_frames=True).cost_matrix(
        logits, boxes, masks, tgt
    )
    default = SequenceMatcher(WEIGHTS).cost_matrix(logits, boxes, masks, tgt)
    torch.testing.assert_close(official - default, box_all - box_valid, rtol=1e-5, atol=1e-6)
    assert (box_all - box_valid).abs().max() > 1e-3


def test_point_sampled_targets_take_the_pixel_at_offset_two():
    masks = torch.arange(8 * 12, dtype=torch.float).reshape(1, 8, 12)
    torch.testing.assert_close(point_sample_masks(masks, 4), masks[:, 2::4, 2::4])
    odd = torch.ones(1, 6, 9)  # zero-padded to 8 x 12 first: row 6 and column 10 sample 0
    assert point_sample_masks(odd, 4).tolist() == [[[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]
    cell = torch.zeros(1, 4, 4)
    cell[0, 2, 2] = 1  # one pixel: the point sample sees it, the area average a sixteenth
    assert point_sample_masks(cell, 4).item() == 1.0
    assert downsample_masks(cell, 4).item() == pytest.approx(1 / 16)


@pytest.mark.parametrize(
    "frame, length, clip, position",
    [
        (4, 10, [2, 3, 4, 5, 6], 2),
        (0, 10, [0, 0, 0, 1, 2], 0),  # the first copy of the frame, as list.index
        (9, 10, [7, 8, 9, 9, 9], 2),
        (1, 2, [0, 0, 1, 1, 1], 2),
    ],
)
def test_centred_clip_repeats_edge_frames(frame, length, clip, position):
    assert centred_clip(frame, 5, length) == (clip, position)


def test_binary_masks_are_cropped_then_resized_by_nearest_neighbour():
    logits = torch.full((1, 2, 3), -5.0)
    logits[0, 0, 0] = 5.0  # top-left cell positive
    logits[0, :, 2] = 5.0  # right column lies in the padding
    masks = binary_masks_at_original(logits, 2, image_size=(4, 4), original_size=(8, 8))
    assert masks.shape == (1, 8, 8) and masks.dtype == torch.bool
    assert masks[0, :2, :2].all() and not masks[0, :, 6:].any()  # padding cropped away


def test_a2d_scores_every_query_for_map_and_the_best_for_iou():
    gt = np.zeros((6, 6), bool)
    gt[1:4, 1:4] = True
    wrong = np.zeros((6, 6), bool)
    wrong[4:, 4:] = True
    dataset_dict = {
        "video_id": "v",
        "exp_id": "0",
        "height": 6,
        "width": 6,
        "obj_ids": [1],
        "frame_names": ["00001", "00002"],
        "mask_annotations": [None, {"type": "rle", "rle": metrics.encode_mask(gt)}],
    }
    model_input = {"frame_ids": [0, 1]}
    output = {  # the best slot (0.9) is wrong, the second (0.6) right
        "pred_masks": torch.from_numpy(np.stack([np.zeros_like(gt), wrong]).astype(np.float32)),
        "scores": torch.tensor([0.0, 0.9]),
        "query_frames": torch.tensor([1]),
        "query_scores": torch.tensor([[0.9, 0.6]]),
        "query_masks": torch.from_numpy(np.stack([wrong, gt])[None]),
    }
    with_queries = summarize_samples(score_samples(model_input, output, dataset_dict))
    best_only = {k: v for k, v in output.items() if not k.startswith("query_")}
    without = summarize_samples(score_samples(model_input, best_only, dataset_dict))
    assert with_queries["mean_IoU"] == without["mean_IoU"] == 0.0
    assert without["mAP"] == 0.0
    # detections ranked [wrong, right]: precision 1/2 at full recall at every IoU threshold
    assert with_queries["mAP"] == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(ValueError, match="lacks annotated frame"):
        score_samples(model_input, {**output, "query_frames": torch.tensor([0])}, dataset_dict)


def _with(cfg, **options):
    cfg = cfg.clone()
    cfg.defrost()
    for key, value in options.items():
        setattr(cfg.MODEL.REFERFORMER, key, value)
    return cfg


def test_synthetic_config_keeps_the_previous_semantics(referformer_cfg):
    rf = referformer_cfg.MODEL.REFERFORMER
    assert (rf.MASK_TARGETS, rf.MASK_LOSS_NORM, rf.BOXES_ON_ALL_FRAMES) == (
        "area",
        "sequences",
        False,
    )
    assert (rf.TEST_ANNOTATED_CLIPS, rf.TRAIN_SIZE_DIVISIBILITY, rf.FROZEN_TEXT_DROPOUT) == (
        0,
        0,
        False,
    )


def test_paper_configs_switch_the_official_semantics_on():
    cfg = load_config("configs/ReferFormer/jhmdb_sentences/R50.yaml")
    rf = cfg.MODEL.REFERFORMER
    assert (rf.MASK_TARGETS, rf.MASK_LOSS_NORM, rf.BOXES_ON_ALL_FRAMES) == ("point", "frames", True)
    assert (rf.TRAIN_SIZE_DIVISIBILITY, rf.FROZEN_TEXT_DROPOUT) == (32, True)
    assert (rf.TEST_ANNOTATED_CLIPS, rf.SIZE_DIVISIBILITY, cfg.INPUT.TEST_WITH_GT) == (5, 32, True)
    pretrain = load_config("configs/ReferFormer/refcoco/R50.yaml")
    assert not pretrain.MODEL.TEXT_ENCODER.FREEZE
    assert pretrain.SOLVER.BASE_LR * pretrain.SOLVER.TEXT_ENCODER_MULTIPLIER == pytest.approx(1e-5)


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
        self.text_encoder = nn.Module()
        self.text_encoder.language_model = nn.Sequential(nn.Embedding(5, 4), nn.LayerNorm(4))
        self.text_encoder.word_resizer = nn.Linear(4, 4)
        self.head = nn.Linear(4, 1)


def test_paper_optimizer_uniform_decay_and_text_encoder_lr():
    cfg = load_config("configs/ReferFormer/refcoco/R50.yaml")
    model = _Toy()
    lr_of = {}
    for group in get_param_groups(model, cfg):
        assert group["weight_decay"] == pytest.approx(5e-4)  # norms, embeddings, biases alike
        lr_of.update({id(p): group["lr"] for p in group["params"]})
    assert {lr_of[id(p)] for p in model.text_encoder.language_model.parameters()} == {1e-5}
    assert {lr_of[id(p)] for p in model.backbone.parameters()} == {5e-5}
    resizer_and_head = [*model.text_encoder.word_resizer.parameters(), *model.head.parameters()]
    assert {lr_of[id(p)] for p in resizer_and_head} == {1e-4}


def test_frozen_text_dropout_follows_train_mode(referformer_cfg):
    cfg = _with(referformer_cfg, FROZEN_TEXT_DROPOUT=True)
    with pytest.raises(ValueError, match="CACHE_SIZE 0"):
        build_model(cfg)
    cfg.MODEL.TEXT_ENCODER.CACHE_SIZE = 0
    model = build_model(cfg)
    assert model.train().text_encoder.language_model.training
    assert not model.eval().text_encoder.language_model.training
    assert not build_model(referformer_cfg).train().text_encoder.language_model.training


def test_official_training_options_in_a_training_step(referformer_cfg):
    cfg = _with(
        referformer_cfg,
        MASK_TARGETS="point",
        MASK_LOSS_NORM="frames",
        BOXES_ON_ALL_FRAMES=True,
        TRAIN_SIZE_DIVISIBILITY=64,
    )
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.criterion.matcher.boxes_on_all_frames and model.criterion.mask_norm == "frames"
    batch = [make_clip(3, 64, 64, absent=(1,)), make_clip(3, 48, 80)]
    images = model.preprocess([x["image"] for x in batch])
    assert images.tensor.shape[-2:] == (64, 128)  # padded to a multiple of 64 in training
    targets = model.prepare_targets(batch, images)
    mask = batch[1]["instances"][0].gt_masks.tensor[0].float()
    torch.testing.assert_close(targets[1]["masks"][0, 0, :12, :20], mask[2::4, 2::4])
    losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values()) and "loss_bbox" in losses
    assert model.eval().preprocess([batch[1]["image"]]).tensor.shape[-2:] == (64, 96)


def test_annotated_clips_decode_only_the_annotated_frame(referformer_cfg):
    cfg = _with(referformer_cfg, TEST_ANNOTATED_CLIPS=3)
    cfg.MODEL.QUERY_DECODER.NUM_QUERIES = 2
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    video = make_clip(6, 48, 64)
    for t, inst in enumerate(video["instances"]):
        inst.gt_annotated[0] = t in (0, 4)
    out = model([video])[0]
    assert out["query_frames"].tolist() == [0, 4]
    assert out["query_scores"].shape == (2, 2) and out["query_masks"].shape == (2, 2, 48, 64)
    assert out["pred_masks"][[1, 2, 3, 5]].abs().sum() == 0 and out["scores"][1] == 0
    best = out["query_scores"][1].argmax()
    torch.testing.assert_close(out["pred_masks"][4], out["query_masks"][1, best].float())
    # frame 4's scores are those of its clip (frames 3-5) decoded at position 1 only
    images = model.preprocess([video["image"][[3, 4, 5]]])
    text = model.text_encoder([video["expression"]], model.device)
    with torch.no_grad():
        single = model.predict(images, text, 3, all_layers=False, frame=1)
    assert single["pred_logits"].shape == (1, 1, 2)
    torch.testing.assert_close(out["query_scores"][1], single["pred_logits"][0, 0].sigmoid())
    del video["instances"]
    with pytest.raises(ValueError, match="TEST_WITH_GT"):
        model([video])


def test_reference_frame_training_supervises_only_the_reference_frame(referformer_cfg):
    cfg = _with(referformer_cfg, TRAIN_REFERENCE_FRAME_ONLY=True)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    batch = [make_clip(3, 48, 64), make_clip(3, 48, 64)]
    for video, reference in zip(batch, (0, 2)):
        video["reference_frame"] = reference

    def losses():
        torch.manual_seed(1)
        return {k: v.item() for k, v in model(batch).items()}

    before = losses()
    assert all(np.isfinite(v) for v in before.values())
    # another frame's target carries no supervision; the reference frame's does
    batch[0]["instances"][1].gt_masks.tensor.zero_()
    assert losses() == before
    batch[0]["instances"][0].gt_masks.tensor.zero_()
    assert losses()["loss_dice"] != before["loss_dice"]
    # decoded frames: position 0 of clip 0 and position 2 of clip 1 (T = 1)
    model.eval()
    images = model.preprocess([video["image"] for video in batch])
    text = model.text_encoder([video["expression"] for video in batch], model.device)
    one_text = model.text_encoder([batch[1]["expression"]], model.device)
    with torch.no_grad():
        outputs = model.predict(images, text, 3, all_layers=False, frame=[0, 2])
        single = model.predict(
            model.preprocess([batch[1]["image"]]), one_text, 3, all_layers=False, frame=2
        )
    assert outputs["pred_masks"].shape[:2] == (2, 1)
    torch.testing.assert_close(outputs["pred_logits"][1], single["pred_logits"][0])
    with pytest.raises(ValueError, match="one per clip"):
        model.predict(images, text, 3, all_layers=False, frame=[0, 3])
    model.train()
    del batch[1]["reference_frame"]
    with pytest.raises(KeyError, match="reference_frame"):
        model(batch)

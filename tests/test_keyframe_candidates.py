"""Key-frame sampling and candidates from randomly initialised Mask R-CNNs of the model zoo."""

import numpy as np
import pytest
import torch

from rvos_d2.modeling.keyframe_candidates import (
    KeyFrameCandidates,
    build_candidate_model,
    key_frame_indices,
    resolve_candidate_config,
)

MASK_RCNN = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
# A small Mask R-CNN (ResNet-18 trunk, few proposals) that returns something when untrained.
SMALL = [
    "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0,
    "TEST.DETECTIONS_PER_IMAGE", 8,
    "INPUT.MIN_SIZE_TEST", 64,
    "INPUT.MAX_SIZE_TEST", 128,
]  # fmt: skip


def test_key_frames_are_uniform():
    assert key_frame_indices(70, 7) == [5, 15, 25, 35, 45, 55, 65]
    assert key_frame_indices(9, 1) == [4]  # a single key frame is the middle one
    assert key_frame_indices(3, 7) == [0, 1, 2]
    with pytest.raises(ValueError, match="num_key_frames"):
        key_frame_indices(5, 0)


def test_model_zoo_config_is_found_and_bad_names_are_named():
    assert resolve_candidate_config(MASK_RCNN).endswith(MASK_RCNN)
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        resolve_candidate_config("COCO-InstanceSegmentation/no_such_model.yaml")


def test_candidates_of_two_models_on_key_frames():
    torch.manual_seed(0)
    models, formats, sizes = [], [], []
    for _ in range(2):
        model, cfg = build_candidate_model(MASK_RCNN, SMALL, "cpu")
        models.append(model)
        formats.append(cfg.INPUT.FORMAT)
        sizes.append((cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST))
    assert formats == ["BGR", "BGR"] and not any(p.requires_grad for p in models[0].parameters())
    candidates = KeyFrameCandidates(
        models=models,
        input_formats=formats,
        test_sizes=sizes,
        num_key_frames=2,
        score_threshold=0.0,
        max_per_frame=5,
    ).train()  # train() keeps the frozen models in eval mode
    assert not models[0].training
    frames = torch.randint(0, 256, (6, 3, 40, 56), dtype=torch.uint8)
    out = candidates(frames)
    n = len(out)
    assert n > 0
    assert out.masks.shape == (n, 40, 56) and out.masks.dtype == torch.bool
    assert out.scores.shape == (n,) and out.frames.shape == (n,) and out.sources.shape == (n,)
    assert set(out.frames.tolist()) <= {1, 4}
    assert set(out.sources.tolist()) == {0, 1}  # candidates of both models are combined
    for t in (1, 4):
        for source in (0, 1):
            chosen = (out.frames == t) & (out.sources == source)
            assert int(chosen.sum()) <= 5
            scores = out.scores[chosen]
            assert torch.all(scores[:-1] >= scores[1:])  # best first


def test_frame_instances_from_vos_videos_train_a_candidate_model(tmp_path):
    """Every object of every annotated frame becomes an instance; a Mask R-CNN trains on them."""
    from PIL import Image

    from rvos_d2.modeling.keyframe_candidates import frame_instance_dicts

    from detectron2.data import DatasetMapper
    from detectron2.utils.events import EventStorage

    files, annotations = [], []
    for t in range(3):
        ids = np.zeros((40, 48), np.uint8)
        ids[5 : 15 + t, 4:20] = 1
        if t != 1:  # object 2 leaves in frame 1
            ids[25:35, 30:44] = 2
        Image.fromarray(np.full((40, 48, 3), 60 * t, np.uint8)).save(tmp_path / f"{t}.jpg")
        png = Image.fromarray(ids, mode="P")
        png.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 759)  # as DAVIS / YouTube-VOS
        png.save(tmp_path / f"{t}.png")
        files.append(str(tmp_path / f"{t}.jpg"))
        annotations.append(
            None if t == 2 else {"type": "palette_png", "file": str(tmp_path / f"{t}.png")}
        )
    video = {
        "video_id": "v",
        "file_names": files,
        "obj_ids": [1, 2],
        "mask_annotations": annotations,
    }
    records = frame_instance_dicts([video])
    assert [r["image_id"] for r in records] == ["v/0", "v/1"]  # frame 2 has no annotation
    assert [len(r["annotations"]) for r in records] == [2, 1]
    assert records[0]["annotations"][1]["bbox"] == [30.0, 25.0, 14.0, 10.0]  # XYWH

    _, cfg = build_candidate_model(MASK_RCNN, SMALL, "cpu")
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN = (64,), 128
    inputs = [DatasetMapper(cfg, is_train=True)(dict(r)) for r in records]
    masks = inputs[0]["instances"].gt_masks.tensor
    assert masks.shape[0] == 2 and masks.sum() > 0
    torch.manual_seed(0)
    model, _ = build_candidate_model(MASK_RCNN, SMALL, "cpu")
    model.requires_grad_(True).train()
    with EventStorage():
        losses = model(inputs)
    total = sum(losses.values())
    assert {"loss_mask", "loss_cls", "loss_rpn_cls"} <= set(losses) and torch.isfinite(total)
    total.backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0

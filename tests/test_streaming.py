"""Streaming inference: windows of a lazily read video give the same outputs as the whole video
in memory, and frames are not read further ahead than one window."""

import cv2
import numpy as np
import pytest
import torch

from rvos_d2.engine.predictor import VideoPredictor
from rvos_d2.utils.video_io import VideoReader
from tests.fixtures.model import make_clip

from detectron2.modeling import build_model


def _video(num_frames: int) -> dict:
    return {**make_clip(num_frames, 40, 56), "height": 81, "width": 168}


@pytest.mark.parametrize("num_queries", [1, 3])
def test_stream_video_equals_the_whole_video_in_one_window(referformer_cfg, num_queries):
    referformer_cfg.MODEL.QUERY_DECODER.NUM_QUERIES = num_queries
    torch.manual_seed(0)
    model = build_model(referformer_cfg).eval()
    video = _video(7)
    whole = model([video])[0]  # TEST.WINDOW 36: one window
    windows = (video["image"][s : s + 2] for s in range(0, 7, 2))
    streamed = list(model.stream_video(windows, video["expression"], (81, 168)))
    assert len(streamed) == 7
    for key in ("pred_masks", "scores", "pred_boxes"):
        per_frame = torch.stack([f[key] for f in streamed])
        torch.testing.assert_close(per_frame, whole[key], atol=1e-4, rtol=1e-4)


def test_predictor_reads_at_most_two_windows_ahead(referformer_cfg):
    """With one query slot, output k is yielded before frame k + 2 * window is decoded."""
    referformer_cfg.MODEL.QUERY_DECODER.NUM_QUERIES = 1
    referformer_cfg.TEST.WINDOW = 3
    referformer_cfg.MODEL.WEIGHTS = ""
    segmenter = VideoPredictor(referformer_cfg)
    decoded = []

    def frames():
        for t in range(20):
            decoded.append(t)
            yield np.full((48, 64, 3), 10 * t, dtype=np.uint8)

    lead = []
    for k, (prob, score) in enumerate(segmenter.stream(frames(), "the red square", (48, 64))):
        assert prob.shape == (48, 64) and 0 <= score <= 1
        lead.append(len(decoded) - k)
    assert len(lead) == 20 and max(lead) <= 2 * referformer_cfg.TEST.WINDOW


def test_predictor_on_a_frame_folder_equals_the_model_on_its_frames(referformer_cfg, tmp_path):
    referformer_cfg.MODEL.QUERY_DECODER.NUM_QUERIES = 3
    referformer_cfg.TEST.WINDOW = 4
    referformer_cfg.MODEL.WEIGHTS = ""
    torch.manual_seed(0)
    segmenter = VideoPredictor(referformer_cfg)
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(9)]
    for t, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{t:05d}.png"), frame[..., ::-1])
    reader = VideoReader(folder)
    streamed = list(segmenter.stream((f for _, f in reader), "the red square", (48, 64)))
    model_input = segmenter._model_input(frames, "the red square")
    segmenter.model.test_window = 36
    whole = segmenter.model([model_input])[0]
    probs = np.stack([p for p, _ in streamed])
    np.testing.assert_allclose(probs, whole["pred_masks"].numpy(), atol=1e-4)

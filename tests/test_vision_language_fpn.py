"""Vision-language FPN: shapes, frames of a clip interact, clips do not, the 1-D text position."""

import math

import pytest
import torch

from rvos_d2.modeling.heads.vision_language_fpn import VisionLanguageFPN, sine_text_position


def _fpn() -> VisionLanguageFPN:
    torch.manual_seed(0)
    return VisionLanguageFPN(
        [8, 16, 16, 16],
        conv_dim=16,
        mask_dim=12,
        num_heads=2,
        dim_feedforward=32,
        dropout=0.0,
        reductions=[8, 4, 2, 1],
        norm_groups=4,
    ).eval()


def _inputs(videos: int, frames: int):
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3)]
    channels = [8, 16, 16, 16]
    features = [torch.randn(videos * frames, c, h, w) for c, (h, w) in zip(channels, sizes)]
    masks = [torch.zeros(videos * frames, h, w, dtype=torch.bool) for h, w in sizes]
    words = torch.randn(videos, 5, 16)
    word_mask = torch.zeros(videos, 5, dtype=torch.bool)
    word_mask[0, 4] = True
    return features, masks, words, word_mask


def test_shapes_and_clip_interaction():
    fpn = _fpn()
    features, masks, words, word_mask = _inputs(videos=2, frames=3)
    with torch.no_grad():
        before = fpn(features, masks, words, word_mask, num_frames=3)
        assert before.shape == (6, 12, 16, 24)
        features[0][2] = torch.randn(8, 16, 24)  # frame 2 of clip 0
        after = fpn(features, masks, words, word_mask, num_frames=3)
    # frame 0 of the same clip sees frame 2 through the clip-wide self-attention
    assert not torch.allclose(before[0], after[0])
    # the other clip is untouched
    torch.testing.assert_close(before[3:], after[3:])


def test_padded_words_are_ignored():
    fpn = _fpn()
    features, masks, words, word_mask = _inputs(videos=1, frames=2)
    word_mask[:] = False
    word_mask[0, 3:] = True
    with torch.no_grad():
        padded = fpn(features, masks, words, word_mask, num_frames=2)
        trimmed = fpn(features, masks, words[:, :3], word_mask[:, :3], num_frames=2)
    torch.testing.assert_close(padded, trimmed, rtol=1e-5, atol=1e-5)


def test_levels_must_match():
    fpn = _fpn()
    features, masks, words, word_mask = _inputs(videos=1, frames=1)
    with pytest.raises(ValueError, match="expects 4 levels"):
        fpn(features[:3], masks[:3], words, word_mask, num_frames=1)


def test_sine_text_position_values():
    word_mask = torch.tensor([[False, False, False, True]])
    pos = sine_text_position(word_mask, 4)
    assert pos.shape == (1, 4, 4)
    # token i of n valid tokens sits at i / n * 2 pi; channels (sin f0, cos f0, sin f1, cos f1)
    for i in range(3):
        angle = (i + 1) / (3 + 1e-6) * 2 * math.pi
        expected = [
            math.sin(angle),
            math.cos(angle),
            math.sin(angle / 100.0),
            math.cos(angle / 100.0),
        ]
        torch.testing.assert_close(pos[0, i], torch.tensor(expected), rtol=0, atol=1e-6)
    # valid tokens keep their positions whatever padding follows them
    torch.testing.assert_close(pos[:, :3], sine_text_position(word_mask[:, :3], 4))

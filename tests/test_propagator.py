"""Propagator: frame order, memory schedule and bound, aggregation, streaming, input checks.

Following an object is checked with a hand-set matching network: its keys are the pixels'
colours and its values the object masks at full resolution, so that a correct propagator
(memory read, aggregation, frame order, padding) must follow a uniquely coloured object; the
STCN network itself runs through the same code in tests/test_stcn_official.py.
"""

from pathlib import Path

import pytest
import torch
from torch import nn

from rvos_d2.config import load_config
from rvos_d2.modeling.propagation import Propagator, STCNNetwork
from rvos_d2.modeling.propagation.memory import MemoryBank, MemoryEntry, read_memory
from rvos_d2.modeling.propagation.network import KeyFeatures
from rvos_d2.modeling.propagation.propagator import frame_confidence

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RED = torch.tensor([230, 20, 20], dtype=torch.uint8)


class ColourMatcher(nn.Module):
    """Hand-set memory network: key = colour at full resolution, value = the object's mask,
    logit = a steep function of the readout, so a pixel takes the label of same-coloured
    memory pixels."""

    top_k = 4

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return images.float() / 255

    def encode_key(self, images: torch.Tensor) -> KeyFeatures:
        key = 8 * images
        return KeyFeatures(key, images, images, images, images)

    def encode_value(self, image, key_f16, masks):
        return masks.unsqueeze(1)

    def segment(self, memory: MemoryBank, feats: KeyFeatures, context=None) -> torch.Tensor:
        return 20 * (memory.read(feats.key, self.top_k)[:, 0] - 0.5)


def background(num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """Frames of a fixed texture of dull colours (never close to RED)."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.randint(0, 120, (3, height, width), generator=g, dtype=torch.uint8)
    return texture.expand(num_frames, -1, -1, -1).clone()


def square_video(num_frames: int, height=24, width=36, size=6, step=2):
    """A red square moving right by `step` pixels a frame; returns frames and true masks."""
    frames = background(num_frames, height, width)
    masks = torch.zeros(num_frames, height, width)
    for t in range(num_frames):
        x = 3 + step * t
        masks[t, 8 : 8 + size, x : x + size] = 1
        frames[t][:, masks[t].bool()] = RED[:, None]
    return frames, masks


def tiny_network() -> STCNNetwork:
    cfg = load_config(CONFIGS / "Synthetic" / "STCN-tiny.yaml")
    cfg.MODEL.PROPAGATION.ENCODER_WIDTH = 8
    torch.manual_seed(0)
    return STCNNetwork(cfg).eval()


def test_identity_video_keeps_anchor_mask():
    frames, masks = square_video(7, step=0)
    result = Propagator(ColourMatcher(), mem_every=2).propagate(frames, 3, masks[3:4])
    assert result.probs.shape == (7, 1, 24, 36)
    for t in range(7):
        assert torch.equal(result.probs[t, 0] > 0.5, masks[3].bool()), t
    assert result.probs[:, 0][masks.bool()].min() > 0.99
    assert (result.confidences > 0.99).all()


def test_translated_object_is_followed_both_ways():
    frames, masks = square_video(9)  # 24 x 36: padded to 32 x 48 inside
    anchor = 4
    result = Propagator(ColourMatcher(), mem_every=3).propagate(list(frames), anchor, masks[anchor])
    predicted = result.probs[:, 0] > 0.5
    assert torch.equal(predicted, masks.bool())
    assert not torch.equal(masks[0], masks[anchor])  # the object did move


def test_streamed_iterator_matches_sequence_and_keeps_order():
    frames, masks = square_video(8)
    propagator = Propagator(ColourMatcher(), mem_every=2, include_last=True)
    whole = propagator.propagate(frames, 5, masks[5:6])
    streamed = list(propagator.stream((f for f in frames), 5, masks[5:6]))
    assert [t for t, _, _ in streamed] == list(range(8))
    torch.testing.assert_close(torch.stack([p for _, p, _ in streamed]), whole.probs)


def test_memory_schedule_and_temporary_last_frame():
    frames, masks = square_video(12, step=1)
    propagator = Propagator(ColourMatcher(), mem_every=3)
    list(propagator.stream(frames, 2, masks[2:3]))
    # the anchor, then every 3rd frame from it; the last frame of each pass never enters
    assert propagator.memory_banks["forward"].frames == [2, 5, 8]
    assert propagator.memory_banks["backward"].frames == [2]
    propagator = Propagator(ColourMatcher(), mem_every=3, include_last=True)
    list(propagator.stream(frames, 2, masks[2:3]))
    assert propagator.memory_banks["forward"].frames == [2, 5, 8, 10]  # 10: temporary


def test_memory_bound_on_long_video():
    """400 frames of the tiny STCN: the memory never holds more than its cap."""
    network = tiny_network()
    frames, masks = square_video(400, height=32, width=32, size=6, step=0)
    cap = 4
    propagator = Propagator(network, mem_every=2, include_last=True, max_memory_frames=cap)
    per_frame = None
    counts, sizes = [], []
    for t, probs, confidence in propagator.stream(iter(frames), 0, masks[0:1]):
        assert probs.shape == (1, 32, 32) and 0 <= confidence <= 1 + 1e-6, t
        bank = propagator.memory_banks.get("forward")
        if bank is not None:
            counts.append(len(bank.entries))
            sizes.append(bank.num_elements)
            if per_frame is None and len(bank.entries) == 1:
                per_frame = bank.num_elements
    assert max(counts) == cap  # the cap is reached and never exceeded
    assert max(sizes) <= (cap + 1) * per_frame  # + the temporary last frame
    assert propagator.memory_banks["forward"].entries[0].frame == 0  # the anchor stays


def test_frame_confidence_definition():
    probs = torch.tensor([[[0.9, 0.2, 0.3]], [[0.1, 0.8, 0.6]]])  # background, one object
    assert frame_confidence(probs) == pytest.approx(0.7)  # object pixels: 0.8 and 0.6
    no_object = torch.tensor([[[0.9, 0.7]], [[0.1, 0.3]]])
    assert frame_confidence(no_object) == pytest.approx(0.8)  # mean background probability


def test_least_confident_memory_frame_is_replaced():
    bank = MemoryBank(max_frames=3)
    key, values = torch.zeros(2, 1, 1), torch.zeros(1, 2, 1, 1)
    bank.add(MemoryEntry(0, key, values, float("inf"), permanent=True))
    for frame, confidence in [(5, 0.9), (10, 0.5), (15, 0.7), (20, 0.95)]:
        bank.add(MemoryEntry(frame, key, values, confidence, permanent=False))
    # 15 replaced 10 (0.5), then 20 replaced 15 (0.7)
    assert bank.frames == [0, 5, 20]


def test_several_objects_give_a_valid_distribution():
    network = tiny_network()
    g = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (4, 3, 36, 40), generator=g, dtype=torch.uint8)
    masks = torch.zeros(3, 36, 40)
    masks[0, :10], masks[1, 12:24, :20], masks[2, 26:, 20:] = 1, 1, 1
    result = Propagator(network, mem_every=1).propagate(frames, 1, masks)
    assert result.probs.shape == (4, 3, 36, 40)
    assert (result.probs >= 0).all()
    total = result.probs.sum(1)
    assert (total <= 1 + 1e-6).all()
    # the background (1 - sum) is a probability too and the anchor keeps its masks
    assert ((1 - total) >= -1e-6).all()
    assert torch.equal(
        result.probs[1].argmax(0)[masks.sum(0) > 0], masks.argmax(0)[masks.sum(0) > 0]
    )


def test_bad_inputs_give_clear_errors():
    frames, masks = square_video(5)
    propagator = Propagator(ColourMatcher())
    with pytest.raises(IndexError, match="anchor index 5: the video has 5 frames"):
        propagator.propagate(frames, 5, masks[0])
    with pytest.raises(IndexError, match="anchor index 7: the video has 5 frames"):
        list(propagator.stream(iter(frames), 7, masks[0]))
    with pytest.raises(IndexError, match="anchor index -1"):
        propagator.propagate(frames, -1, masks[0])
    with pytest.raises(ValueError, match=r"anchor masks: expected K x 24 x 36"):
        propagator.propagate(frames, 0, masks[0, :20])
    with pytest.raises(ValueError, match="anchor masks"):
        propagator.propagate(frames, 0, torch.zeros(0, 24, 36))
    with pytest.raises(ValueError, match="frame 2: size"):
        propagator.propagate([frames[0], frames[1], frames[2][:, :20]], 0, masks[0])
    with pytest.raises(ValueError, match="no frame"):
        MemoryBank().read(torch.zeros(2, 3, 3), top_k=4)
    with pytest.raises(ValueError, match="no frame"):
        read_memory(torch.zeros(2, 0), torch.zeros(1, 4, 0), torch.zeros(2, 3, 3), 4)
    with pytest.raises(ValueError, match="mem_every=0"):
        Propagator(ColourMatcher(), mem_every=0)
    with pytest.raises(ValueError, match="max_memory_frames=-1"):
        Propagator(ColourMatcher(), max_memory_frames=-1)

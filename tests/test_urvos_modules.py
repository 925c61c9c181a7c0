"""URVOS parts: coordinates, attention blocks, decoder, memory bank, frame store, loss."""

import pytest
import torch

from rvos_d2.modeling.meta_arch.urvos import clip_memory_schedule
from rvos_d2.modeling.urvos.attention import (
    ConcatFusion,
    CrossModalAttention,
    MemoryAttention,
    attend,
)
from rvos_d2.modeling.urvos.coords import spatial_coords, spatiotemporal_coords
from rvos_d2.modeling.urvos.criterion import URVOSCriterion
from rvos_d2.modeling.urvos.decoder import PyramidDecoder
from rvos_d2.modeling.urvos.inference import (
    FrameStore,
    MemoryBank,
    frame_confidence,
    propagation_orders,
)


def test_spatial_coords_follow_the_paper_on_a_2x4_grid():
    s = spatial_coords(2, 4)
    assert s.shape == (8, 2, 4)
    # cell (1, 2): rows [0, 1] of [-1, 1] split in 2, columns [0, 0.5] split in 4
    torch.testing.assert_close(s[:, 1, 2], torch.tensor([0.0, 0.5, 1.0, 0.0, 0.25, 0.5, 0.5, 0.25]))
    torch.testing.assert_close(
        s[:, 0, 0], torch.tensor([-1.0, -0.5, 0.0, -1, -0.75, -0.5, 0.5, 0.25])
    )
    assert s[:6].min() == -1 and s[:6].max() == 1


def test_spatiotemporal_coords_follow_the_paper():
    st = spatiotemporal_coords(torch.tensor([0, 3]), duration=4, height=2, width=4)
    assert st.shape == (2, 12, 2, 4)
    # frame 3 of 4: t in [0.5, 1]; then the 6 spatial dims, 1/T, 1/H, 1/W
    expected = torch.tensor([0.5, 0.75, 1.0, 0.0, 0.5, 1.0, 0.0, 0.25, 0.5, 0.25, 0.5, 0.25])
    torch.testing.assert_close(st[1, :, 1, 2], expected)
    torch.testing.assert_close(st[0, :3, 0, 0], torch.tensor([-1.0, -0.75, -0.5]))
    with pytest.raises(ValueError, match="not in"):
        spatiotemporal_coords(torch.tensor([4]), duration=4, height=2, width=2)


def test_attend_ignores_excluded_keys_and_reads_zeros_without_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 2)
    excluded = torch.tensor([[False, True, False, True, False]])
    kept = [0, 2, 4]
    torch.testing.assert_close(attend(q, k, v, excluded), attend(q, k[:, kept], v[:, kept]))
    per_query = torch.zeros(1, 3, 5, dtype=torch.bool)
    per_query[0, 1] = True  # query 1 reads nothing
    out = attend(q, k, v, per_query)
    assert out[0, 1].abs().sum() == 0 and out[0, 0].abs().sum() > 0


@pytest.mark.parametrize("fusion", [CrossModalAttention, ConcatFusion])
def test_cross_modal_map_ignores_padding_words_and_reads_the_words(fusion):
    torch.manual_seed(0)
    module = fusion(16, 8, 12)
    features, padding = torch.randn(2, 16, 3, 4), torch.zeros(2, 3, 4, dtype=torch.bool)
    words, mask = torch.randn(2, 3, 8), torch.zeros(2, 3, dtype=torch.bool)
    out = module(features, padding, words, mask)
    assert out.shape == (2, 12, 3, 4)
    padded_words = torch.cat([words, torch.randn(2, 2, 8)], 1)
    padded_mask = torch.cat([mask, torch.ones(2, 2, dtype=torch.bool)], 1)
    torch.testing.assert_close(module(features, padding, padded_words, padded_mask), out)
    other = module(features, padding, words.flip(0), mask)
    assert not torch.allclose(other, out)


def test_memory_attention_reads_only_allowed_memory_frames():
    torch.manual_seed(0)
    module = MemoryAttention(6, 5, 4)
    key, value = module.target(torch.randn(2, 6, 3, 3))
    mem_key, mem_value = module.memory(torch.randn(3, 5, 3, 3), torch.tensor([0, 1, 2]), 3)
    assert key.shape == value.shape == (2, 4, 3, 3)
    assert mem_key.shape == mem_value.shape == (3, 4, 3, 3)
    clip = [x[None] for x in (key, value, mem_key, mem_value)]
    allowed = torch.tensor([[[True, False, False], [False, False, False]]])
    out = module(*clip, allowed)
    torch.testing.assert_close(out[0, 1], value[1])  # no memory frame: Eq. 14's v_p alone
    assert not torch.allclose(out[0, 0], value[0])
    changed = clip[2].clone()
    changed[:, 1:] = torch.randn_like(changed[:, 1:])
    torch.testing.assert_close(module(clip[0], clip[1], changed, clip[3], allowed), out)
    only_first = module(clip[0], clip[1], clip[2][:, :1], clip[3][:, :1])
    torch.testing.assert_close(only_first[0, 0], out[0, 0])


def test_clip_memory_schedule_reads_at_most_t_predecessors():
    expected = torch.tensor(
        [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool
    )
    assert torch.equal(clip_memory_schedule(4, 2), expected)


@pytest.mark.parametrize("memory", [True, False])
def test_pyramid_decoder_predicts_at_stride_4(memory):
    decoder = PyramidDecoder([32, 16, 8, 4], [32, 16, 8, 4], 12, 16, memory=memory)
    levels = [torch.randn(2, c, 64 // s, 64 // s) for c, s in zip([32, 16, 8, 4], [32, 16, 8, 4])]
    cross = torch.randn(2, 12, 2, 2)
    mem = torch.randn(2, 12, 4, 4) if memory else None
    assert decoder(levels, cross, mem).shape == (2, 16, 16)
    assert decoder.stride == 4
    with pytest.raises(ValueError, match="extra map"):
        decoder(levels, cross, None if memory else torch.randn(2, 12, 4, 4))


def _entry(value: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((1, 1, 1), value), torch.full((1, 1, 1), value)


def test_memory_bank_replaces_the_least_confident_frame():
    bank = MemoryBank(3)
    for index, conf in enumerate([0.9, 0.4, 0.7]):
        bank.add(index, conf, *_entry(index))
    bank.add(3, 0.2, *_entry(3))  # the new frame replaces frame 1 (0.4), even if less confident
    assert len(bank) == 3 and sorted(bank.indices) == [0, 2, 3]
    bank.add(4, 0.8, *_entry(4))  # now frame 3 (0.2) goes
    assert sorted(bank.indices) == [0, 2, 4]
    keys, values = bank.stacked()
    assert sorted(keys.flatten().tolist()) == [0.0, 2.0, 4.0] and values.shape == (3, 1, 1, 1)


def test_memory_bank_previous_keeps_the_last_frames():
    bank = MemoryBank(2, replace="previous")
    for index, conf in enumerate([0.1, 0.9, 0.5, 0.3]):
        bank.add(index, conf, *_entry(index))
        assert len(bank) <= 2
    assert sorted(bank.indices) == [2, 3]
    with pytest.raises(ValueError, match="MEMORY_FRAMES"):
        MemoryBank(0)


def test_propagation_orders():
    assert [list(r) for r in propagation_orders("anchor", 2, 5)] == [[3, 4], [1, 0]]
    assert [list(r) for r in propagation_orders("anchor_previous", 0, 3)] == [[1, 2], []]
    assert [list(r) for r in propagation_orders("forward", 0, 3)] == [[1, 2]]
    with pytest.raises(ValueError, match="INFERENCE_SCHEME"):
        propagation_orders("backward", 0, 3)


def test_frame_confidence_is_the_mean_foreground_probability():
    probs = torch.tensor([[[0.9, 0.7], [0.2, 0.1]], [[0.3, 0.1], [0.2, 0.4]]])
    torch.testing.assert_close(frame_confidence(probs.logit()), torch.tensor([0.8, 0.0]))


def test_frame_store_keeps_frames_and_updates_logits():
    frames = torch.randint(0, 256, (3, 3, 8, 6), dtype=torch.uint8)
    logits = torch.randn(3, 2, 2)
    with FrameStore() as store:
        store.append(frames[:2], logits[:2])
        store.append(frames[2:], logits[2:])
        assert len(store) == 3
        assert torch.equal(store.frame(2), frames[2])
        torch.testing.assert_close(store.logits(1), logits[1])
        store.write_logits(1, torch.zeros(2, 2))
        assert store.logits(1).abs().sum() == 0
        torch.testing.assert_close(store.logits(2), logits[2])
        assert torch.equal(store.frame(1), frames[1])
        with pytest.raises(ValueError, match="differ"):
            store.append(frames[:1, :, :4], logits[:1])
        with pytest.raises(IndexError):
            store.frame(3)


def test_criterion_is_the_pixel_cross_entropy_of_annotated_frames():
    pred = torch.randn(1, 3, 1, 4, 4, requires_grad=True)
    masks = (torch.rand(1, 3, 4, 4) > 0.5).float()
    annotated = torch.tensor([True, False, True])
    losses = URVOSCriterion()({"pred_masks": pred}, [{"masks": masks, "annotated": annotated}])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        pred[0, [0, 2], 0], masks[0, [0, 2]]
    )
    torch.testing.assert_close(losses["loss_mask"], expected)
    none = URVOSCriterion()(
        {"pred_masks": pred}, [{"masks": masks, "annotated": torch.zeros(3, dtype=torch.bool)}]
    )
    assert none["loss_mask"] == 0 and none["loss_mask"].requires_grad

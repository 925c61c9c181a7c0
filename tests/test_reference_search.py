"""Text-guided initial reference points: attention over the memory, its loss, and ReferFormer."""

import math

import torch

from rvos_d2.modeling.heads.reference_search import (
    TextGuidedReference,
    search_loss,
    target_positions,
)
from rvos_d2.modeling.transformer import token_centres
from tests.fixtures.model import make_clip

from detectron2.modeling import build_model


def test_token_centres_are_cell_centres_of_the_unpadded_frame():
    shapes = torch.tensor([[2, 4], [1, 2]])
    ratios = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.5, 1.0], [0.5, 1.0]]])
    coords = token_centres(shapes.tolist(), ratios)
    assert coords.shape == (2, 10, 2)
    torch.testing.assert_close(coords[0, :4, 0], torch.tensor([0.125, 0.375, 0.625, 0.875]))
    torch.testing.assert_close(coords[0, [0, 4], 1], torch.tensor([0.25, 0.75]))
    torch.testing.assert_close(coords[0, 8:], torch.tensor([[0.25, 0.5], [0.75, 0.5]]))
    # half of the second frame is padding: its image spans the first two columns of level 0
    torch.testing.assert_close(coords[1, :2, 0], torch.tensor([0.25, 0.75]))
    assert (coords[1, 2:4, 0] > 1).all()


def test_reference_is_the_attention_weighted_position_and_ignores_padding():
    torch.manual_seed(0)
    search = TextGuidedReference(8, 2)
    memory = torch.randn(2, 5, 8)
    coords = torch.rand(2, 5, 2)
    padding = torch.tensor([[False] * 5, [False, False, False, True, True]])
    query = torch.randn(2, 3, 8)
    points, attention, content = search(
        query, torch.randn(2, 3, 8), *_words(2, 8), memory, torch.randn(2, 5, 8), coords, padding
    )
    assert points.shape == (2, 3, 2) and attention.shape == (2, 3, 5)
    assert content.shape == query.shape and not torch.allclose(content, query)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 3))
    assert (attention[1, :, 3:] == 0).all()
    torch.testing.assert_close(points, attention @ coords)


def _words(frames: int, dim: int, length: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random word features with the last word of every frame padded."""
    mask = torch.zeros(frames, length, dtype=torch.bool)
    mask[:, -1] = True
    return torch.randn(frames, length, dim), mask


def _matching_search(read_weight: float) -> TextGuidedReference:
    """Identity query/key projections (logits are scaled dot products); word reading scaled."""
    search = TextGuidedReference(4, 1)
    with torch.no_grad():
        for proj in (search.query_proj, search.key_proj):
            proj.weight.copy_(torch.eye(4) * 4)
            proj.bias.zero_()
        attn = search.read_words.attn
        attn.in_proj_weight.copy_(torch.eye(4).repeat(3, 1))
        attn.in_proj_bias.zero_()
        attn.out_proj.weight.copy_(torch.eye(4) * read_weight)
        attn.out_proj.bias.zero_()
    return search


def _search_one(search, words):
    query = torch.tensor([[[1.0, 0, 0, 0]]])
    memory = torch.tensor([[[0.0, 1, 0, 0], [1.0, 0, 0, 0], [0.0, 0, 1, 0]]])
    coords = torch.tensor([[[0.1, 0.1], [0.8, 0.3], [0.5, 0.9]]])
    points, _, _ = search(
        query,
        torch.zeros_like(query),
        words,
        torch.zeros(1, words.shape[1], dtype=torch.bool),
        memory,
        torch.zeros_like(memory),
        coords,
        torch.zeros(1, 3, dtype=torch.bool),
    )
    return points[0, 0]


def test_a_matching_key_pulls_the_reference_onto_its_position():
    words = torch.tensor([[[0.0, 0, 0, 1]]])  # read, but orthogonal to every key
    torch.testing.assert_close(
        _search_one(_matching_search(1.0), words), torch.tensor([0.8, 0.3]), atol=0.02, rtol=0
    )


def test_the_words_read_by_the_query_steer_the_reference():
    words = torch.tensor([[[0.0, 0, 3, 0]]])  # the word matches the third memory position
    torch.testing.assert_close(
        _search_one(_matching_search(0.0), words), torch.tensor([0.8, 0.3]), atol=0.02, rtol=0
    )
    torch.testing.assert_close(
        _search_one(_matching_search(1.0), words), torch.tensor([0.5, 0.9]), atol=0.02, rtol=0
    )


def test_target_positions_mark_the_cells_that_hold_the_target():
    masks = torch.zeros(1, 8, 8)
    masks[0, 0:2, 6:8] = 1.0  # top-right corner at stride 4 of a 32 x 32 frame
    on = target_positions(masks, torch.tensor([[4, 4], [2, 2], [1, 1]]))
    assert on.shape == (1, 21)
    assert on[0, :16].nonzero().flatten().tolist() == [3]
    assert on[0, 16:20].tolist() == [False, True, False, False]
    assert on[0, 20]


def test_search_loss_is_the_negative_log_mass_on_the_target_of_the_best_query():
    attention = torch.tensor([[[0.5, 0.5, 0.0], [0.1, 0.1, 0.8]], [[1 / 3, 1 / 3, 1 / 3]] * 2])
    on_target = torch.tensor([[False, False, True], [True, False, False]])
    loss = search_loss(attention, on_target, torch.tensor([True, True]))
    torch.testing.assert_close(loss, torch.tensor((-math.log(0.8) + math.log(3)) / 2))
    only_first = search_loss(attention, on_target, torch.tensor([True, False]))
    torch.testing.assert_close(only_first, torch.tensor(-math.log(0.8)))
    assert search_loss(attention, on_target, torch.tensor([False, False])) == 0


def test_referformer_with_reference_search_trains_the_search(referformer_cfg):
    referformer_cfg.MODEL.QUERY_DECODER.REFERENCE_SEARCH = True
    referformer_cfg.MODEL.REFERFORMER.SEARCH_WEIGHT = 2.0
    torch.manual_seed(0)
    model = build_model(referformer_cfg).train()
    assert not hasattr(
        model.query_decoder, "reference_points"
    )  # no unused learned reference points
    losses = model([make_clip(3, 64, 64, absent=(2,)), make_clip(3, 48, 80)])
    assert "loss_search" in losses and torch.isfinite(losses["loss_search"])
    assert losses["loss_search"] > 0
    sum(losses.values()).backward()
    for p in model.query_decoder.reference_search.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    model.eval()
    out = model([make_clip(4, 64, 64)])[0]
    assert out["pred_masks"].shape == (4, 64, 64)


def test_referformer_without_reference_search_has_no_search_loss(referformer_cfg):
    referformer_cfg.MODEL.QUERY_DECODER.REFERENCE_SEARCH = False
    torch.manual_seed(0)
    model = build_model(referformer_cfg).train()
    assert model.query_decoder.reference_search is None
    assert "loss_search" not in model([make_clip(3, 64, 64)])

"""SOC's own parts: multi-modal fusion, video-level object cluster, contrastive loss, FPN."""

import pytest
import torch
import torch.nn.functional as F

from rvos_d2.modeling.soc import (
    MultiModalFusion,
    SpatialDecoder,
    VideoObjectCluster,
    contrastive_loss,
    guidance_embedding,
    query_text_similarity,
)

C, HEADS = 32, 4


def _text(b=2, length=5):
    words = torch.randn(b, length, C)
    mask = torch.zeros(b, length, dtype=torch.bool)
    mask[1, 3:] = True  # second expression has 3 tokens
    return words, mask, torch.randn(b, length, C)


def _visual(b=2, p=12):
    return torch.randn(b, p, C), torch.zeros(b, p, dtype=torch.bool), torch.randn(b, p, C)


@pytest.mark.parametrize(
    "mode, l2v, v2l",
    [("none", False, False), ("l2v", True, False), ("v2l", False, True), ("both", True, True)],
)
def test_fusion_directions_switch_off_to_identity(mode, l2v, v2l):
    torch.manual_seed(0)
    fusion = MultiModalFusion(C, HEADS, mode).eval()
    words, word_mask, word_pos = _text()
    visual, visual_mask, visual_pos = _visual()
    fused_v = fusion.fuse_vision(visual, words, word_mask, word_pos)
    fused_w = fusion.fuse_language(words, visual, visual_mask, visual_pos)
    assert (fusion.language_to_vision is not None) == l2v
    assert (fusion.vision_to_language is not None) == v2l
    assert (fused_v is visual) != l2v
    assert (fused_w is words) != v2l
    n_params = sum(p.numel() for p in fusion.parameters())
    assert n_params == (l2v + v2l) * (4 * C * C + 4 * C)


def test_fusion_is_a_gate_on_the_cross_attention():
    torch.manual_seed(0)
    fusion = MultiModalFusion(C, HEADS, "both").eval()
    words, word_mask, word_pos = _text()
    visual, _, _ = _visual()
    attn = fusion.language_to_vision.attn
    read = attn(visual, words + word_pos, words, key_padding_mask=word_mask)[0]
    torch.testing.assert_close(
        fusion.fuse_vision(visual, words, word_mask, word_pos), visual * read
    )
    # padded words are never read: changing them changes nothing
    changed = words.clone()
    changed[1, 3:] = 100.0
    torch.testing.assert_close(
        fusion.fuse_vision(visual, changed, word_mask, word_pos)[1],
        fusion.fuse_vision(visual, words, word_mask, word_pos)[1],
    )


def _cluster(**kw):
    args = dict(
        dim=C,
        num_heads=HEADS,
        ffn_dim=64,
        enc_layers=2,
        dec_layers=2,
        num_frame_queries=3,
        num_queries=3,
        dropout=0.0,
    )
    args.update(kw)
    return VideoObjectCluster(**args).eval()


def test_video_queries_start_from_the_sentence_feature():
    """Recording the decoder's input shows each video query starts as the sentence feature."""
    torch.manual_seed(0)
    voc = _cluster()
    seen = {}
    voc.decoder[0].cross_attn.register_forward_pre_hook(
        lambda m, args: seen.setdefault("x", args[0])
    )
    frames, sentence = torch.randn(2, 4, 3, C), torch.randn(2, C)
    out = voc(frames, sentence)
    assert out.shape == (2, 3, C)
    torch.testing.assert_close(seen["x"], sentence[:, None].expand(-1, 3, -1))


def test_object_cluster_mixes_frames_and_follows_the_sentence():
    torch.manual_seed(0)
    voc = _cluster()
    frames, sentence = torch.randn(1, 4, 3, C), torch.randn(1, C)
    base = voc(frames, sentence)
    later = frames.clone()
    later[:, 3] += 1.0  # a change in the last frame reaches the video queries
    assert not torch.allclose(voc(later, sentence), base)
    assert not torch.allclose(voc(frames, sentence + 1.0), base)
    # the batch elements are independent
    two = voc(torch.cat([frames, torch.randn(1, 4, 3, C)]), torch.cat([sentence, sentence]))
    torch.testing.assert_close(two[:1], base)


def test_object_cluster_rejects_wrong_frame_query_count():
    with pytest.raises(ValueError, match="frame queries"):
        _cluster()(torch.randn(1, 2, 5, C), torch.randn(1, C))


def test_guidance_embedding_averages_valid_tokens_only():
    words, mask, _ = _text()
    g = guidance_embedding(words, mask)
    torch.testing.assert_close(g[0], words[0].mean(0))
    torch.testing.assert_close(g[1], words[1, :3].mean(0))


def test_contrastive_target_is_the_matched_query():
    torch.manual_seed(0)
    queries, guidance = torch.randn(2, 5, C), torch.randn(2, C)
    matched = torch.tensor([3, 1])
    sim = (queries @ guidance[:, :, None])[..., 0] / C
    torch.testing.assert_close(query_text_similarity(queries, guidance), sim)
    expected = -(F.log_softmax(sim, -1)[0, 3] + F.log_softmax(sim, -1)[1, 1]) / 2
    torch.testing.assert_close(contrastive_loss(queries, guidance, matched), expected)
    # gradient descent raises the matched query's share of the softmax
    queries.requires_grad_(True)
    contrastive_loss(queries, guidance, matched).backward()
    stepped = queries - 10.0 * queries.grad
    before = sim.softmax(-1)[[0, 1], matched]
    after = query_text_similarity(stepped, guidance).softmax(-1)[[0, 1], matched]
    assert (after > before).all()


def test_cluster_and_loss_give_finite_gradients_everywhere():
    torch.manual_seed(0)
    voc = _cluster(dropout=0.1).train()
    fusion = MultiModalFusion(C, HEADS, "both")
    words, word_mask, word_pos = _text()
    visual, visual_mask, visual_pos = _visual()
    frames = torch.randn(2, 4, 3, C, requires_grad=True)
    fused_words = fusion.fuse_language(words, visual, visual_mask, visual_pos)
    fused_visual = fusion.fuse_vision(visual, words, word_mask, word_pos)
    video = voc(frames + fused_visual.mean(1)[:, None, None], words[:, 0])
    loss = contrastive_loss(video, guidance_embedding(fused_words, word_mask), torch.tensor([0, 2]))
    loss.backward()
    for name, p in [*voc.named_parameters(), *fusion.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert torch.isfinite(frames.grad).all()


def test_spatial_decoder_halves_width_and_reaches_the_finest_skip():
    torch.manual_seed(0)
    dec = SpatialDecoder(64, [64, 64, 16], 8)
    x = torch.randn(2, 64, 3, 4)
    skips = [torch.randn(2, 64, 6, 8), torch.randn(2, 64, 12, 16), torch.randn(2, 16, 24, 32)]
    assert dec(x, skips).shape == (2, 8, 24, 32)
    assert [b.weight.shape[0] for b in dec.blocks] == [16, 8, 4]
    with pytest.raises(ValueError, match="skips"):
        dec(x, skips[:2])


def test_frame_mask_losses_average_per_frame_dice():
    from rvos_d2.modeling.losses import dice_loss, mask_focal_loss
    from rvos_d2.modeling.soc import loss_frame_masks

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, 6)  # B x T x N x h x w
    masks = (torch.rand(2, 1, 3, 5, 6) > 0.5).float()  # B x M x T x h x w
    annotated = [torch.tensor([True, False, True]), torch.tensor([True, True, True])]
    targets = [
        {"valid": torch.ones(1, 3, dtype=torch.bool), "masks": m, "annotated": a}
        for m, a in zip(masks, annotated)
    ]
    indices = [(torch.tensor([2]), torch.tensor([0])), (torch.tensor([1]), torch.tensor([0]))]
    out = loss_frame_masks({"pred_masks": logits}, targets, indices, None)
    frames = [(0, 0, 2), (0, 2, 2), (1, 0, 1), (1, 1, 1), (1, 2, 1)]  # (clip, frame, query)
    pred = torch.stack([logits[b, t, q].flatten() for b, t, q in frames])
    tgt = torch.stack([masks[b, 0, t].flatten() for b, t, _ in frames])
    torch.testing.assert_close(out["loss_dice"], dice_loss(pred, tgt).mean())
    torch.testing.assert_close(out["loss_mask"], mask_focal_loss(pred, tgt).mean())

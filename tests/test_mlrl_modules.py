"""MLRL's parts: embeddings (shapes, masking, chunking), semantic alignment, decoders, boundary
targets and the losses."""

import pytest
import torch

from rvos_d2.modeling.heads.vision_language_fpn import sine_text_position
from rvos_d2.modeling.mlrl.alignment import LanguageTransformer, SemanticAlignment, SentenceFusion
from rvos_d2.modeling.mlrl.criterion import (
    MLRLCriterion,
    balanced_bce,
    boundary_targets,
    mask_iou,
)
from rvos_d2.modeling.mlrl.embedding import ObjectEncoder, PixelEmbedding, PixelSelfAttention
from rvos_d2.modeling.mlrl.segmentation import (
    BoundaryAwareSegmentation,
    ConfidenceHead,
    PyramidHead,
)

D = 16


def _maps(clips=2, frames=3, h=4, w=5):
    """(clips*frames) x D x h x w features and a padding mask with the last column of the
    second clip's frames padded."""
    torch.manual_seed(0)
    x = torch.randn(clips * frames, D, h, w)
    padding = torch.zeros(clips * frames, h, w, dtype=torch.bool)
    padding[frames:, :, -1] = True
    return x, padding


def test_video_attention_chunked_equals_unchunked():
    torch.manual_seed(0)
    whole = PixelSelfAttention(D, chunk=0)
    chunked = PixelSelfAttention(D, chunk=7)
    chunked.load_state_dict(whole.state_dict())
    x = torch.randn(2, 60, D)
    padding = torch.zeros(2, 60, dtype=torch.bool)
    padding[1, 45:] = True
    torch.testing.assert_close(chunked(x, padding), whole(x, padding))
    with pytest.raises(ValueError, match="ATTENTION_CHUNK"):
        PixelSelfAttention(D, chunk=-1)


def test_attention_is_the_papers_formula():
    torch.manual_seed(0)
    attention = PixelSelfAttention(D)
    x = torch.randn(1, 9, D)
    q, k, v = attention.query(x), attention.key(x), attention.value(x)
    expected = (q @ k.transpose(1, 2) / D**0.5).softmax(-1) @ v + x
    torch.testing.assert_close(attention(x), expected)


@pytest.mark.parametrize("per_frame", [False, True])
def test_pixel_embedding_shapes_and_masking(per_frame):
    x, padding = _maps()
    embedding = PixelEmbedding(D, per_frame=per_frame, chunk=5).eval()
    out = embedding(x, padding, num_frames=3)
    assert out.shape == x.shape

    # padded pixels are no keys: changing them changes no valid output
    changed = x.clone()
    changed[padding.unsqueeze(1).expand_as(x)] = 100.0
    valid = ~padding.unsqueeze(1).expand_as(x)
    torch.testing.assert_close(embedding(changed, padding, 3)[valid], out[valid])

    # another frame of the clip changes frame 0 at video level only; another clip never does
    other_frame, other_clip = x.clone(), x.clone()
    other_frame[1] += 1.0
    other_clip[3] += 1.0
    torch.testing.assert_close(embedding(other_clip, padding, 3)[:3], out[:3])
    moved = (embedding(other_frame, padding, 3)[0] - out[0]).abs().max()
    assert (moved < 1e-6) == per_frame


@pytest.mark.parametrize("kind", ["video", "frame", "fcn"])
def test_object_encoder_variants(kind):
    x, padding = _maps()
    encoder = ObjectEncoder(D, kind, chunk=0)
    assert encoder(x, padding, num_frames=3).shape == x.shape
    assert (encoder.embedding is None) == (kind == "fcn")
    if kind != "fcn":
        assert encoder.embedding.per_frame == (kind == "frame")


def test_object_encoder_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="MODEL.MLRL.OBJECT_ENCODER='detector'"):
        ObjectEncoder(D, "detector")


def _words(clips=2, length=5):
    torch.manual_seed(1)
    words = torch.randn(clips, length, D)
    word_mask = torch.zeros(clips, length, dtype=torch.bool)
    word_mask[-1, 3:] = True  # the last expression has 3 words
    return words, word_mask


@pytest.mark.parametrize("temporal", [False, True])
def test_alignment_shapes_and_word_masking(temporal):
    x, padding = _maps()
    words, word_mask = _words()
    align = SemanticAlignment(D, temporal=temporal)
    out = align(x, padding, 3, words, word_mask)
    assert out.shape == x.shape
    changed = words.clone()
    changed[word_mask] = 50.0
    torch.testing.assert_close(align(x, padding, 3, changed, word_mask), out)


def test_alignment_is_eq_9_to_11():
    x, padding = _maps(clips=1, frames=1)
    words, word_mask = _words(clips=1)
    align = SemanticAlignment(D, temporal=False)
    pos = align.position(x, padding).flatten(2).transpose(1, 2)
    pixels = x.flatten(2).transpose(1, 2)
    valid_words = words[:, :3]  # the padding words take no part
    p = align.visual_proj(pixels + pos)
    s = align.text_proj(valid_words + sine_text_position(word_mask[:, :3], D))
    attention = (p @ s.transpose(1, 2) / D**0.5).softmax(-1)
    expected = align.out_proj(attention @ valid_words + pixels)
    out = align(x, padding, 1, words, word_mask).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out, expected)


def test_video_alignment_positions_span_time_frame_alignment_positions_do_not():
    x, padding = _maps(clips=1, frames=3)
    video = SemanticAlignment(D, temporal=True).visual_position(x, padding, 3)
    frame = SemanticAlignment(D, temporal=False).visual_position(x, padding, 3)
    torch.testing.assert_close(frame[0], frame[1])
    assert (video[0] - video[1]).abs().max() > 1e-3


def test_sentence_fusion_adds_the_mean_valid_word():
    x, padding = _maps()
    words, word_mask = _words()
    fusion = SentenceFusion(D)
    out = fusion(x, padding, 3, words, word_mask)
    mean = words[1, :3].mean(0)  # the valid words of the second clip's expression
    expected = fusion.out_proj((x[3] + mean[:, None, None]).permute(1, 2, 0)).permute(2, 0, 1)
    torch.testing.assert_close(out[3], expected)


def test_language_transformer_ignores_padding_words():
    words, word_mask = _words()
    language = LanguageTransformer(D, num_layers=2, num_heads=4, dim_feedforward=32).eval()
    out = language(words, word_mask)
    changed = words.clone()
    changed[word_mask] = 9.0
    valid = ~word_mask
    torch.testing.assert_close(language(changed, word_mask)[valid], out[valid])
    with pytest.raises(ValueError, match="LANGUAGE_LAYERS"):
        LanguageTransformer(D, 0, 4, 32)


def _pyramid(n=2):
    """res5 .. res2 maps of a 64x64 input (strides 32 .. 4)."""
    return [torch.randn(n, c, 64 // s, 64 // s) for c, s in ((32, 32), (24, 16), (16, 8), (8, 4))]


def test_decoders_predict_one_channel_at_the_finest_level():
    levels = _pyramid()
    x = torch.randn(2, 3 * D, 2, 2)
    objects = PyramidHead(3 * D, [32, 24, 16, 8], dim=16)(x, levels)
    mask, boundary = BoundaryAwareSegmentation(3 * D, [32, 24, 16, 8], dim=16)(x, levels)
    assert objects.shape == mask.shape == boundary.shape == (2, 16, 16)
    with pytest.raises(ValueError, match="DECODER_DIM"):
        PyramidHead(D, [32], dim=12)


def test_mask_is_fused_from_the_boundary_map():
    levels = _pyramid()
    x = torch.randn(2, D, 2, 2)
    bas = BoundaryAwareSegmentation(D, [32, 24, 16, 8], dim=16)
    mask, _ = bas(x, levels)
    with torch.no_grad():
        bas.boundary_head.predictor.bias += 1.0  # shifts B by 1 everywhere
    shifted, _ = bas(x, levels)
    weight = bas.fuse.weight[0, 0]  # the 3x3 kernel reading B
    interior = (shifted - mask)[:, 1:-1, 1:-1]
    torch.testing.assert_close(interior, torch.full_like(interior, float(weight.sum().detach())))


def test_confidence_head_pools_the_unpadded_pixels():
    head = ConfidenceHead(D, dim=8)
    x, padding = _maps()
    out = head(x, padding)
    assert out.shape == (6,)
    changed = x.clone()
    changed[padding.unsqueeze(1).expand_as(x)] = 7.0
    torch.testing.assert_close(head(changed, padding), out)


def test_boundary_targets_of_a_square_are_its_outline():
    mask = torch.zeros(12, 12)
    mask[3:9, 2:8] = 1
    outline = torch.zeros(12, 12)
    outline[3:9, 2:8] = 1
    outline[4:8, 3:7] = 0
    torch.testing.assert_close(boundary_targets(mask), outline)
    # soft targets are binarised; the frame border is no boundary
    torch.testing.assert_close(boundary_targets(mask * 0.6)[None], outline[None])
    torch.testing.assert_close(boundary_targets(torch.ones(2, 5, 5)), torch.zeros(2, 5, 5))


def test_mask_iou_and_balanced_bce():
    logits = torch.full((3, 4, 4), -5.0)
    logits[0, :2] = 5.0  # 8 pixels predicted
    logits[1, 0, 0] = 5.0
    targets = torch.zeros(3, 4, 4)
    targets[0, :1] = 1.0  # 4 pixels, all inside the prediction
    torch.testing.assert_close(mask_iou(logits, targets), torch.tensor([0.5, 0.0, 0.0]))

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(logits[0, :1], targets[0, :1]) + bce(logits[0, 1:], targets[0, 1:])) / 2
    torch.testing.assert_close(balanced_bce(logits[0], targets[0]), expected)
    torch.testing.assert_close(balanced_bce(logits[2], targets[2]), bce(logits[2], targets[2]))


def test_confidence_target_is_the_iou_and_losses_are_weighted():
    torch.manual_seed(0)
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, :, 2:6, 2:6] = 1
    pred = torch.randn(1, 2, 1, 8, 8)
    conf = torch.randn(1, 2, 1)
    outputs = {
        "pred_masks": pred,
        "pred_boundaries": torch.randn(1, 2, 8, 8),
        "pred_logits": conf,
        "pred_objects": torch.randn(1, 2, 8, 8),
    }
    targets = [{"masks": masks, "annotated": torch.tensor([True, False])}]
    losses = MLRLCriterion(boundary_weight=0.2, confidence_weight=0.1)(outputs, targets)
    assert set(losses) == {
        "loss_mask_dice",
        "loss_mask_focal",
        "loss_boundary",
        "loss_confidence",
        "loss_object_dice",
        "loss_object_focal",
    }
    iou = mask_iou(pred[0, :1, 0], masks[0, :1])  # the annotated frame only
    expected = 0.1 * (conf[0, 0, 0].sigmoid() - iou[0]) ** 2
    torch.testing.assert_close(losses["loss_confidence"], expected)
    boundary = balanced_bce(outputs["pred_boundaries"][0, :1], boundary_targets(masks[0, :1]))
    torch.testing.assert_close(losses["loss_boundary"], 0.2 * boundary)
    del outputs["pred_objects"]
    assert "loss_object_dice" not in MLRLCriterion(0.2, 0.1)(outputs, targets)

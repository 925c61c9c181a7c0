"""Deformable encoder / decoder, sine position encoding and helpers."""

import pytest
import torch
from torch import nn

from rvos_d2.layers import MSDeformAttn
from rvos_d2.modeling.transformer import (
    DeformableTransformerDecoder,
    DeformableTransformerEncoder,
    PositionEmbeddingSine,
    inverse_sigmoid,
    refine_boxes,
    valid_ratios,
)

C, HEADS, LEVELS, POINTS = 16, 2, 3, 2
SHAPES = [(6, 8), (3, 4), (2, 2)]


def make_srcs(n=2, seed=0, pad_right=2):
    """Per-level features, masks (sample 1 padded on the right of level 0) and encodings."""
    gen = torch.Generator().manual_seed(seed)
    srcs = [torch.randn(n, C, h, w, generator=gen) for h, w in SHAPES]
    masks = [torch.zeros(n, h, w, dtype=torch.bool) for h, w in SHAPES]
    if pad_right:
        masks[0][1, :, -pad_right:] = True
    pe = PositionEmbeddingSine(C // 2)
    return srcs, masks, [pe(s, m) for s, m in zip(srcs, masks)]


def make_encoder(num_layers=2):
    return DeformableTransformerEncoder(C, HEADS, num_layers, 32, 0.0, LEVELS, POINTS)


def make_decoder(num_layers=2):
    return DeformableTransformerDecoder(C, HEADS, num_layers, 32, 0.0, LEVELS, POINTS)


def decode(decoder, enc, reference):
    """Runs `decoder` on random queries and query positions around `reference` (N x Q x 2|4),
    into the memory of the encoder output `enc`, padding mask included."""
    n, q = reference.shape[:2]
    tgt = torch.randn(n, q, C)
    query_pos = torch.randn(n, q, C)
    return decoder(
        tgt,
        reference,
        enc["memory"],
        enc["spatial_shapes"],
        enc["level_start_index"],
        enc["valid_ratios"],
        query_pos,
        enc["mask_flatten"],
    )


def test_position_embedding_shape_and_padding_invariance():
    pe = PositionEmbeddingSine(num_pos_feats=8)
    x = torch.zeros(2, 3, 5, 7)
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 4:] = True
    pos = pe(x, mask)
    assert pos.shape == (2, 16, 5, 7)
    # The valid 3 x 4 corner of the padded image is encoded like an unpadded 3 x 4 image.
    alone = pe(torch.zeros(1, 3, 3, 4), None)
    torch.testing.assert_close(pos[1:, :, :3, :4], alone)
    assert torch.equal(pe(x, None)[0], pos[0])


def test_helpers():
    x = torch.tensor([-3.0, 0.0, 2.5])
    torch.testing.assert_close(inverse_sigmoid(x.sigmoid()), x, atol=1e-4, rtol=1e-4)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0]))).all()
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:] = True
    mask[1, :, 4:] = True
    torch.testing.assert_close(valid_ratios(mask), torch.tensor([[1.0, 1.0], [0.8, 0.75]]))
    with pytest.raises(ValueError, match="bool N x H x W"):
        valid_ratios(mask.float())


def test_refine_boxes_moves_points_and_boxes_in_logit_space():
    delta = torch.tensor([[0.0, 1.0, -2.0, 0.5]])
    point = torch.tensor([[0.5, 0.25]])
    box = torch.tensor([[0.5, 0.25, 0.2, 0.4]])
    expected_point = torch.tensor([[0.5, (1.0 + inverse_sigmoid(torch.tensor(0.25))).sigmoid()]])
    moved = refine_boxes(delta, point)  # a point gets its width and height from the delta
    torch.testing.assert_close(moved[:, :2], expected_point)
    torch.testing.assert_close(moved[:, 2:], delta[:, 2:].sigmoid())
    torch.testing.assert_close(refine_boxes(torch.zeros(1, 4), box), box)
    torch.testing.assert_close(refine_boxes(delta, box), (inverse_sigmoid(box) + delta).sigmoid())
    with pytest.raises(ValueError, match="4 values"):
        refine_boxes(torch.zeros(1, 2), point)


def test_encoder_outputs():
    srcs, masks, pos = make_srcs()
    out = make_encoder()(srcs, masks, pos)
    s = sum(h * w for h, w in SHAPES)
    assert out["memory"].shape == (2, s, C)
    assert torch.isfinite(out["memory"]).all()
    assert out["spatial_shapes"].tolist() == [list(hw) for hw in SHAPES]
    assert out["level_start_index"].tolist() == [0, 48, 60]
    assert out["valid_ratios"].shape == (2, LEVELS, 2)
    assert out["valid_ratios"][1, 0].tolist() == [0.75, 1.0]
    assert out["mask_flatten"].shape == (2, s)
    assert int(out["mask_flatten"].sum()) == 12
    no_masks = make_encoder()(srcs, None, pos)
    assert not no_masks["mask_flatten"].any()
    assert torch.equal(no_masks["valid_ratios"], torch.ones(2, LEVELS, 2))


def test_encoder_rejects_wrong_levels():
    srcs, masks, pos = make_srcs()
    with pytest.raises(ValueError, match="expected 3 levels"):
        make_encoder()(srcs[:2], masks[:2], pos[:2])
    with pytest.raises(ValueError, match="level 1 mask"):
        make_encoder()(srcs, [masks[0], masks[0], masks[2]], pos)


@pytest.mark.parametrize("ref_dims", [2, 4])
@pytest.mark.parametrize("refine", [False, True])
def test_decoder_shapes_and_references(ref_dims, refine):
    srcs, masks, pos = make_srcs()
    enc = make_encoder(1)(srcs, masks, pos)
    decoder = make_decoder(3)
    if refine:
        decoder.bbox_embed = nn.ModuleList(nn.Linear(C, 4) for _ in range(3))
        for layer in decoder.bbox_embed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
    reference = torch.rand(2, 5, ref_dims) * 0.8 + 0.1
    hs, refs = decode(decoder, enc, reference)
    assert hs.shape == (3, 2, 5, C)
    if not refine:
        assert torch.equal(refs, reference.expand(3, -1, -1, -1))
        return
    # A zero delta keeps the centre; a 2-d point gains a box of size sigmoid(0) = 0.5.
    assert refs.shape == (3, 2, 5, 4)
    assert not refs.requires_grad
    expected = (
        reference if ref_dims == 4 else torch.cat([reference, torch.full_like(reference, 0.5)], -1)
    )
    torch.testing.assert_close(refs, expected.expand(3, -1, -1, -1), atol=1e-5, rtol=1e-5)


def test_decoder_without_intermediate_returns_last_layer():
    srcs, masks, pos = make_srcs()
    enc = make_encoder(1)(srcs, masks, pos)
    decoder = DeformableTransformerDecoder(C, HEADS, 2, 32, 0.0, LEVELS, POINTS, False)
    hs, refs = decoder(
        torch.randn(2, 4, C),
        torch.rand(2, 4, 2),
        enc["memory"],
        enc["spatial_shapes"],
        enc["level_start_index"],
        enc["valid_ratios"],
    )
    assert hs.shape == (1, 2, 4, C) and refs.shape == (1, 2, 4, 2)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    srcs, masks, pos = make_srcs()
    encoder, decoder = make_encoder(2), make_decoder(2)
    bbox_embed = nn.ModuleList(nn.Linear(C, 4) for _ in range(2))
    decoder.bbox_embed = bbox_embed
    # The paper zero-initialises the offset and weight projections, which cuts the gradient to
    # everything upstream of the query (e.g. the level embedding) at step 0: perturb them.
    for module in list(encoder.modules()) + list(decoder.modules()):
        if isinstance(module, MSDeformAttn):
            nn.init.normal_(module.sampling_offsets.weight, std=0.1)
            nn.init.normal_(module.attention_weights.weight, std=0.1)
    srcs = [s.requires_grad_() for s in srcs]
    enc = encoder(srcs, masks, pos)
    reference = torch.rand(2, 5, 2)
    hs, refs = decode(decoder, enc, reference)
    # Boxes as a meta-architecture predicts them: from each layer's output and input reference.
    inputs = [reference, refs[0]]
    boxes = [refine_boxes(bbox_embed[i](hs[i]), inputs[i]) for i in range(2)]
    loss = (hs * torch.randn_like(hs)).sum() + sum(b.square().sum() for b in boxes)
    loss.backward()
    for module_name, module in (("encoder", encoder), ("decoder", decoder)):
        for name, param in module.named_parameters():
            assert param.grad is not None, f"{module_name}.{name} has no gradient"
            assert torch.isfinite(param.grad).all(), f"{module_name}.{name}"
            assert param.grad.abs().sum() > 0, f"{module_name}.{name} has an all-zero gradient"
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in srcs)


def test_encoder_reads_the_sampled_locations_only():
    """One layer, one head, one point, all attention on level 1 at each token's own position.

    Token (row 1, col 2) of level 0 (6 x 8) falls on level 1 (3 x 4) at pixel coordinates
    (x, y) = (2.5 / 8 * 4 - 0.5, 1.5 / 6 * 3 - 0.5) = (0.75, 0.25): it reads the level-1 pixels
    in rows 0..1, columns 0..1, and nothing else.
    """
    encoder = DeformableTransformerEncoder(C, 1, 1, 32, 0.0, LEVELS, 1)
    attn = encoder.layers[0].self_attn
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()  # sample exactly at the reference point
        attn.attention_weights.bias.copy_(torch.tensor([-1e4, 0.0, -1e4]))  # level 1 only
    srcs, _, pos = make_srcs(n=1, pad_right=0)
    token = 1 * 8 + 2

    def output_at_token(level, row, col, delta=5.0):
        changed = [s.clone() for s in srcs]
        if level is not None:
            changed[level][0, :, row, col] += delta
        return encoder(changed, None, pos)["memory"][0, token]

    base = output_at_token(None, 0, 0)
    for row, col in [(0, 0), (0, 1), (1, 0), (1, 1)]:  # the four bilinear neighbours on level 1
        assert not torch.allclose(output_at_token(1, row, col), base), (row, col)
    for level, row, col in [(1, 2, 3), (1, 0, 2), (0, 1, 3), (0, 5, 7), (2, 1, 1)]:
        torch.testing.assert_close(output_at_token(level, row, col), base)


def test_from_config(rvos_cfg):
    rvos_cfg.MODEL.DEFORMABLE_TRANSFORMER.ENC_LAYERS = 2
    rvos_cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS = 3
    encoder = DeformableTransformerEncoder(rvos_cfg)
    decoder = DeformableTransformerDecoder(rvos_cfg)
    assert len(encoder.layers) == 2 and len(decoder.layers) == 3
    assert encoder.level_embed.shape == (4, 256)
    assert (
        decoder.layers[0].cross_attn.n_points == rvos_cfg.MODEL.DEFORMABLE_TRANSFORMER.DEC_N_POINTS
    )

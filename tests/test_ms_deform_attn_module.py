"""The MSDeformAttn layer: initialisation, shapes, reference boxes and padding."""

import math

import pytest
import torch

from rvos_d2.layers import MSDeformAttn


def level_layout(shapes):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    return spatial_shapes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def test_initialisation_follows_the_paper():
    heads, levels, points = 8, 3, 4
    layer = MSDeformAttn(d_model=64, n_levels=levels, n_heads=heads, n_points=points)
    assert torch.count_nonzero(layer.sampling_offsets.weight) == 0
    assert torch.count_nonzero(layer.attention_weights.weight) == 0
    assert torch.count_nonzero(layer.attention_weights.bias) == 0
    offsets = layer.sampling_offsets.bias.detach().view(heads, levels, points, 2)
    # Same pattern on every level.
    assert torch.equal(offsets, offsets[:, :1].expand_as(offsets))
    for head in range(heads):
        angle = 2 * math.pi * head / heads
        for point in range(points):
            x, y = offsets[head, 0, point].tolist()
            # Point k lies k+1 pixels out (max-norm), in the head's direction.
            assert max(abs(x), abs(y)) == pytest.approx(point + 1)
            assert math.atan2(y, x) % (2 * math.pi) == pytest.approx(angle, abs=1e-6)
    for proj in (layer.value_proj, layer.output_proj):
        bound = math.sqrt(6 / (64 + 64))
        assert proj.weight.abs().max() <= bound and proj.weight.std() > bound / 4
        assert torch.count_nonzero(proj.bias) == 0


@pytest.mark.parametrize("ref_dims", [2, 4])
def test_output_shape(ref_dims):
    shapes = [(6, 8), (3, 4)]
    spatial_shapes, starts = level_layout(shapes)
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    query = torch.randn(3, 5, 16)
    reference = torch.rand(3, 5, 2, ref_dims)
    memory = torch.randn(3, 60, 16)
    out = layer(query, reference, memory, spatial_shapes, starts)
    assert out.shape == (3, 5, 16)
    assert torch.isfinite(out).all()


def test_zero_size_box_reads_its_centre_pixel():
    """A zero-size box collapses every point on its centre: the output is that pixel's value."""
    spatial_shapes, starts = level_layout([(4, 4)])
    layer = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=3)
    with torch.no_grad():
        layer.attention_weights.bias.normal_()  # any weights: they are normalised per head
    memory = torch.randn(1, 16, 8)
    row, col = 1, 2
    box = torch.tensor([(col + 0.5) / 4, (row + 0.5) / 4, 0.0, 0.0]).view(1, 1, 1, 4)
    out = layer(torch.randn(1, 1, 8), box, memory, spatial_shapes, starts)
    expected = layer.output_proj(layer.value_proj(memory[:, row * 4 + col]))
    torch.testing.assert_close(out[:, 0], expected)


def test_padded_positions_are_ignored():
    spatial_shapes, starts = level_layout([(5, 5)])
    layer = MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=4)
    memory = torch.randn(2, 25, 8)
    padding = torch.zeros(2, 25, dtype=torch.bool)
    padding[:, 20:] = True  # the bottom row
    query = torch.randn(2, 6, 8)
    reference = torch.rand(2, 6, 1, 2)
    out = layer(query, reference, memory, spatial_shapes, starts, padding)
    changed = memory.clone()
    changed[:, 20:] += 100.0
    out_changed = layer(query, reference, changed, spatial_shapes, starts, padding)
    torch.testing.assert_close(out, out_changed)
    unmasked = layer(query, reference, changed, spatial_shapes, starts)
    assert not torch.allclose(out, unmasked)


def test_bad_construction_and_inputs_raise():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MSDeformAttn(d_model=10, n_heads=4)
    spatial_shapes, starts = level_layout([(2, 2), (1, 1)])
    layer = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=1)
    memory = torch.randn(1, 5, 8)
    with pytest.raises(ValueError, match="reference_points"):
        layer(torch.randn(1, 3, 8), torch.rand(1, 3, 2, 3), memory, spatial_shapes, starts)
    with pytest.raises(ValueError, match="input_spatial_shapes"):
        layer(torch.randn(1, 3, 8), torch.rand(1, 3, 2, 2), memory, spatial_shapes[:1], starts)
    with pytest.raises(ValueError, match="input_padding_mask"):
        layer(
            torch.randn(1, 3, 8),
            torch.rand(1, 3, 2, 2),
            memory,
            spatial_shapes,
            starts,
            torch.zeros(1, 4, dtype=torch.bool),
        )

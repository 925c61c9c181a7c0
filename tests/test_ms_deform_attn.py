"""The multi-scale deformable attention op: compiled kernels against the grid_sample reference."""

import pytest
import torch

from rvos_d2.layers import ms_deform_attn_func
from rvos_d2.layers.ms_deform_attn_func import (
    compiled_op_available,
    ms_deform_attn,
    ms_deform_attn_reference,
)

needs_compiled = pytest.mark.skipif(not compiled_op_available(), reason="rvos_d2._C not built")

# (N, M, D, level shapes, Lq, P)
CASES = {
    "one_level": (2, 2, 4, [(5, 7)], 6, 3),
    "many_levels": (2, 3, 5, [(9, 11), (5, 6), (3, 3), (1, 2)], 7, 2),
    "single_query": (1, 2, 8, [(4, 4), (2, 2)], 1, 4),
    "wide_heads": (1, 1, 40, [(3, 5), (2, 3)], 4, 2),
}


def make_inputs(n, m, d, shapes, lq, p, dtype=torch.float64, device="cpu", seed=0):
    """Random op inputs; a fifth of the coordinates fall outside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    level_start_index = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s, levels = int(sizes.sum()), len(shapes)
    value = torch.randn(n, s, m, d, generator=gen, dtype=dtype)
    locations = torch.rand(n, lq, m, levels, p, 2, generator=gen, dtype=dtype) * 1.5 - 0.25
    weights = torch.rand(n, lq, m, levels, p, generator=gen, dtype=dtype)
    tensors = [value, spatial_shapes, level_start_index, locations, weights]
    return [t.to(device) for t in tensors]


def run_with_grads(fn, inputs, grad_output=None):
    """Output and gradients of value, sampling_locations and attention_weights."""
    value, shapes, starts, locations, weights = (
        t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs
    )
    output = fn(value, shapes, starts, locations, weights)
    if grad_output is None:
        grad_output = torch.randn_like(output)
    output.backward(grad_output)
    return output.detach(), [value.grad, locations.grad, weights.grad], grad_output


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@needs_compiled
def test_compiled_cpu_matches_reference(case, dtype):
    inputs = make_inputs(*CASES[case], dtype=dtype)
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 1e-5, "rtol": 1e-4}
    out, grads, grad_output = run_with_grads(ms_deform_attn, inputs)
    ref_out, ref_grads, _ = run_with_grads(ms_deform_attn_reference, inputs, grad_output)
    n, lq, m, d = inputs[0].shape[0], inputs[3].shape[1], inputs[0].shape[2], inputs[0].shape[3]
    assert out.shape == (n, lq, m * d)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref_out, **tol)
    for name, grad, ref in zip(("value", "locations", "weights"), grads, ref_grads):
        assert grad.dtype == dtype, name
        torch.testing.assert_close(grad, ref, **tol, msg=lambda msg, n=name: f"grad {n}: {msg}")


@needs_compiled
def test_compiled_gradcheck_float64():
    value, shapes, starts, locations, weights = make_inputs(1, 2, 3, [(4, 5), (2, 3)], 3, 2)
    value.requires_grad_()
    locations.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w),
        (value, locations, weights),
    )


@needs_compiled
def test_non_contiguous_inputs():
    value, shapes, starts, locations, weights = make_inputs(2, 2, 4, [(6, 5), (3, 2)], 5, 2)
    # Same values, strided memory: a transposed copy viewed back, and every other query.
    value_t = value.transpose(1, 2).contiguous().transpose(1, 2)
    locations_wide = torch.stack([locations, locations], dim=2).flatten(1, 2)[:, ::2]
    weights_t = weights.transpose(0, 1).contiguous().transpose(0, 1)
    assert not value_t.is_contiguous() and not locations_wide.is_contiguous()
    assert not weights_t.is_contiguous()
    inputs = [value_t, shapes, starts, locations_wide, weights_t]
    out, grads, grad_output = run_with_grads(ms_deform_attn, inputs)
    ref_out, ref_grads, _ = run_with_grads(
        ms_deform_attn_reference, [value, shapes, starts, locations, weights], grad_output
    )
    torch.testing.assert_close(out, ref_out)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("fn", [ms_deform_attn, ms_deform_attn_reference])
def test_bilinear_sampling_convention(fn):
    """align_corners=False: pixel (i, j) of an h x w map sits at ((j + .5) / w, (i + .5) / h)."""
    value = torch.arange(6, dtype=torch.float64).view(1, 6, 1, 1)  # one 2 x 3 level: 0..5
    shapes = torch.tensor([[2, 3]])
    starts = torch.tensor([0])
    points = torch.tensor(
        [
            [0.5 / 3, 0.25],  # pixel (0, 0) -> 0
            [2.5 / 3, 0.75],  # pixel (1, 2) -> 5
            [1.0 / 3, 0.5],  # between (0,0), (0,1), (1,0), (1,1) -> 2
            [0.0, 0.25],  # half a pixel left of (0, 0): half reads the zero padding -> 0
            [1.5, 0.5],  # far outside -> 0
        ],
        dtype=torch.float64,
    )
    locations = points.view(1, 5, 1, 1, 1, 2)
    weights = torch.full((1, 5, 1, 1, 1), 2.0, dtype=torch.float64)
    out = fn(value, shapes, starts, locations, weights).flatten()
    expected = 2.0 * torch.tensor([0.0, 5.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_half_precision_on_cpu_uses_float32_accumulation():
    inputs = make_inputs(1, 2, 4, [(4, 4), (2, 2)], 3, 2, dtype=torch.float32)
    value = inputs[0].to(torch.bfloat16)
    out = ms_deform_attn(value, *inputs[1:])  # bfloat16 value, float32 locations and weights
    assert out.dtype == torch.bfloat16
    expected = ms_deform_attn_reference(value.float(), *inputs[1:])
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)


def _replace(inputs, index, tensor):
    inputs = list(inputs)
    inputs[index] = tensor
    return inputs


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x: _replace(x, 0, x[0][..., 0]), "value must be N x S x M x D"),
        (lambda x: _replace(x, 0, x[0][:, :-1]), "value has S="),
        (lambda x: _replace(x, 1, x[1].int()), "spatial_shapes must be int64"),
        (lambda x: _replace(x, 2, x[2][:1]), "level_start_index must have shape"),
        (lambda x: _replace(x, 2, x[2] + 1), "level_start_index"),
        (lambda x: _replace(x, 3, x[3][:, :, :1]), "sampling_locations shape"),
        (lambda x: _replace(x, 4, x[4][..., :1]), "attention_weights must have shape"),
        (lambda x: _replace(x, 3, x[3].float()), "sampling_locations has dtype"),
        (lambda x: _replace(x, 4, x[4].to("meta")), "attention_weights is on meta"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(mutate, message):
    inputs = mutate(make_inputs(1, 2, 3, [(3, 4), (2, 2)], 2, 2))
    with pytest.raises(ValueError, match=message):
        ms_deform_attn(*inputs)


@needs_compiled
def test_compiled_op_validates_its_inputs():
    value, shapes, starts, locations, weights = make_inputs(1, 2, 3, [(3, 4), (2, 2)], 2, 2)
    forward = ms_deform_attn_func._C.ms_deform_attn_forward
    with pytest.raises(RuntimeError, match="attention_weights must be"):
        forward(value, shapes, starts, locations, weights[..., :1])
    with pytest.raises(RuntimeError, match="sampling_locations must be Double"):
        forward(value, shapes, starts, locations.float(), weights)
    with pytest.raises(RuntimeError, match="value has S="):
        forward(value[:, :-1], shapes, starts, locations, weights)
    with pytest.raises(RuntimeError, match=r"level_start_index\[0\] is 1"):
        forward(value, shapes, starts + 1, locations, weights)
    with pytest.raises(RuntimeError, match="grad_output must be"):
        ms_deform_attn_func._C.ms_deform_attn_backward(
            value, shapes, starts, locations, weights, torch.zeros(1, 2, 5, dtype=value.dtype)
        )


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    inputs = make_inputs(2, 4, 32, [(13, 17), (7, 9), (4, 5), (2, 3)], 37, 4, dtype=torch.float32)
    cpu_out, cpu_grads, grad_output = run_with_grads(ms_deform_attn_reference, inputs)
    cuda_inputs = [t.cuda() for t in inputs]
    cuda_inputs[0] = cuda_inputs[0].to(dtype)
    out, grads, _ = run_with_grads(ms_deform_attn, cuda_inputs, grad_output.cuda().to(dtype))
    tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 5e-2}
    assert out.dtype == dtype and grads[0].dtype == dtype
    torch.testing.assert_close(out.float().cpu(), cpu_out, **tol)
    for grad, ref in zip(grads, cpu_grads):
        scale = ref.abs().max().clamp(min=1)
        torch.testing.assert_close(grad.float().cpu() / scale, ref / scale, **tol)


@pytest.mark.gpu
def test_cuda_gradcheck_float64():
    value, shapes, starts, locations, weights = make_inputs(
        1, 2, 3, [(4, 5), (2, 3)], 3, 2, device="cuda"
    )
    for t in (value, locations, weights):
        t.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w),
        (value, locations, weights),
    )

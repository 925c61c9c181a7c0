"""The op never leaves a user stuck: a missing or broken rvos_d2._C falls back with one warning."""

import logging
import sys
from types import SimpleNamespace

import pytest
import torch

from rvos_d2.layers import MSDeformAttn, ms_deform_attn_func
from rvos_d2.layers.ms_deform_attn_func import (
    compiled_op_available,
    compiled_op_status,
    describe_load_error,
    ms_deform_attn,
    ms_deform_attn_reference,
)
from tests.test_ms_deform_attn import make_inputs, run_with_grads

needs_compiled = pytest.mark.skipif(not compiled_op_available(), reason="rvos_d2._C not built")
REBUILD = "pip install --no-build-isolation -e ."


@pytest.fixture
def fallback_warnings(caplog):
    """The op's fallback warnings (the handler sits on its own logger: propagation may be off)."""
    log = logging.getLogger(ms_deform_attn_func.__name__)
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=log.name):
            # A record reaching the handler both directly and through the root is one warning.
            yield lambda: [
                message
                for message in {id(r): r.getMessage() for r in caplog.records}.values()
                if "pure-PyTorch path" in message
            ]
    finally:
        log.removeHandler(caplog.handler)


def _simulate_load(monkeypatch, error: Exception | None = None) -> None:
    """Reloads the extension as the module does at import, with the import raising `error`."""

    def failing_import(name):
        assert name == "rvos_d2._C"
        raise error

    if error is not None:
        monkeypatch.setattr(ms_deform_attn_func.importlib, "import_module", failing_import)
    loaded, why = ms_deform_attn_func._load_extension()
    monkeypatch.undo()
    monkeypatch.setattr(ms_deform_attn_func, "_C", loaded)
    monkeypatch.setattr(ms_deform_attn_func, "_LOAD_ERROR", why)
    monkeypatch.setattr(ms_deform_attn_func, "_WARNED", set())
    monkeypatch.setattr(ms_deform_attn_func, "_CUDA_PROBLEMS", {})


def test_load_errors_name_their_cause():
    missing = ModuleNotFoundError("No module named 'rvos_d2._C'", name="rvos_d2._C")
    assert "is not compiled" in describe_load_error(missing)
    symbol = ImportError("/x/_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")
    text = describe_load_error(symbol)
    assert "undefined symbol: _ZN3c10" in text and "another PyTorch version" in text
    cuda = ImportError("libcudart.so.12: cannot open shared object file: No such file")
    assert "another CUDA version" in describe_load_error(cuda)
    other = OSError("bad ELF header")
    assert describe_load_error(other) == "rvos_d2._C failed to load (OSError: bad ELF header)"


def test_missing_module_is_reported_as_not_compiled(monkeypatch):
    monkeypatch.setitem(sys.modules, "rvos_d2._C", None)  # the import system then finds nothing
    loaded, why = ms_deform_attn_func._load_extension()
    assert loaded is None and "rvos_d2._C is not compiled" in why


@needs_compiled
@pytest.mark.parametrize(
    "error, cause",
    [
        (ModuleNotFoundError("No module named 'rvos_d2._C'", name="rvos_d2._C"), "not compiled"),
        (ImportError("_C.so: undefined symbol: _ZN2at4_ops5zeros4callE"), "undefined symbol"),
        (ImportError("libcudart.so.12: cannot open shared object file"), "libcudart.so.12"),
    ],
)
def test_broken_extension_falls_back_with_one_warning(monkeypatch, fallback_warnings, error, cause):
    inputs = make_inputs(2, 2, 4, [(5, 6), (3, 2)], 4, 2, dtype=torch.float32)
    expected, expected_grads, grad_output = run_with_grads(ms_deform_attn, inputs)
    layer = MSDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=2)
    query, memory = torch.randn(1, 3, 8), torch.randn(1, 36, 8)
    layer_args = (query, torch.rand(1, 3, 2, 2), memory, inputs[1], inputs[2])
    expected_layer = layer(*layer_args)

    _simulate_load(monkeypatch, error)
    assert not compiled_op_available()
    out, grads, _ = run_with_grads(ms_deform_attn, inputs, grad_output)
    ms_deform_attn(*inputs)
    layer_out = layer(*layer_args)

    messages = fallback_warnings()
    assert len(messages) == 1, messages
    assert cause in messages[0] and REBUILD in messages[0] and "make setup" in messages[0]
    torch.testing.assert_close(out, expected)
    for grad, ref in zip(grads, expected_grads):
        torch.testing.assert_close(grad, ref)
    torch.testing.assert_close(layer_out, expected_layer)
    assert compiled_op_status() == {"loaded": False, "error": ms_deform_attn_func._LOAD_ERROR}


def test_cuda_problems_name_the_build(monkeypatch):
    """Built without CUDA, or without a kernel image for the GPU: the reason says which."""
    cpu_only = SimpleNamespace(has_cuda=lambda: False)
    monkeypatch.setattr(ms_deform_attn_func, "_C", cpu_only)
    monkeypatch.setattr(ms_deform_attn_func, "_CUDA_PROBLEMS", {})
    assert "built without CUDA kernels" in ms_deform_attn_func.cuda_kernel_problem(0)

    calls = []

    def image(index):
        calls.append(index)
        return ("no kernel image is available for execution on the device", 0, 0)

    other_arch = SimpleNamespace(
        has_cuda=lambda: True, cuda_arch_list=lambda: "7.5_8.0", cuda_kernel_image=image
    )
    monkeypatch.setattr(ms_deform_attn_func, "_C", other_arch)
    monkeypatch.setattr(ms_deform_attn_func, "_CUDA_PROBLEMS", {})
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: "NVIDIA H200")
    problem = ms_deform_attn_func.cuda_kernel_problem(torch.device("cuda", 1))
    assert "NVIDIA H200 (compute capability 9.0" in problem
    assert "TORCH_CUDA_ARCH_LIST=7.5;8.0" in problem and "no kernel image" in problem
    assert ms_deform_attn_func.cuda_kernel_problem(1) == problem
    assert calls == [1]  # probed once per device

    fits = SimpleNamespace(has_cuda=lambda: True, cuda_kernel_image=lambda index: ("", 90, 90))
    monkeypatch.setattr(ms_deform_attn_func, "_C", fits)
    monkeypatch.setattr(ms_deform_attn_func, "_CUDA_PROBLEMS", {})
    assert ms_deform_attn_func.cuda_kernel_problem(0) is None


@needs_compiled
def test_status_of_the_loaded_extension():
    status = compiled_op_status()
    assert status["loaded"] and status["file"].endswith(".so")
    assert status["cuda"] == bool(ms_deform_attn_func._C.has_cuda())
    assert bool(status["cuda_arch_list"]) == status["cuda"]


class _CountingExtension:
    """Wraps the real extension and counts forward / backward calls with their value dtype."""

    def __init__(self, real):
        self.real, self.calls = real, []

    def ms_deform_attn_forward(self, value, *rest):
        self.calls.append(("forward", value.dtype))
        return self.real.ms_deform_attn_forward(value, *rest)

    def ms_deform_attn_backward(self, value, *rest):
        self.calls.append(("backward", value.dtype))
        return self.real.ms_deform_attn_backward(value, *rest)


@needs_compiled
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_cpu_values_run_the_float32_kernel_and_cast_back(monkeypatch, dtype):
    spy = _CountingExtension(ms_deform_attn_func._C)
    monkeypatch.setattr(ms_deform_attn_func, "_C", spy)
    inputs = make_inputs(1, 2, 8, [(6, 5), (3, 3)], 5, 2, dtype=torch.float32)
    inputs[0] = inputs[0].to(dtype)
    out, grads, grad_output = run_with_grads(ms_deform_attn, inputs)
    assert spy.calls == [("forward", torch.float32), ("backward", torch.float32)]
    assert out.dtype == dtype and grads[0].dtype == dtype
    assert grads[1].dtype == grads[2].dtype == torch.float32
    ref_inputs = [inputs[0].float(), *inputs[1:]]
    ref_out, ref_grads, _ = run_with_grads(
        ms_deform_attn_reference, ref_inputs, grad_output.float()
    )
    torch.testing.assert_close(out.float(), ref_out, atol=2e-2, rtol=2e-2)
    for grad, ref in zip(grads, ref_grads):
        scale = ref.abs().max().clamp(min=1)
        torch.testing.assert_close(grad.float() / scale, ref / scale, atol=2e-2, rtol=2e-2)


@needs_compiled
def test_layer_under_cpu_autocast_uses_the_compiled_kernel(monkeypatch):
    spy = _CountingExtension(ms_deform_attn_func._C)
    monkeypatch.setattr(ms_deform_attn_func, "_C", spy)
    shapes = torch.tensor([[6, 8], [3, 4]])
    starts = torch.tensor([0, 48])
    layer = MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    query, memory = torch.randn(2, 7, 16), torch.randn(2, 60, 16)
    reference = torch.rand(2, 7, 2, 2)
    expected = layer(query, reference, memory, shapes, starts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(query, reference, memory, shapes, starts)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert [kind for kind, _ in spy.calls] == ["forward", "forward", "backward"]
    torch.testing.assert_close(out.float(), expected, atol=5e-2, rtol=5e-2)
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


@needs_compiled
def test_pytorch_path_context_skips_the_kernel_without_warning(monkeypatch, fallback_warnings):
    spy = _CountingExtension(ms_deform_attn_func._C)
    monkeypatch.setattr(ms_deform_attn_func, "_C", spy)
    inputs = make_inputs(1, 2, 4, [(4, 5)], 3, 2, dtype=torch.float32)
    with ms_deform_attn_func.pytorch_path():
        inside = ms_deform_attn(*inputs)
    assert spy.calls == [] and not fallback_warnings()
    torch.testing.assert_close(inside, ms_deform_attn_reference(*inputs))
    ms_deform_attn(*inputs)
    assert spy.calls == [("forward", torch.float32)]

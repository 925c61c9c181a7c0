"""Checks the compiled deformable-attention op against the PyTorch reference and benchmarks it.

It imports only `rvos_d2.layers` (torch alone, no detectron2), so `tools/gpu_check.sh` can run it
on a bare GPU machine right after building the extension in place:

    python rvos_d2/layers/gpu_check.py --device cuda --output gpu_check/summary.json
    python rvos_d2/layers/gpu_check.py --device cpu --quick   # the same code on a CPU, small sizes

Correctness: forward and the three gradients of the compiled op against the reference evaluated
in float64 on the same (rounded) inputs, for float32 / float16 / bfloat16 values, on odd shapes, a
level no point reaches, no queries and a large batch; float64 gradcheck; MSDeformAttn under
autocast runs the kernel in the autocast dtype. Benchmarks: forward + backward of the compiled op
and of the reference per dtype at ReferFormer's R50 input (5 frames of 360 x 640), with the
achieved memory bandwidth as a fraction of the device's peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: load rvos_d2.layers without rvos_d2/__init__.py, which imports detectron2.
    _PACKAGE_DIR = Path(__file__).resolve().parents[1]
    sys.path[0] = str(_PACKAGE_DIR.parent)
    if "rvos_d2" not in sys.modules:
        _package = types.ModuleType("rvos_d2")
        _package.__path__ = [str(_PACKAGE_DIR)]
        sys.modules["rvos_d2"] = _package

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from rvos_d2.layers import ms_deform_attn_func  # noqa: E402
from rvos_d2.layers.ms_deform_attn import MSDeformAttn  # noqa: E402
from rvos_d2.layers.ms_deform_attn_func import (  # noqa: E402
    accumulation_dtype,
    compiled_op_status,
    cuda_kernel_problem,
    ms_deform_attn,
    ms_deform_attn_reference,
)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Largest error allowed, relative to max(|reference|, 1): 16-bit outputs and value gradients are
# rounded once from a float32 sum; everything else only differs in summation order.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@dataclass(frozen=True)
class Case:
    """One op input layout: N x S x M x D values, levels (h, w), Lq queries, P points."""

    name: str
    n: int
    m: int
    d: int
    shapes: tuple[tuple[int, int], ...]
    lq: int
    p: int
    unreached_level: int | None = None  # every point of this level lies outside its map


CASES = (
    Case("odd_shapes", 3, 3, 5, ((13, 17), (7, 9), (1, 1), (4, 5)), 37, 3),
    Case("channels_over_a_warp", 2, 2, 72, ((9, 11), (5, 6)), 19, 4),
    Case("unreached_level", 2, 4, 32, ((10, 12), (5, 6), (3, 3)), 23, 2, unreached_level=1),
    Case("no_queries", 2, 2, 8, ((4, 4), (2, 2)), 0, 2),
)
# ReferFormer-R50 encoder layout for 32 frames at 360 x 640: about 1.2 M (frame, query, head) rows
LARGE_BATCH = Case("large_batch", 32, 8, 32, ((45, 80), (23, 40), (12, 20), (6, 10)), 4820, 4)
LARGE_BATCH_QUICK = Case("large_batch", 12, 4, 16, ((12, 20), (6, 10)), 60, 2)

# Benchmark layout: ReferFormer with a ResNet-50, a 5-frame 360 x 640 clip, strides 8 / 16 / 32 /
# 64, 8 heads of 32 channels, 4 points; the encoder queries every token, the decoder 5 per frame.
BENCH_FRAMES, BENCH_SIZE, BENCH_STRIDES = 5, (360, 640), (8, 16, 32, 64)
BENCH_HEADS, BENCH_HEAD_DIM, BENCH_POINTS, BENCH_DECODER_QUERIES = 8, 32, 4, 5


def make_inputs(case: Case, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """Random inputs (value in `dtype`, sampling in its accumulation dtype); some points outside."""
    gen = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(case.shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    levels, s = len(case.shapes), int(sizes.sum())
    value = torch.randn(case.n, s, case.m, case.d, generator=gen)
    shape = (case.n, case.lq, case.m, levels, case.p)
    locations = torch.rand(*shape, 2, generator=gen) * 1.2 - 0.1
    if case.unreached_level is not None:
        # Far enough outside that no bilinear corner touches the map.
        far = torch.where(torch.rand(*shape, 2, generator=gen) < 0.5, -0.7, 1.7)
        locations[:, :, :, case.unreached_level] = far[:, :, :, case.unreached_level]
    weights = torch.rand(*shape, generator=gen)
    acc = accumulation_dtype(dtype)
    return [
        value.to(device, dtype),
        spatial_shapes.to(device),
        starts.to(device),
        locations.to(device, acc),
        weights.to(device, acc),
    ]


def forward_backward(fn: Callable, inputs: list[Tensor], grad_output: Tensor | None = None):
    """Output and gradients of value, sampling_locations, attention_weights (grad drawn if None)."""
    value, shapes, starts, locations, weights = (
        t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs
    )
    output = fn(value, shapes, starts, locations, weights)
    if grad_output is None:
        gen = torch.Generator().manual_seed(1)
        grad_output = torch.randn(output.shape, generator=gen).to(output.device, output.dtype)
    output.backward(grad_output)
    return [output.detach(), value.grad, locations.grad, weights.grad], grad_output


def _relative_error(result: Tensor, reference: Tensor) -> float:
    if reference.numel() == 0:
        return 0.0
    scale = reference.abs().max().clamp(min=1)
    return float(((result.double() - reference).abs().max() / scale).item())


def check_case(case: Case, dtype: torch.dtype, device: torch.device) -> dict:
    """Compiled op vs the float64 reference on the same inputs: errors of output and gradients."""
    inputs = make_inputs(case, dtype, device)
    results, grad_output = forward_backward(ms_deform_attn, inputs)
    exact = [t.double() if t.is_floating_point() else t for t in inputs]
    references, _ = forward_backward(ms_deform_attn_reference, exact, grad_output.double())
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    errors = {name: _relative_error(r, ref) for name, r, ref in zip(names, results, references)}
    expected_dtypes = (dtype, dtype, accumulation_dtype(dtype), accumulation_dtype(dtype))
    dtypes_ok = all(r.dtype == want for r, want in zip(results, expected_dtypes))
    passed = dtypes_ok and max(errors.values()) <= TOLERANCE[dtype]
    entry = {"check": case.name, "dtype": str(dtype).removeprefix("torch."), "errors": errors}
    if case.unreached_level is not None:
        # Points that touch nothing must get exactly zero gradients.
        level = case.unreached_level
        untouched = [results[2][:, :, :, level], results[3][:, :, :, level]]
        entry["unreached_gradients_zero"] = all(bool((g == 0).all()) for g in untouched)
        passed = passed and entry["unreached_gradients_zero"]
    entry.update(dtypes_ok=dtypes_ok, tolerance=TOLERANCE[dtype], passed=passed)
    return entry


def check_gradcheck(device: torch.device) -> dict:
    """torch.autograd.gradcheck of the compiled op in float64 (finite differences)."""
    case = Case("gradcheck", 1, 2, 3, ((4, 5), (2, 3)), 3, 2)
    value, shapes, starts, locations, weights = make_inputs(case, torch.float64, device)
    tensors = tuple(t.requires_grad_() for t in (value, locations, weights))
    passed = torch.autograd.gradcheck(
        lambda v, loc, w: ms_deform_attn(v, shapes, starts, loc, w), tensors, raise_exception=False
    )
    return {"check": "gradcheck", "dtype": "float64", "passed": bool(passed)}


class _DtypeRecorder:
    """Stands in for rvos_d2._C and records the value dtype each kernel call receives."""

    def __init__(self, extension):
        self.extension, self.dtypes = extension, []

    def __getattr__(self, name):
        function = getattr(self.extension, name)

        def recorded(value, *rest):
            self.dtypes.append(value.dtype)
            return function(value, *rest)

        return recorded


def check_autocast(dtype: torch.dtype, device: torch.device) -> dict:
    """MSDeformAttn under autocast: the kernels see `dtype` on CUDA (float32 on the CPU kernels)."""
    torch.manual_seed(0)
    layer = MSDeformAttn(d_model=64, n_levels=2, n_heads=4, n_points=2).to(device)
    shapes = torch.tensor([[8, 10], [4, 5]], device=device)
    starts = torch.tensor([0, 80], device=device)
    query = torch.randn(2, 11, 64, device=device)
    reference_points = torch.rand(2, 11, 2, 2, device=device)
    memory = torch.randn(2, 100, 64, device=device)
    expected = layer(query, reference_points, memory, shapes, starts)
    recorder = _DtypeRecorder(ms_deform_attn_func._C)
    original, ms_deform_attn_func._C = ms_deform_attn_func._C, recorder
    try:
        with torch.autocast(device.type, dtype=dtype):
            output = layer(query, reference_points, memory, shapes, starts)
        output.float().sum().backward()
    finally:
        ms_deform_attn_func._C = original
    kernel_dtype = dtype if device.type == "cuda" else torch.float32
    error = _relative_error(output.float(), expected.double())
    passed = recorder.dtypes == [kernel_dtype, kernel_dtype] and error <= 5e-2
    return {
        "check": "autocast_layer",
        "dtype": str(dtype).removeprefix("torch."),
        "kernel_dtypes": [str(d).removeprefix("torch.") for d in recorder.dtypes],
        "errors": {"output": error},
        "passed": passed,
    }


def run_checks(device: torch.device, quick: bool) -> list[dict]:
    """Every correctness check, one dict each with `passed`."""
    cases = (*CASES, LARGE_BATCH_QUICK if quick else LARGE_BATCH)
    checks = [check_case(case, dtype, device) for case in cases for dtype in DTYPES.values()]
    checks.append(check_gradcheck(device))
    checks += [check_autocast(dtype, device) for dtype in (torch.float16, torch.bfloat16)]
    return checks


def bench_case(name: str, quick: bool) -> Case:
    """The ReferFormer-R50 layout (encoder or decoder queries); quick: 1 frame of 96 x 160."""
    frames, size = (1, (96, 160)) if quick else (BENCH_FRAMES, BENCH_SIZE)
    shapes = tuple((-(-size[0] // s), -(-size[1] // s)) for s in BENCH_STRIDES)
    tokens = sum(h * w for h, w in shapes)
    lq = tokens if name == "encoder" else BENCH_DECODER_QUERIES
    return Case(name, frames, BENCH_HEADS, BENCH_HEAD_DIM, shapes, lq, BENCH_POINTS)


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `fn` in milliseconds, the device synchronised around each call."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def traffic_bytes(case: Case, dtype: torch.dtype) -> dict[str, int]:
    """Bytes each pass must move at least: every input read and every output written once.

    Backward reads value, sampling, weights and grad_output and writes the three gradients; the
    16-bit value gradient goes through a float32 buffer (zeroed, accumulated, read, cast).
    """
    value = case.n * sum(h * w for h, w in case.shapes) * case.m * case.d
    points = case.n * case.lq * case.m * len(case.shapes) * case.p
    out = case.n * case.lq * case.m * case.d
    v, a = torch.finfo(dtype).bits // 8, torch.finfo(accumulation_dtype(dtype)).bits // 8
    sampling = points * 3 * a  # two coordinates and one weight per point
    forward = value * v + sampling + out * v
    grad_value = value * (v + 3 * a if a != v else 2 * a)
    backward = value * v + sampling + out * v + grad_value + sampling
    return {"forward": forward, "backward": backward}


def peak_bandwidth(device: torch.device) -> dict:
    """The device's memory bandwidth: from its memory clock and bus width, and a measured copy."""
    if device.type != "cuda":
        return {}
    props = torch.cuda.get_device_properties(device)
    clock_khz, bus_bits = (
        getattr(props, "memory_clock_rate", 0),
        getattr(props, "memory_bus_width", 0),
    )
    result = {}
    if clock_khz and bus_bits:
        # Double data rate: two transfers per clock over the whole bus.
        result["spec_bytes_per_s"] = 2 * clock_khz * 1e3 * bus_bits / 8
    result["copy_bytes_per_s"] = _copy_bandwidth(device)
    torch.cuda.empty_cache()
    return result


def _copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a 1 GiB device-to-device copy, counting the read and the write."""
    source = torch.empty(1 << 28, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    ms = time_ms(lambda: target.copy_(source), device, repeats=10, warmup=3)
    return 2 * source.numel() * source.element_size() / (ms / 1000)


def bench(
    name: str, dtype: torch.dtype, device: torch.device, quick: bool, peak: dict, repeats: int
) -> dict:
    """Forward and forward + backward of the compiled op, forward + backward of the reference."""
    case = bench_case(name, quick)
    inputs = [
        t.requires_grad_() if t.is_floating_point() else t for t in make_inputs(case, dtype, device)
    ]
    gen = torch.Generator().manual_seed(2)
    grad = torch.randn(case.n, case.lq, case.m * case.d, generator=gen).to(device, dtype)

    def step(fn):
        for t in (inputs[0], inputs[3], inputs[4]):
            t.grad = None
        fn(*inputs).backward(grad)

    warmup = 1 if quick else 3
    with torch.no_grad():
        forward_ms = time_ms(lambda: ms_deform_attn(*inputs), device, repeats, warmup)
    compiled_ms = time_ms(lambda: step(ms_deform_attn), device, repeats, warmup)
    reference_ms = time_ms(lambda: step(ms_deform_attn_reference), device, repeats, warmup)
    traffic = traffic_bytes(case, dtype)
    entry = {
        "case": name,
        "dtype": str(dtype).removeprefix("torch."),
        "frames": case.n,
        "queries_per_frame": case.lq,
        "tokens_per_frame": sum(h * w for h, w in case.shapes),
        "compiled_forward_ms": forward_ms,
        "compiled_forward_backward_ms": compiled_ms,
        "reference_forward_backward_ms": reference_ms,
        "speedup_forward_backward": reference_ms / compiled_ms,
        "traffic_bytes": traffic,
    }
    backward_ms = max(compiled_ms - forward_ms, 1e-6)
    achieved = {
        "forward": traffic["forward"] / (forward_ms / 1000),
        "backward": traffic["backward"] / (backward_ms / 1000),
    }
    entry["achieved_bytes_per_s"] = achieved
    for key, peak_value in peak.items():
        label = key.removesuffix("_bytes_per_s")
        entry[f"fraction_of_{label}_peak"] = {k: v / peak_value for k, v in achieved.items()}
    return entry


def run_benchmarks(device: torch.device, quick: bool, peak: dict) -> list[dict]:
    """Every (case, dtype) benchmark."""
    repeats = 2 if quick else 20
    return [
        bench(name, dtype, device, quick, peak, repeats)
        for name in ("encoder", "decoder")
        for dtype in DTYPES.values()
    ]


def environment(device: torch.device) -> dict:
    """Python, torch, CUDA and device facts for the summary."""
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": str(device),
        "op": compiled_op_status(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            kernel_problem=cuda_kernel_problem(device),
        )
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--output", type=Path, help="write the JSON summary here too")
    parser.add_argument("--skip-benchmarks", action="store_true")
    parser.add_argument("--extra", type=json.loads, default={}, help="JSON merged into the summary")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    summary = {**args.extra, "environment": environment(device), "quick": args.quick}
    if not summary["environment"]["op"]["loaded"]:
        summary["passed"] = False
        summary["error"] = "the compiled op did not load: " + str(summary["environment"]["op"])
    elif device.type == "cuda" and summary["environment"]["kernel_problem"]:
        summary["passed"] = False
        summary["error"] = summary["environment"]["kernel_problem"]
    else:
        start = time.perf_counter()
        summary["checks"] = run_checks(device, args.quick)
        summary["checks_seconds"] = time.perf_counter() - start
        summary["passed"] = all(check["passed"] for check in summary["checks"])
        if not args.skip_benchmarks:
            start = time.perf_counter()
            summary["peak_bandwidth"] = peak_bandwidth(device)
            summary["benchmarks"] = run_benchmarks(device, args.quick, summary["peak_bandwidth"])
            summary["benchmarks_seconds"] = time.perf_counter() - start
    text = json.dumps(summary, indent=1)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    failed = [c["check"] + "/" + c["dtype"] for c in summary.get("checks", []) if not c["passed"]]
    if failed:
        print(f"gpu_check: failed checks: {', '.join(failed)}", file=sys.stderr)
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

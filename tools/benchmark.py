#!/usr/bin/env python
"""Micro-benchmarks of rvos_d2 components; each subcommand prints one JSON line.

    python tools/benchmark.py ms_deform_attn --device cuda --dtype float16
    python tools/benchmark.py all --device cpu --quick

A benchmark is a function `(args) -> dict` registered with `@benchmark(name, help)`; it may add
its own options through `configure=`. Shared options (--device, --dtype, --quick, --repeats,
--warmup) are parsed for every subcommand.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

import rvos_d2  # noqa: F401  (detectron2 shims before any detectron2 import)
from rvos_d2.utils.cli import run_cli

BENCHMARKS: dict[str, tuple[str, Callable[[argparse.Namespace], dict], Callable | None]] = {}


def benchmark(
    name: str,
    help_text: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
):
    """Registers a benchmark function under a subcommand name."""

    def register(fn: Callable[[argparse.Namespace], dict]):
        BENCHMARKS[name] = (help_text, fn, configure)
        return fn

    return register


def time_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of `fn` in milliseconds, synchronising the device around each call."""
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


# ReferFormer with a ResNet-50: a 5-frame 360 x 640 clip, strides 8 / 16 / 32 / 64 (the last an
# extra stride-2 convolution), 8 heads of 32 channels, 4 points per level, 5 queries per frame.
MSDA_FRAMES, MSDA_SIZE, MSDA_STRIDES = 5, (360, 640), (8, 16, 32, 64)
MSDA_HEADS, MSDA_HEAD_DIM, MSDA_POINTS, MSDA_DECODER_QUERIES = 8, 32, 4, 5


def _msda_inputs(lq: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    from rvos_d2.layers.ms_deform_attn_func import accumulation_dtype

    gen = torch.Generator().manual_seed(seed)
    shapes = [(-(-MSDA_SIZE[0] // s), -(-MSDA_SIZE[1] // s)) for s in MSDA_STRIDES]
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    n, m, d, levels, p = MSDA_FRAMES, MSDA_HEADS, MSDA_HEAD_DIM, len(shapes), MSDA_POINTS
    s = int(sizes.sum())
    lq = s if lq < 0 else lq
    value = torch.randn(n, s, m, d, generator=gen)
    locations = torch.rand(n, lq, m, levels, p, 2, generator=gen)
    weights = torch.randn(n, lq, m, levels * p, generator=gen).softmax(-1).view(n, lq, m, levels, p)
    acc = accumulation_dtype(dtype)
    return [
        value.to(device, dtype).requires_grad_(),
        spatial_shapes.to(device),
        starts.to(device),
        locations.to(device, acc).requires_grad_(),
        weights.to(device, acc).requires_grad_(),
    ]


def _configure_msda(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--case",
        choices=["encoder", "decoder", "both"],
        default="both",
        help="encoder: every token queries; decoder: 5 queries per frame",
    )


@benchmark(
    "ms_deform_attn",
    "compiled deformable attention vs the pure-PyTorch path, forward + backward",
    _configure_msda,
)
def bench_ms_deform_attn(args: argparse.Namespace) -> dict:
    from rvos_d2.layers.ms_deform_attn_func import (
        compiled_op_available,
        ms_deform_attn,
        ms_deform_attn_reference,
    )

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    compiled = compiled_op_available() and (
        device.type == "cuda" or dtype in (torch.float32, torch.float64)
    )
    cases = ["encoder", "decoder"] if args.case == "both" else [args.case]
    result = {"benchmark": "ms_deform_attn", "device": str(device), "dtype": args.dtype}
    result.update(frames=MSDA_FRAMES, image=list(MSDA_SIZE), strides=list(MSDA_STRIDES))
    result.update(repeats=args.repeats, compiled_available=compiled, cases={})
    for case in cases:
        lq = -1 if case == "encoder" else MSDA_DECODER_QUERIES
        inputs = _msda_inputs(lq, dtype, device)
        grad = torch.randn(inputs[0].shape[0], inputs[3].shape[1], MSDA_HEADS * MSDA_HEAD_DIM)
        grad = grad.to(device, dtype)

        def step(fn, inputs=inputs, grad=grad):
            for t in (inputs[0], inputs[3], inputs[4]):
                t.grad = None
            out = fn(*inputs)
            out.backward(grad)
            return out

        entry = {"queries_per_frame": inputs[3].shape[1], "tokens_per_frame": inputs[0].shape[1]}
        entry["reference_ms"] = time_ms(
            lambda: step(ms_deform_attn_reference), device, args.repeats, args.warmup
        )
        if compiled:
            entry["compiled_ms"] = time_ms(
                lambda: step(ms_deform_attn), device, args.repeats, args.warmup
            )
            entry["speedup"] = entry["reference_ms"] / entry["compiled_ms"]
            with torch.no_grad():
                diff = ms_deform_attn(*inputs).float() - ms_deform_attn_reference(*inputs).float()
            entry["max_abs_diff"] = diff.abs().max().item()
        result["cases"][case] = entry
    return result


def _peak_rss_growth_mb(fn: Callable[[], object]) -> float | None:
    """Growth of the process's peak resident memory while `fn` runs (Linux: the peak is reset
    through /proc/self/clear_refs); None where that is not available."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")

        def status_kb(key: str) -> int:
            with open("/proc/self/status") as f:
                line = next(x for x in f if x.startswith(key))
            return int(line.split()[1])

        before = status_kb("VmRSS:")
        fn()
        return (status_kb("VmHWM:") - before) / 1024
    except (OSError, StopIteration):
        return None


def _configure_tracklet_nms(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracklets", type=int, default=100, help="tracklets P")
    parser.add_argument("--frames", type=int, default=200, help="frames T")
    parser.add_argument("--size", type=int, nargs=2, default=[96, 160], help="mask H W")
    parser.add_argument(
        "--brute-force-pairs", type=int, default=300, help="pairs timed by the per-pair loop"
    )


@benchmark(
    "tracklet_nms",
    "tracklet IoU + greedy NMS as chunked matrix products vs a per-pair loop",
    _configure_tracklet_nms,
)
def bench_tracklet_nms(args: argparse.Namespace) -> dict:
    from rvos_d2.modeling.tracklets import Tracklets, tracklet_iou, tracklet_nms

    device = torch.device(args.device)
    p, t = args.tracklets, args.frames
    h, w = args.size
    gen = torch.Generator().manual_seed(0)
    # Boxes of random size and place per tracklet, drifting over time.
    corner = torch.rand(p, 1, 2, generator=gen) * 0.6
    drift = torch.linspace(0, 0.3, t)[None, :, None] * (torch.rand(p, 1, 2, generator=gen) - 0.5)
    lo = (corner + drift).clamp(0, 1)
    hi = (lo + 0.1 + torch.rand(p, 1, 2, generator=gen) * 0.3).clamp(0, 1)
    ys, xs = torch.linspace(0, 1, h), torch.linspace(0, 1, w)
    inside_y = (ys >= lo[..., 0:1]) & (ys < hi[..., 0:1])  # P x T x H
    inside_x = (xs >= lo[..., 1:2]) & (xs < hi[..., 1:2])
    masks = (inside_y[..., :, None] & inside_x[..., None, :]).to(device)
    tracklets = Tracklets(
        masks=masks,
        scores=torch.rand(p, generator=gen).to(device),
        confidence=torch.ones(p, t, device=device),
        key_frames=torch.zeros(p, dtype=torch.long, device=device),
        sources=torch.zeros(p, dtype=torch.long, device=device),
    )

    def vectorised():
        return tracklet_nms(tracklets, 0.5, max_keep=10)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        vectorised()
        peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        peak_mb = _peak_rss_growth_mb(vectorised)
    vectorised_ms = time_ms(vectorised, device, args.repeats, args.warmup)

    # Per-pair loop (Eq. 3 with logical ops over all frames of a pair) on a sample of pairs,
    # extrapolated to all P (P - 1) / 2 pairs; the NMS loop itself costs the same in both.
    pairs = [(i, j) for i in range(p) for j in range(i + 1, p)][: args.brute_force_pairs]

    def brute_force():
        for i, j in pairs:
            inter = (masks[i] & masks[j]).sum()
            union = (masks[i] | masks[j]).sum()
            (inter / union.clamp(min=1)).item()

    pair_ms = time_ms(brute_force, device, max(1, args.repeats // 5), 1) / len(pairs)
    all_pairs = p * (p - 1) // 2
    iou = tracklet_iou(masks)
    expected = [
        float((masks[i] & masks[j]).sum()) / max(float((masks[i] | masks[j]).sum()), 1.0)
        for i, j in pairs[:20]
    ]
    max_diff = max(abs(iou[i, j].item() - e) for (i, j), e in zip(pairs[:20], expected))
    return {
        "benchmark": "tracklet_nms",
        "device": str(device),
        "tracklets": p,
        "frames": t,
        "mask_size": [h, w],
        "vectorised_ms": vectorised_ms,
        "vectorised_peak_mb": peak_mb,
        "brute_force_pairs_timed": len(pairs),
        "brute_force_ms_all_pairs": pair_ms * all_pairs,
        "speedup": pair_ms * all_pairs / vectorised_ms,
        "max_abs_diff_iou": max_diff,
    }


def main(argv: list[str] | None = None) -> None:
    shared = argparse.ArgumentParser(add_help=False)
    shared.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    shared.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"]
    )
    shared.add_argument("--quick", action="store_true", help="few repeats (CPU smoke run)")
    shared.add_argument("--repeats", type=int, default=None, help="timed runs (median)")
    shared.add_argument("--warmup", type=int, default=None, help="untimed runs first")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    subparsers.add_parser("all", parents=[shared], help="run every benchmark")
    for name, (help_text, _, configure) in BENCHMARKS.items():
        sub = subparsers.add_parser(name, parents=[shared], help=help_text)
        if configure is not None:
            configure(sub)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 5
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    names = list(BENCHMARKS) if args.command == "all" else [args.command]
    for name in names:
        _, fn, configure = BENCHMARKS[name]
        if args.command == "all" and configure is not None:
            # Subcommand-only options take their defaults.
            defaults = argparse.ArgumentParser(add_help=False)
            configure(defaults)
            for key, value in vars(defaults.parse_args([])).items():
                setattr(args, key, value)
        print(json.dumps(fn(args)), flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))

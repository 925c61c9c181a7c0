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
from collections.abc import Callable, Iterable
from typing import NamedTuple

import numpy as np
import torch

import rvos_d2  # noqa: F401  (detectron2 shims before any detectron2 import)
from rvos_d2.layers.gpu_check import time_ms
from rvos_d2.utils.cli import run_cli
from rvos_d2.utils.registry import NamedRegistry

BENCHMARK_REGISTRY = NamedRegistry("BENCHMARK")
BENCHMARK_REGISTRY.__doc__ = "The benchmarks, by subcommand name."


class Benchmark(NamedTuple):
    """A subcommand: its help, the function measuring (JSON-ready dict out) and its options."""

    help_text: str
    run: Callable[[argparse.Namespace], dict]
    configure: Callable[[argparse.ArgumentParser], None] | None = None


def benchmark(
    name: str,
    help_text: str,
    configure: Callable[[argparse.ArgumentParser], None] | None = None,
):
    """Registers a benchmark function under a subcommand name."""

    def register(fn: Callable[[argparse.Namespace], dict]):
        BENCHMARK_REGISTRY.register_as(name)(Benchmark(help_text, fn, configure))
        return fn

    return register


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
    except OSError:
        return None
    before = _status_mib("VmRSS:")
    fn()
    after = _status_mib("VmHWM:")
    return None if before is None or after is None else after - before


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


def _configure_propagation(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="model config (default: Propagation/STCN-R50.yaml, or Synthetic/STCN-tiny.yaml "
        "with --quick)",
    )
    parser.add_argument("--frames", default="100,2000", help="video lengths, comma-separated")
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, help="frame H W (480 864; --quick: 96 160)"
    )
    parser.add_argument("--objects", type=int, default=2, help="objects propagated together")
    parser.add_argument("--max-memory-frames", type=int, default=10, help="0: no limit")


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    return int(_status_mib("VmRSS:") * 2**20)


def _consume_measuring_memory(items: Iterable, device: torch.device) -> dict:
    """Consumes a stream of per-frame outputs: frames, frames per second, peak resident memory
    (sampled every 10 frames) and its growth over the start, and the CUDA peak allocation."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = peak = _rss_bytes()
    start = time.perf_counter()
    count = 0
    for count, _ in enumerate(items, start=1):
        if count % 10 == 0:
            peak = max(peak, _rss_bytes())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = max(peak, _rss_bytes())
    run = {"frames": count, "fps": count / seconds, "seconds": seconds}
    run.update(peak_rss_mib=peak / 2**20, peak_rss_growth_mib=(peak - base) / 2**20)
    if device.type == "cuda":
        run["peak_cuda_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return run


@benchmark(
    "propagation",
    "STCN Propagator on streamed synthetic videos: frames per second and peak memory per length",
    _configure_propagation,
)
def bench_propagation(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from rvos_d2.config import load_config
    from rvos_d2.modeling.propagation import Propagator

    from detectron2.modeling import build_model

    root = Path(__file__).resolve().parents[1] / "configs"
    default = "Synthetic/STCN-tiny.yaml" if args.quick else "Propagation/STCN-R50.yaml"
    config = args.config or str(root / default)
    cfg = load_config(config, ["MODEL.DEVICE", args.device])
    network = build_model(cfg).network.eval()
    dtype = getattr(torch, args.dtype)
    if dtype != torch.float32:
        network.to(dtype=dtype)
        network.normalize = _cast_input(network.normalize, dtype)
    p = cfg.MODEL.PROPAGATION
    propagator = Propagator(
        network,
        mem_every=p.MEM_EVERY,
        include_last=p.INCLUDE_LAST,
        max_memory_frames=args.max_memory_frames,
    )
    device = torch.device(args.device)
    height, width = args.size or ((96, 160) if args.quick else (480, 864))
    gen = torch.Generator().manual_seed(0)
    texture = torch.randint(0, 256, (3, height + 64, width + 64), generator=gen, dtype=torch.uint8)
    masks = torch.zeros(args.objects, height, width)
    for k in range(args.objects):
        masks[k, height // 4 : height // 2, k * width // (args.objects + 1) :][:, : width // 8] = 1

    def frames(n: int):  # a panning texture, made one frame at a time (never stored)
        for t in range(n):
            dy, dx = t % 64, (2 * t) % 64
            yield texture[:, dy : dy + height, dx : dx + width].to(device)

    result = {"benchmark": "propagation", "device": str(device), "dtype": args.dtype}
    result.update(config=str(config), size=[height, width], objects=args.objects)
    result.update(max_memory_frames=args.max_memory_frames, mem_every=p.MEM_EVERY, runs={})
    for n in (int(x) for x in args.frames.split(",")):
        run = _consume_measuring_memory(propagator.stream(frames(n), 0, masks), device)
        run["memory_frames_at_end"] = len(propagator.memory_banks["forward"].entries)
        result["runs"][str(n)] = run
    return result


def _configure_long_video(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file",
        default=None,
        help="model config (default: configs/Synthetic/ReferFormer-tiny.yaml, random weights)",
    )
    parser.add_argument("--frames", default="100,1000,10000", help="video lengths, comma-separated")
    parser.add_argument("--size", type=int, nargs=2, default=(360, 640), help="frame H W")
    parser.add_argument("--weights", default="", help="MODEL.WEIGHTS (default: random weights)")


@benchmark(
    "long_video",
    "Streaming video segmentation (VideoPredictor): frames per second and peak memory per length",
    _configure_long_video,
)
def bench_long_video(args: argparse.Namespace) -> dict:
    from pathlib import Path

    from rvos_d2.config import load_config
    from rvos_d2.engine.predictor import VideoPredictor

    default = Path(__file__).resolve().parents[1] / "configs/Synthetic/ReferFormer-tiny.yaml"
    config = args.config_file or str(default)
    cfg = load_config(config, ["MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights])
    predictor = VideoPredictor(cfg)
    device = torch.device(args.device)
    height, width = args.size
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (height + 64, width + 64, 3), dtype=np.uint8)

    def frames(n: int):  # a panning texture with a moving square, one frame at a time
        for t in range(n):
            dy, dx = t % 64, (3 * t) % 64
            frame = texture[dy : dy + height, dx : dx + width].copy()
            x = (5 * t) % max(width - 40, 1)
            frame[height // 3 : height // 3 + 40, x : x + 40] = (220, 40, 40)
            yield frame

    result = {"benchmark": "long_video", "device": str(device), "config": config}
    result.update(size=[height, width], window=cfg.TEST.WINDOW, runs={})
    for n in (int(x) for x in args.frames.split(",")):
        outputs = predictor.stream(frames(n), "the red square", (height, width))
        result["runs"][str(n)] = _consume_measuring_memory(outputs, device)
    return result


def _cast_input(normalize: Callable, dtype: torch.dtype) -> Callable:
    return lambda images: normalize(images).to(dtype)


def _configure_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-file",
        action="append",
        default=None,
        help="config to benchmark, repeatable (default: configs/Synthetic/ReferFormer-tiny.yaml)",
    )
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none")
    parser.add_argument(
        "--weights", default="", help="checkpoint to load (default: random weights)"
    )
    parser.add_argument("--frames", type=int, default=None, help="frames per video / clip")
    parser.add_argument("--batch", type=int, default=None, help="clips per step (train_step)")
    parser.add_argument("--size", type=int, nargs=2, default=None, help="frame H W")
    parser.add_argument(
        "--op-paths",
        default="compiled,pytorch",
        help="deformable attention paths to time, comma-separated (compiled, pytorch)",
    )
    parser.add_argument("--opts", nargs="*", default=[], help="config KEY VALUE overrides")


def _model_cfg(config_file: str, args: argparse.Namespace):
    """The config with the device set and MODEL.WEIGHTS replaced by --weights (random if empty)."""
    from rvos_d2.config import load_config

    opts = [*args.opts, "MODEL.DEVICE", args.device, "MODEL.WEIGHTS", args.weights]
    return load_config(config_file, opts)


def _frame_size(min_size: int, max_size: int, aspect: float = 16 / 9) -> tuple[int, int]:
    """A 16:9 frame resized as ResizeShortestEdge would: short side `min_size`, long <= max."""
    scale = min(1.0, max_size / (min_size * aspect)) if max_size > 0 else 1.0
    return round(min_size * scale), round(min_size * aspect * scale)


def _synthetic_video(frames: int, height: int, width: int, with_targets: bool, seed: int = 0):
    """One model input of random frames (the mapper's output contract) with a box target."""
    from detectron2.structures import BitMasks, Instances

    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (frames, 3, height, width), generator=gen, dtype=torch.uint8)
    video = {"image": image, "expression": "the object in the middle moving left"}
    video.update(height=height, width=width, frame_ids=list(range(frames)))
    if with_targets:
        instances = []
        for t in range(frames):
            mask = torch.zeros(1, height, width, dtype=torch.bool)
            mask[0, height // 4 : height // 2, width // 3 + t : width // 2 + t] = True
            inst = Instances((height, width))
            inst.gt_masks = BitMasks(mask)
            inst.gt_boxes = inst.gt_masks.get_bounding_boxes()
            inst.gt_classes = torch.zeros(1, dtype=torch.int64)
            inst.gt_valid = torch.ones(1, dtype=torch.bool)
            instances.append(inst)
        video["instances"] = instances
    return video


def _measure_paths(
    step: Callable[[], object], paths: list[str], device: torch.device, args: argparse.Namespace
) -> dict[str, dict]:
    """Median step time and peak memory per op path; the paths alternate step by step, so a
    change in machine load during the run affects them alike."""
    from rvos_d2.layers.ms_deform_attn_func import pytorch_path

    def on_path(path: str) -> None:
        if path == "pytorch":
            with pytorch_path():
                step()
        else:
            step()

    for _ in range(args.warmup):
        for path in paths:
            on_path(path)
    samples = {path: {"ms": [], "peak": [], "growth": []} for path in paths}
    for _ in range(args.repeats):
        for path in paths:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            timing = {}

            def timed(path=path, timing=timing):
                timing["ms"] = time_ms(lambda: on_path(path), device, repeats=1, warmup=0)

            growth = _peak_rss_growth_mb(timed)
            record = samples[path]
            record["ms"].append(timing["ms"])
            if device.type == "cuda":
                record["peak"].append(torch.cuda.max_memory_allocated(device) / 2**20)
            else:
                # The peak was reset when the step began: VmHWM is the peak during the step.
                record["peak"].append(_status_mib("VmHWM:"))
                record["growth"].append(growth)
    results = {}
    for path, record in samples.items():
        results[path] = {"step_ms": statistics.median(record["ms"])}
        if device.type == "cuda":
            results[path]["peak_cuda_allocated_mib"] = max(record["peak"])
        elif None not in record["peak"]:
            results[path]["peak_rss_mib"] = max(record["peak"])
            results[path]["peak_rss_growth_mib"] = max(record["growth"])
    return results


def _status_mib(key: str) -> float | None:
    """A memory figure of this process from /proc/self/status in MiB (None off Linux)."""
    try:
        with open("/proc/self/status") as f:
            return int(next(x for x in f if x.startswith(key)).split()[1]) / 1024
    except (OSError, StopIteration):
        return None


def _bench_model(args: argparse.Namespace, mode: str) -> dict:
    """`inference` or `train_step` of every --config-file, on each deformable-attention path."""
    from pathlib import Path

    from rvos_d2.layers.ms_deform_attn_func import compiled_op_available

    from detectron2.modeling import build_model

    root = Path(__file__).resolve().parents[1]
    configs = args.config_file or [str(root / "configs" / "Synthetic" / "ReferFormer-tiny.yaml")]
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    paths = [p for p in args.op_paths.split(",") if p]
    unknown = set(paths) - {"compiled", "pytorch"}
    if unknown:
        raise ValueError(f"--op-paths: unknown path(s) {sorted(unknown)} (use compiled, pytorch)")
    if "compiled" in paths and not compiled_op_available():
        paths.remove("compiled")
    result = {"benchmark": mode, "device": str(device), "amp": args.amp, "configs": {}}
    for config_file in configs:
        cfg = _model_cfg(config_file, args)
        torch.manual_seed(0)
        model = build_model(cfg)
        if args.weights:
            from rvos_d2.engine import RVOSCheckpointer

            RVOSCheckpointer(model).load(args.weights)
        if mode == "inference":
            size = args.size or _frame_size(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
            frames = args.frames or (6 if args.quick else 36)
            batch = [_synthetic_video(frames, *size, with_targets=False)]
            step = _inference_step(model, batch, device, amp)
        else:
            min_size = max(cfg.INPUT.MIN_SIZE_TRAIN)
            size = args.size or _frame_size(min_size, cfg.INPUT.MAX_SIZE_TRAIN)
            frames = args.frames or cfg.INPUT.SAMPLING_FRAME_NUM
            clips = args.batch or (1 if args.quick else cfg.SOLVER.IMS_PER_BATCH)
            batch = [_synthetic_video(frames, *size, True, seed=i) for i in range(clips)]
            step = _train_step(cfg, model, batch, device, amp)
        entry = {"size": list(size), "frames_per_step": frames * len(batch), "paths": {}}
        entry["paths"] = _measure_paths(step, paths, device, args)
        for measured in entry["paths"].values():
            measured["frames_per_s"] = entry["frames_per_step"] / (measured["step_ms"] / 1000)
        if len(entry["paths"]) == 2:
            ms = {p: v["step_ms"] for p, v in entry["paths"].items()}
            entry["speedup_compiled_vs_pytorch"] = ms["pytorch"] / ms["compiled"]
        result["configs"][str(config_file)] = entry
    return result


def _inference_step(model, batch: list[dict], device: torch.device, amp) -> Callable[[], object]:
    """One inference call on the whole video, under autocast when `amp` is set."""
    model.eval()

    def step():
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return model(batch)

    return step


def _train_step(cfg, model, batch: list[dict], device: torch.device, amp) -> Callable[[], object]:
    """Forward, backward and optimizer step on `batch` (fp16: with gradient scaling)."""
    from rvos_d2.engine.optimizer import build_optimizer

    model.train()
    optimizer = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def step():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            losses = model(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(sum(losses.values())).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


@benchmark(
    "inference",
    "whole-video inference of each --config-file: frames per second and peak memory",
    _configure_model,
)
def bench_inference(args: argparse.Namespace) -> dict:
    return _bench_model(args, "inference")


@benchmark(
    "train_step",
    "training steps (forward, backward, optimizer) of each --config-file: frames/s, peak memory",
    _configure_model,
)
def bench_train_step(args: argparse.Namespace) -> dict:
    return _bench_model(args, "train_step")


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
    for name, bench in BENCHMARK_REGISTRY:
        sub = subparsers.add_parser(name, parents=[shared], help=bench.help_text)
        if bench.configure is not None:
            bench.configure(sub)
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 20
    if args.warmup is None:
        args.warmup = 1 if args.quick else 5
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    names = [n for n, _ in BENCHMARK_REGISTRY] if args.command == "all" else [args.command]
    for name in names:
        bench = BENCHMARK_REGISTRY.get(name)
        if args.command == "all" and bench.configure is not None:
            # Subcommand-only options take their defaults.
            defaults = argparse.ArgumentParser(add_help=False)
            bench.configure(defaults)
            for key, value in vars(defaults.parse_args([])).items():
                setattr(args, key, value)
        print(json.dumps(bench.run(args)), flush=True)


if __name__ == "__main__":
    sys.exit(run_cli(main))

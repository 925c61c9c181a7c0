#!/usr/bin/env python
"""Ranks every RVOS method on the synthetic dataset under one CPU-time training budget.

Each method's `configs/Synthetic/*-tiny.yaml` (every config whose meta-architecture is an
RVOS one) is trained with the same budget of training-process CPU seconds: a few calibration
iterations measure the CPU cost of one iteration, and SOLVER.MAX_ITER (with STEPS and
WARMUP_ITERS scaled alike) is set so that training fits the budget. The default budget is what
ReferFormer-tiny's own schedule costs. The shared backbone pretraining (MODEL.WEIGHTS) is done
once and not counted. Every trained model (and each inference-only variant) is evaluated on the
registered synthetic valid splits; the table (J, F, J&F, prec@0.5, temporal stability,
inference frames per second) is written as markdown and JSON. Finished methods and evaluations
are cached in the output directory, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

import rvos_d2  # noqa: F401  (registrations)
from rvos_d2.config import load_config
from rvos_d2.engine import RVOSTrainer
from rvos_d2.engine.checkpoint import RVOSCheckpointer

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import HookBase
from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from run_main_job import ensure_pretrained_backbone, ensure_synthetic_dataset  # noqa: E402

CONFIG_DIR = ROOT / "configs" / "Synthetic"
REFERENCE = "ReferFormer-tiny"
SPLITS = ("rvos_synth_valid", "rvos_synth_valid_motion", "rvos_synth_valid_unseen_phrasing")
CALIBRATION_ITERS = 6  # the first is a warm-up and is not timed
PRETRAIN_ITERATIONS = 1200
METRICS = ("J", "F", "JF", "prec@0.5", "JF_variance")

logger = logging.getLogger("rvos_d2.leaderboard")


@dataclass(frozen=True)
class Variant:
    """An evaluation of a method's trained model with inference-only config overrides."""

    method: str
    name: str
    opts: tuple[str, ...] = field(default_factory=tuple)


def inference_variants(method: str, propagation_weights: str | None) -> list[Variant]:
    """The method's default evaluation plus its inference-only ablations."""
    variants = [Variant(method, "default")]
    if method == "URVOS-tiny":
        variants.append(Variant(method, "3 iterations", ("MODEL.URVOS.INFERENCE_ITERATIONS", "3")))
        variants.append(Variant(method, "stage 1 only", ("MODEL.URVOS.INFERENCE_ITERATIONS", "0")))
    if method == "TopDown-tiny":
        variants.append(Variant(method, "no tracklet-NMS", ("MODEL.TOPDOWN.NMS_THRESH", "1.0")))
    if propagation_weights and method in ("ReferFormer-tiny", "MLRL-tiny"):
        stcn = ("TEST.PROPAGATION.NAME", "stcn", "TEST.PROPAGATION.WEIGHTS", propagation_weights)
        variants.append(Variant(method, "+ STCN", stcn))
    return variants


def ranked_configs(names: Sequence[str] | None = None) -> dict[str, Path]:
    """Synthetic configs of RVOS methods (evaluated by the `rvos` evaluator), by file stem."""
    configs = {}
    for path in sorted(CONFIG_DIR.glob("*-tiny.yaml")):
        tests = load_config(path).DATASETS.TEST
        if tests and MetadataCatalog.get(tests[0]).get("evaluator_type") == "rvos":
            configs[path.stem] = path
    if names:
        unknown = sorted(set(names) - set(configs))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; choose among {sorted(configs)}")
        configs = {name: configs[name] for name in names}
    return configs


def missing_parts(cfg: CfgNode) -> str | None:
    """Why a config cannot be trained from the synthetic data alone, or None."""
    if cfg.MODEL.META_ARCHITECTURE == "TopDownRVOS":
        if not all(cfg.MODEL.TOPDOWN.CANDIDATES.WEIGHTS) or not cfg.MODEL.TOPDOWN.get(
            "PROPAGATION_WEIGHTS", ""
        ):
            return (
                "needs a trained candidate model (MODEL.TOPDOWN.CANDIDATES.WEIGHTS) and "
                "propagation network (MODEL.TOPDOWN.PROPAGATION_WEIGHTS)"
            )
    return None


def scaled_schedule(cfg: CfgNode, max_iter: int) -> list[str]:
    """Config overrides that run the config's LR schedule compressed into `max_iter`."""
    ratio = max_iter / cfg.SOLVER.MAX_ITER
    steps = tuple(step for s in cfg.SOLVER.STEPS if 0 < (step := round(s * ratio)) < max_iter)
    warmup = min(max(1, round(cfg.SOLVER.WARMUP_ITERS * ratio)), max_iter)
    return [
        "SOLVER.MAX_ITER",
        str(max_iter),
        "SOLVER.STEPS",
        str(steps),
        "SOLVER.WARMUP_ITERS",
        str(warmup),
    ]


def iterations_for_budget(budget_s: float, seconds_per_iter: float) -> int:
    """Training iterations that fit `budget_s` CPU seconds at the measured rate."""
    if seconds_per_iter <= 0 or not math.isfinite(seconds_per_iter):
        raise ValueError(f"seconds per iteration must be positive, got {seconds_per_iter}")
    return max(1, int(budget_s // seconds_per_iter))


class _CpuClock(HookBase):
    """Records the process CPU time after each iteration."""

    def __init__(self):
        self.times: list[float] = []

    def after_step(self):
        self.times.append(time.process_time())


def build_cfg(config_file: Path, output_dir: Path, opts: Sequence[str]) -> CfgNode:
    """The config of one run: CPU, no periodic evaluation or checkpointing."""
    return load_config(
        config_file,
        [
            "OUTPUT_DIR",
            str(output_dir),
            "MODEL.DEVICE",
            "cpu",
            "TEST.EVAL_PERIOD",
            "0",
            "SOLVER.CHECKPOINT_PERIOD",
            "100000000",
            *opts,
        ],
    )


def cpu_seconds_per_iter(config_file: Path, work_dir: Path) -> float:
    """CPU seconds of one training iteration of a config, measured on a few iterations."""
    cfg = build_cfg(config_file, work_dir, ["SOLVER.MAX_ITER", str(CALIBRATION_ITERS)])
    cfg.DATASETS.TEST = ()
    trainer = RVOSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    clock = _CpuClock()
    trainer.register_hooks([clock])
    trainer.train()
    return (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)


def train(config_file: Path, out: Path, budget_s: float | None) -> dict:
    """Trains one config within the budget (None: its own schedule); returns the run record."""
    base = load_config(config_file)
    rate = cpu_seconds_per_iter(config_file, out / "calibration")
    max_iter = base.SOLVER.MAX_ITER if budget_s is None else iterations_for_budget(budget_s, rate)
    cfg = build_cfg(config_file, out, scaled_schedule(base, max_iter))
    cfg.DATASETS.TEST = ()
    trainer = RVOSTrainer(cfg)
    trainer.resume_or_load(resume=True)
    start = time.process_time()
    trainer.train()
    return {
        "iterations": max_iter,
        "config_iterations": base.SOLVER.MAX_ITER,
        "cpu_seconds_per_iter": round(rate, 4),
        "train_cpu_seconds": round(time.process_time() - start, 1),
        "weights": str(out / "model_final.pth"),
    }


def frames_in(dataset_name: str) -> int:
    """Frames the model segments on a split (each (video, expression) pair counts its frames)."""
    return sum(len(record["file_names"]) for record in DatasetCatalog.get(dataset_name))


def evaluate(config_file: Path, weights: str, variant: Variant, split: str, out: Path) -> dict:
    """Metrics of one trained model (with the variant's overrides) on one split."""
    cfg = build_cfg(config_file, out, ["MODEL.WEIGHTS", weights, *variant.opts])
    cfg.DATASETS.TEST = (split,)
    model = build_model(cfg)
    RVOSCheckpointer(model).load(weights)
    model.eval()
    start = time.perf_counter()
    results = RVOSTrainer.test(cfg, model)
    results = results.get(split, results)["rvos"]  # detectron2 unwraps a single dataset
    seconds = time.perf_counter() - start
    row = {k: round(float(results[k]), 4) for k in METRICS if k in results}
    row["fps"] = round(frames_in(split) / seconds, 1)
    return row


def markdown(report: dict) -> str:
    """The leaderboard as a markdown table, one row per (method, variant)."""
    splits = report["splits"]
    short = {s: s.replace("rvos_synth_", "") for s in splits}
    head = ["method", "variant", "train iters", "train CPU min"]
    head += [f"{short[s]} J&F" for s in splits]
    head += [f"{short[splits[0]]} {m}" for m in ("J", "F", "prec@0.5", "JF_variance")]
    head += ["fps"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, entry in report["methods"].items():
        if "skipped" in entry:
            lines.append(f"| {method} | not ranked: {entry['skipped']} |" + " |" * (len(head) - 2))
            continue
        run = entry["train"]
        for variant, scores in entry.get("eval", {}).items():
            first = scores.get(splits[0], {})
            cells = [
                method,
                variant,
                str(run["iterations"]),
                f"{run['train_cpu_seconds'] / 60:.1f}",
            ]
            cells += [_fmt(scores.get(s, {}).get("JF")) for s in splits]
            cells += [_fmt(first.get(m)) for m in ("J", "F", "prec@0.5", "JF_variance")]
            cells += [_fmt(first.get("fps"), 1)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "output" / "leaderboard")
    parser.add_argument("--methods", nargs="*", help="config stems (default: every RVOS one)")
    parser.add_argument(
        "--budget-cpu-minutes",
        type=float,
        help=f"training budget per method (default: what {REFERENCE}'s schedule costs)",
    )
    parser.add_argument("--splits", nargs="*", default=list(SPLITS))
    parser.add_argument(
        "--propagation-weights", help="a trained STCN checkpoint for the '+ STCN' variants"
    )
    parser.add_argument(
        "--no-variants", action="store_true", help="evaluate each method's default only"
    )
    args = parser.parse_args(argv)
    setup_logger(name="rvos_d2")
    setup_logger()
    torch.manual_seed(0)

    ensure_synthetic_dataset()
    registered = set(DatasetCatalog.list())
    splits = [s for s in args.splits if s in registered]
    for name in sorted(set(args.splits) - set(splits)):
        logger.warning("split %s is not registered; left out", name)
    configs = ranked_configs(args.methods)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "leaderboard.json"
    report = json.loads(cache.read_text()) if cache.exists() else {"methods": {}}
    report["splits"] = splits

    def save() -> None:
        cache.write_text(json.dumps(report, indent=2))
        (out / "leaderboard.md").write_text(markdown(report))

    budget_s = None if args.budget_cpu_minutes is None else args.budget_cpu_minutes * 60
    report["budget_cpu_seconds"] = budget_s or report.get("budget_cpu_seconds")
    for method, config_file in configs.items():
        cfg = load_config(config_file)
        entry = report["methods"].setdefault(method, {})
        reason = missing_parts(cfg)
        if reason:
            entry.clear()
            entry["skipped"] = reason
            save()
            continue
        ensure_pretrained_backbone(cfg, config_file, PRETRAIN_ITERATIONS, [])
        if "train" not in entry:
            if report["budget_cpu_seconds"] is None:
                run = train(
                    configs.get(REFERENCE, CONFIG_DIR / f"{REFERENCE}.yaml"), out / REFERENCE, None
                )
                report["methods"].setdefault(REFERENCE, {})["train"] = run
                report["budget_cpu_seconds"] = run["train_cpu_seconds"]
                save()
            if "train" not in entry:
                entry["train"] = train(config_file, out / method, report["budget_cpu_seconds"])
            save()
        variants = [Variant(method, "default")]
        if not args.no_variants:
            variants = inference_variants(method, args.propagation_weights)
        for variant in variants:
            scores = entry.setdefault("eval", {}).setdefault(variant.name, {})
            for split in splits:
                if split not in scores:
                    scores[split] = evaluate(
                        config_file, entry["train"]["weights"], variant, split, out / method
                    )
                    save()
    save()
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

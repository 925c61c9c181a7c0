#!/usr/bin/env python
"""Ranks every RVOS method on the synthetic dataset under one CPU-time training budget.

Every `configs/Synthetic/*-tiny.yaml` whose meta-architecture is an RVOS one is trained with the
same budget of training-process CPU seconds: a few calibration iterations measure the CPU cost
of one iteration, and SOLVER.MAX_ITER is set so that training fits the budget (SOLVER.STEPS,
WARMUP_ITERS and other iteration counts scaled alike). The default budget is what
ReferFormer-tiny's own schedule (its MAX_ITER) costs at the calibrated rate. The shared backbone
pretraining (MODEL.WEIGHTS) is done once and not counted; TopDown's candidate model and
propagation network are trained inside its budget (a third each, the grounding model the last
third). Training and inference run single-threaded, so that CPU seconds count work and not
threads waiting for each other. Each trained model and each inference-only variant is evaluated
on the registered synthetic valid splits; the table (J, F, J&F, prec@0.5, temporal stability,
inference frames per second) is written as markdown and JSON. Every finished training and
evaluation is cached per method (`<output-dir>/<method>/result.json`), so a rerun resumes, and
several processes may run different --methods into one --output-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import rvos_d2  # noqa: F401  (registrations)
from rvos_d2.config import load_config
from rvos_d2.engine import RVOSTrainer
from rvos_d2.engine.checkpoint import RVOSCheckpointer, atomic_write, load_checkpoint_file
from rvos_d2.modeling.keyframe_candidates import register_frame_instances, resolve_candidate_config
from rvos_d2.modeling.meta_arch.base import RVOSMetaArch
from rvos_d2.modeling.meta_arch.topdown import TopDownRVOS, assemble_topdown_weights

from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer, HookBase
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.logger import setup_logger

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "Synthetic"
REFERENCE = "ReferFormer-tiny"
SPLITS = ("rvos_synth_valid", "rvos_synth_valid_motion", "rvos_synth_valid_unseen_phrasing")
CALIBRATION_ITERS = 6  # the first is a warm-up and is not timed
PRETRAIN_ITERATIONS = 1200
STCN_CONFIG = CONFIG_DIR / "STCN-tiny.yaml"
STCN_WEIGHTS = ROOT / "output" / "stcn_tiny_trained" / "model_final.pth"
METRICS = ("J", "F", "JF", "prec@0.5", "IoU_variance", "JF_variance", "candidate_recall@0.5")
# the first split's columns beside the J&Fs, with their headings
TABLE_METRICS = {
    "J": "J",
    "F": "F",
    "prec@0.5": "prec@0.5",
    "JF_variance": "JF var",
    "candidate_recall@0.5": "cand. recall",
}
# iteration counts of a schedule, compressed with SOLVER.MAX_ITER
SCHEDULE_KEYS = ("MODEL.PROPAGATION.BOOTSTRAP_START_WARM", "MODEL.PROPAGATION.BOOTSTRAP_END_WARM")
# the network's shape in MODEL.PROPAGATION: what a propagation checkpoint must match
PROPAGATION_SHAPE = (
    "NAME",
    "KEY_ENCODER_DEPTH",
    "VALUE_ENCODER_DEPTH",
    "ENCODER_WIDTH",
    "KEY_DIM",
    "VALUE_DIM",
    "DECODER_DIM",
)
# TopDown's candidate model: training-only settings on top of MODEL.TOPDOWN.CANDIDATES.OPTS
# (from scratch: every stage trained, batch norm; few sampled regions, as frames hold few objects)
CANDIDATE_TRAINING = (
    "MODEL.WEIGHTS", "",
    "MODEL.BACKBONE.FREEZE_AT", "0",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "200",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64",
    "INPUT.MASK_FORMAT", "bitmask",
    "INPUT.MIN_SIZE_TRAIN", "(160,)",
    "INPUT.MAX_SIZE_TRAIN", "160",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.BASE_LR", "0.005",
    "SOLVER.MAX_ITER", "1500",
    "SOLVER.STEPS", "(1200,)",
    "SOLVER.WARMUP_ITERS", "50",
    "SOLVER.CLIP_GRADIENTS.ENABLED", "True",
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "5.0",
)  # fmt: skip

logger = logging.getLogger("rvos_d2.leaderboard")


@dataclass(frozen=True)
class Variant:
    """One row of a method: config overrides at inference, or (retrain) a training ablation."""

    name: str
    opts: tuple[str, ...] = ()
    retrain: bool = False


DEFAULT = Variant("default")
# by meta-architecture: evaluations of the default model with other inference settings
INFERENCE_VARIANTS = {
    "URVOS": (Variant("3 iterations", ("MODEL.URVOS.INFERENCE_ITERATIONS", "3")),),
    "TopDownRVOS": (Variant("no tracklet-NMS", ("MODEL.TOPDOWN.NMS_THRESH", "1.0")),),
}
PROPAGATED = ("ReferFormer", "MLRL")
MLRL_LEVELS = ("video", "frame", "object")  # evaluated with TEST.PROPAGATION (STCN) too
# by meta-architecture: ablations that need their own training run (--variants all)
TRAINING_ABLATIONS = {
    "URVOS": (
        Variant("w/o cross-modal attention", ("MODEL.URVOS.CROSS_MODAL_ATTENTION", "False"), True),
        Variant("w/o memory attention", ("MODEL.URVOS.MEMORY_ATTENTION", "False"), True),
    ),
    "SOC": (
        # the VL loss contrasts the cluster's video queries with the text: it goes with them
        Variant(
            "w/o VOC (and VL loss)",
            ("MODEL.SOC.VOC.ENABLED", "False", "MODEL.SOC.CONTRASTIVE_WEIGHT", "0.0"),
            True,
        ),
        Variant("w/o VL loss", ("MODEL.SOC.CONTRASTIVE_WEIGHT", "0.0"), True),
        Variant("fusion l2v only", ("MODEL.SOC.FUSION", "l2v"), True),
        Variant("fusion v2l only", ("MODEL.SOC.FUSION", "v2l"), True),
        Variant("no fusion", ("MODEL.SOC.FUSION", "none"), True),
    ),
    "MLRL": tuple(
        Variant(
            f"w/o {level} level",
            ("MODEL.MLRL.LEVELS", str([k for k in MLRL_LEVELS if k != level])),
            True,
        )
        for level in MLRL_LEVELS
    ),
}


def propagation_variants(weights: Path = STCN_WEIGHTS) -> tuple[Variant, ...]:
    """TEST.PROPAGATION with a trained STCN checkpoint (its network shape read from the config
    saved beside it, else STCN-tiny.yaml), replacing the method's masks and averaged with them;
    none when the checkpoint does not exist."""
    if not weights.is_file():
        return ()
    saved = weights.parent / "config.yaml"
    network = load_config(saved if saved.is_file() else STCN_CONFIG).MODEL.PROPAGATION
    opts = ["TEST.PROPAGATION.NAME", "stcn", "TEST.PROPAGATION.WEIGHTS", str(weights)]
    for key in PROPAGATION_SHAPE:
        opts += [f"MODEL.PROPAGATION.{key}", str(network[key])]
    return (
        Variant("+ STCN propagation", (*opts, "TEST.PROPAGATION.FUSION", "replace")),
        Variant("+ STCN propagation, mean fusion", (*opts, "TEST.PROPAGATION.FUSION", "mean")),
    )


def variants_of(cfg: CfgNode, mode: str, propagation: Sequence[Variant] = ()) -> list[Variant]:
    """The rows of a method: its default, then inference-only variants ("inference"), then
    training ablations ("all")."""
    arch = cfg.MODEL.META_ARCHITECTURE
    variants = [DEFAULT]
    if mode in ("inference", "all"):
        variants += INFERENCE_VARIANTS.get(arch, ())
        if arch in PROPAGATED:
            variants += propagation
    if mode == "all":
        variants += TRAINING_ABLATIONS.get(arch, ())
    return variants


def is_ranked(cfg: CfgNode) -> bool:
    """An RVOS method: an RVOS meta-architecture evaluated by the `rvos` evaluator."""
    arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    tests = cfg.DATASETS.TEST
    return (
        isinstance(arch, type)
        and issubclass(arch, (RVOSMetaArch, TopDownRVOS))
        and bool(tests)
        and MetadataCatalog.get(tests[0]).get("evaluator_type") == "rvos"
    )


def ranked_configs(names: Sequence[str] | None = None) -> dict[str, Path]:
    """Synthetic configs of RVOS methods, by file stem (all, or the `names` asked for)."""
    configs = {
        p.stem: p for p in sorted(CONFIG_DIR.glob("*-tiny.yaml")) if is_ranked(load_config(p))
    }
    if names:
        unknown = sorted(set(names) - set(configs))
        if unknown:
            raise SystemExit(f"--methods: unknown {unknown}; choose among {sorted(configs)}")
        configs = {name: configs[name] for name in names}
    return configs


def ensure_dataset() -> None:
    """Writes the synthetic dataset under $DETECTRON2_DATASETS unless it is already there."""
    root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "rvos_synth"
    if not (root / "meta_expressions" / "train" / "meta_expressions.json").exists():
        script = ROOT / "tools" / "make_synthetic.py"
        subprocess.run([sys.executable, str(script), "--output", str(root)], check=True)


def pretrain_backbone(weights: str) -> dict[str, Any] | None:
    """Writes MODEL.WEIGHTS (the tiny backbone pretrained on the training videos' object
    attributes, configs/Synthetic/Attributes-tiny.yaml) when it is missing; returns the
    pretraining record the file holds."""
    if not weights:
        return None
    if not Path(weights).exists():
        script = ROOT / "tools" / "pretrain_backbone.py"
        args = ["--iterations", str(PRETRAIN_ITERATIONS), "--output", weights]
        subprocess.run([sys.executable, str(script), *args], check=True)
    if weights.endswith(".pkl"):
        return None
    return load_checkpoint_file(weights).get("pretraining")


def iterations_for_budget(budget_s: float, seconds_per_iter: float) -> int:
    """Training iterations that fit `budget_s` CPU seconds at the measured rate."""
    if seconds_per_iter <= 0 or not math.isfinite(seconds_per_iter):
        raise ValueError(f"seconds per iteration must be positive, got {seconds_per_iter}")
    return max(1, int(budget_s // seconds_per_iter))


def scaled_schedule(cfg: CfgNode, max_iter: int) -> list[str]:
    """Config overrides that run the config's schedule compressed into `max_iter` iterations."""
    ratio = max_iter / cfg.SOLVER.MAX_ITER
    steps = tuple(step for s in cfg.SOLVER.STEPS if 0 < (step := round(s * ratio)) < max_iter)
    warmup = min(max(1, round(cfg.SOLVER.WARMUP_ITERS * ratio)), max_iter)
    opts = ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", str(steps)]
    opts += ["SOLVER.WARMUP_ITERS", str(warmup)]
    for key in SCHEDULE_KEYS:
        value = _lookup(cfg, key)
        if isinstance(value, int) and not isinstance(value, bool):
            opts += [key, str(round(value * ratio))]
    return opts


def _lookup(cfg: CfgNode, key: str) -> Any:
    """The value of a dotted config key, or None when the config has no such key."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return None
        node = node[part]
    return node


class _CpuClock(HookBase):
    """Records the process CPU time after each iteration."""

    def __init__(self):
        self.times: list[float] = []

    def after_step(self):
        self.times.append(time.process_time())


def _run(cfg: CfgNode, trainer_cls: type, resume: bool, clock: _CpuClock | None = None) -> None:
    trainer = trainer_cls(cfg)
    trainer.resume_or_load(resume=resume)
    if clock is not None:
        trainer.register_hooks([clock])
    trainer.train()


def train_within_budget(cfg: CfgNode, trainer_cls: type, budget_s: float, out: Path) -> dict:
    """Trains `cfg` (with its schedule compressed to fit `budget_s` CPU seconds at a calibrated
    rate) into `out`; returns the run record."""
    calibration = cfg.clone()
    calibration.merge_from_list(["SOLVER.MAX_ITER", str(CALIBRATION_ITERS)])
    calibration.OUTPUT_DIR = str(out / "calibration")
    clock = _CpuClock()
    _run(calibration, trainer_cls, resume=False, clock=clock)
    rate = (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)
    max_iter = iterations_for_budget(budget_s, rate)
    run = cfg.clone()
    run.merge_from_list(scaled_schedule(cfg, max_iter))
    run.OUTPUT_DIR = str(out)
    start = time.process_time()
    _run(run, trainer_cls, resume=True)
    return {
        "iterations": max_iter,
        "config_iterations": cfg.SOLVER.MAX_ITER,
        "cpu_seconds_per_iter": round(rate, 4),
        "train_cpu_seconds": round(time.process_time() - start, 1),
        "weights": str(out / "model_final.pth"),
    }


def run_cfg(config_file: Path, out: Path, opts: Sequence[str] = ()) -> CfgNode:
    """A method's config for one run: CPU, no periodic evaluation or checkpoint, no test sets."""
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu", "TEST.EVAL_PERIOD", "0", *opts])
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    cfg.OUTPUT_DIR = str(out)
    cfg.DATASETS.TEST = ()
    return cfg


def candidate_cfg(topdown: CfgNode) -> CfgNode:
    """TopDown's (single) candidate model config, set up to train on the synthetic videos'
    per-frame object masks with detectron2's trainer."""
    cand = topdown.MODEL.TOPDOWN.CANDIDATES
    if len(cand.CONFIG_FILES) != 1:
        raise ValueError(
            f"MODEL.TOPDOWN.CANDIDATES.CONFIG_FILES: the leaderboard trains one candidate model, "
            f"got {len(cand.CONFIG_FILES)}"
        )
    cfg = get_cfg()
    cfg.merge_from_file(resolve_candidate_config(cand.CONFIG_FILES[0]))
    cfg.merge_from_list([*cand.OPTS[0], *CANDIDATE_TRAINING, "MODEL.DEVICE", "cpu"])
    cfg.DATASETS.TRAIN = (register_frame_instances("rvos_synth_vos_train"),)
    cfg.DATASETS.TEST = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9
    return cfg


def propagation_cfg(topdown: CfgNode, out: Path) -> CfgNode:
    """STCN-tiny's training recipe for the propagation network TopDown's config describes."""
    shape = topdown.MODEL.PROPAGATION
    opts = [
        x for key in PROPAGATION_SHAPE[1:] for x in (f"MODEL.PROPAGATION.{key}", str(shape[key]))
    ]
    return run_cfg(STCN_CONFIG, out, opts)


def train_topdown(topdown: CfgNode, budget_s: float, out: Path) -> dict:
    """TopDown within one budget: candidate model, propagation network and grounding model,
    a third each; the first two are assembled into the grounding run's MODEL.WEIGHTS."""
    parts = {
        "candidates": train_within_budget(
            candidate_cfg(topdown), DefaultTrainer, budget_s / 3, out / "candidates"
        ),
        "propagation": train_within_budget(
            propagation_cfg(topdown, out), RVOSTrainer, budget_s / 3, out / "propagation"
        ),
    }
    topdown.MODEL.TOPDOWN.CANDIDATES.WEIGHTS = [parts["candidates"]["weights"]]
    topdown.MODEL.TOPDOWN.PROPAGATION_WEIGHTS = parts["propagation"]["weights"]
    init = out / "init.pth"
    with atomic_write(init) as f:
        torch.save({"model": assemble_topdown_weights(topdown)}, f)
    topdown.MODEL.WEIGHTS = str(init)
    record = train_within_budget(topdown, RVOSTrainer, budget_s / 3, out / "grounding")
    record["parts"] = parts
    record["train_cpu_seconds"] = round(
        record["train_cpu_seconds"] + sum(p["train_cpu_seconds"] for p in parts.values()), 1
    )
    return record


def train_method(config_file: Path, variant: Variant, budget_s: float, out: Path) -> dict:
    """Trains a method (or a training ablation of it) within the budget."""
    cfg = run_cfg(config_file, out, variant.opts)
    if cfg.MODEL.META_ARCHITECTURE == "TopDownRVOS":
        return train_topdown(cfg, budget_s, out)
    return train_within_budget(cfg, RVOSTrainer, budget_s, out)


def frames_in(dataset_name: str) -> int:
    """Frames the model segments on a split (each (video, expression) pair counts its frames)."""
    return sum(len(record["file_names"]) for record in DatasetCatalog.get(dataset_name))


def evaluate(config_file: Path, weights: str, opts: Sequence[str], split: str, out: Path) -> dict:
    """Metrics of one trained model (with inference overrides `opts`) on one split, with its
    inference speed in frames per wall-clock second and per CPU second."""
    cfg = run_cfg(config_file, out, ["MODEL.WEIGHTS", weights, *opts])
    cfg.DATASETS.TEST = (split,)
    model = build_model(cfg)
    RVOSCheckpointer(model).load(weights)
    model.eval()
    wall, cpu = time.perf_counter(), time.process_time()
    results = RVOSTrainer.test(cfg, model)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    results = results.get(split, results)["rvos"]  # detectron2 unwraps a single dataset
    row = {k: round(float(results[k]), 4) for k in METRICS if k in results}
    frames = frames_in(split)
    row["fps"] = round(frames / wall, 1)
    row["frames_per_cpu_second"] = round(frames / cpu, 1)
    return row


def markdown(report: dict) -> str:
    """The leaderboard as a markdown table, one row per (method, variant)."""
    splits = report["splits"]
    short = {s: s.replace("rvos_synth_", "") for s in splits}
    head = ["method", "variant", "train iters", "train CPU min"]
    head += [f"{short[s]} J&F" for s in splits]
    head += [f"{short[splits[0]]} {m}" for m in TABLE_METRICS.values()]
    head += ["frames / CPU s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, entry in report["methods"].items():
        for name, row in entry.get("variants", {}).items():
            run = row.get("train") or entry["variants"]["default"].get("train", {})
            scores = row.get("eval", {})
            first = scores.get(splits[0], {})
            cells = [method, name, _iterations(run)]
            cells.append(_fmt(run["train_cpu_seconds"] / 60, 1) if run else "-")
            cells += [_fmt(scores.get(s, {}).get("JF")) for s in splits]
            cells += [_fmt(first.get(m)) for m in TABLE_METRICS]
            cells.append(_fmt(first.get("frames_per_cpu_second"), 1))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _iterations(run: dict) -> str:
    """Training iterations; TopDown's as candidates + propagation + grounding."""
    parts = [p["iterations"] for p in run.get("parts", {}).values()]
    return " + ".join(str(i) for i in [*parts, run.get("iterations", "-")])


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


class MethodRecord:
    """A method's cached results (`<out>/result.json`): one entry per variant with its training
    record (own training runs only) and its scores per split."""

    def __init__(self, out: Path):
        self.path = out / "result.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"variants": {}}

    def variant(self, name: str) -> dict:
        return self.data["variants"].setdefault(name, {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path, "w") as f:
            json.dump(self.data, f, indent=2)


def run_method(
    method: str,
    config_file: Path,
    variants: list[Variant],
    splits: list[str],
    budget_s: float,
    out: Path,
) -> dict:
    """Trains (unless cached) and evaluates every variant of one method; returns its record."""
    record = MethodRecord(out)
    for variant in variants:
        row = record.variant(variant.name)
        trained_by = variant if variant.retrain else DEFAULT
        run_dir = out if trained_by is DEFAULT else out / _slug(variant.name)
        source = record.variant(trained_by.name)
        if "train" not in source:
            source["train"] = train_method(config_file, trained_by, budget_s, run_dir)
            record.save()
        opts = variant.opts
        for split in splits:
            if split not in row.setdefault("eval", {}):
                weights = source["train"]["weights"]
                row["eval"][split] = evaluate(config_file, weights, opts, split, run_dir)
                record.save()
    return record.data


def default_budget(out: Path) -> dict:
    """The CPU seconds of ReferFormer-tiny's own schedule: its MAX_ITER at the calibrated rate
    (cached in `<out>/budget.json`)."""
    path = out / "budget.json"
    if path.exists():
        return json.loads(path.read_text())
    config_file = CONFIG_DIR / f"{REFERENCE}.yaml"
    cfg = run_cfg(config_file, out / REFERENCE / "calibration")
    pretrain_backbone(cfg.MODEL.WEIGHTS)
    calibration = cfg.clone()
    calibration.merge_from_list(["SOLVER.MAX_ITER", str(CALIBRATION_ITERS)])
    clock = _CpuClock()
    _run(calibration, RVOSTrainer, resume=False, clock=clock)
    rate = (clock.times[-1] - clock.times[0]) / (len(clock.times) - 1)
    budget = {
        "cpu_seconds": round(rate * cfg.SOLVER.MAX_ITER, 1),
        "source": f"{REFERENCE}: {cfg.SOLVER.MAX_ITER} iterations x {rate:.3f} CPU s (calibrated)",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(budget, indent=2))
    return budget


def collect(out: Path, configs: dict[str, Path]) -> dict[str, dict]:
    """Cached results of every method in `out` (also those another process ran)."""
    methods = {}
    for method in sorted(set(configs) | {p.parent.name for p in out.glob("*/result.json")}):
        path = out / method / "result.json"
        if path.exists():
            methods[method] = json.loads(path.read_text())
    return methods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "output" / "leaderboard")
    parser.add_argument("--methods", nargs="*", help="config stems (default: every RVOS one)")
    parser.add_argument(
        "--budget-cpu-minutes",
        type=float,
        help=f"training CPU budget per method (default: what {REFERENCE}'s schedule costs)",
    )
    parser.add_argument("--splits", nargs="*", default=list(SPLITS))
    parser.add_argument(
        "--variants",
        choices=("none", "inference", "all"),
        default="inference",
        help="none: each method's default only; inference: also inference-only variants; "
        "all: also training ablations (each trained with the same budget)",
    )
    args = parser.parse_args(argv)
    if args.budget_cpu_minutes is not None and args.budget_cpu_minutes <= 0:
        parser.error(f"--budget-cpu-minutes {args.budget_cpu_minutes}: expected a positive number")
    setup_logger(name="rvos_d2")
    setup_logger()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    ensure_dataset()
    registered = set(DatasetCatalog.list())
    splits = [s for s in args.splits if s in registered]
    missing = sorted(set(args.splits) - set(splits))
    for name in missing:
        logger.warning("split %s is not registered; left out", name)
    if not splits:
        parser.error(f"--splits: none of {args.splits} is registered")
    configs = ranked_configs(args.methods)
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    if args.budget_cpu_minutes is None:
        budget = default_budget(out)
    else:
        budget = {"cpu_seconds": args.budget_cpu_minutes * 60, "source": "--budget-cpu-minutes"}
    propagation = propagation_variants()
    if not propagation:
        logger.warning("no %s: the '+ STCN propagation' variants are left out", STCN_WEIGHTS)

    pretraining = {}
    for method, config_file in configs.items():
        cfg = load_config(config_file)
        record = pretrain_backbone(cfg.MODEL.WEIGHTS)
        if record is not None:
            pretraining[cfg.MODEL.WEIGHTS] = record
        variants = variants_of(cfg, args.variants, propagation)
        run_method(method, config_file, variants, splits, budget["cpu_seconds"], out / method)

    report = {
        "budget_cpu_seconds": budget["cpu_seconds"],
        "budget_source": budget["source"],
        "splits": splits,
        "missing_splits": missing,
        "pretraining": pretraining,
        "threads": torch.get_num_threads(),
        "methods": collect(out, configs),
    }
    (out / "leaderboard.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (out / "leaderboard.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

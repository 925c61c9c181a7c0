#!/usr/bin/env python
"""The embedded default job behind `make demo`: synthetic data -> train -> evaluate -> overlay.

In one process: generates the synthetic RVOS dataset under $DETECTRON2_DATASETS/rvos_synth when
absent, pretrains the backbone named by MODEL.WEIGHTS on the training videos' object attributes
with configs/Synthetic/Attributes-tiny.yaml when that file is absent (as
tools/pretrain_backbone.py does), trains
configs/Synthetic/ReferFormer-tiny.yaml on the CPU (resuming an interrupted run), evaluates the
valid splits, writes an overlay video of one validation video, and prints as its last line one
JSON object:
{"rvos_synth_valid": {"J", "F", "JF"}, "rvos_synth_valid_motion": {...},
"rvos_synth_valid_unseen_phrasing": {...}, "seconds"}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

import rvos_d2  # noqa: F401  (shims, registrations)
from rvos_d2.config import load_config
from rvos_d2.data.mappers import RVOSDatasetMapper
from rvos_d2.data.prepare.synthetic import DEFAULT_VIDEOS, generate_dataset
from rvos_d2.engine import RVOSTrainer
from rvos_d2.engine.attribute_pretraining import (
    attribute_config,
    pretrain_backbone,
    pretraining_record,
    read_pretraining_record,
)
from rvos_d2.utils.video_io import read_video_frames, write_overlay_video

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

logger = logging.getLogger("rvos_d2.main_job")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml"
SPLITS = ("rvos_synth_valid", "rvos_synth_valid_motion", "rvos_synth_valid_unseen_phrasing")
PRETRAIN_CONFIG = ROOT / "configs" / "Synthetic" / "Attributes-tiny.yaml"
CHECKED_PRETRAINING = ("attributes", "iterations")  # a reused MODEL.WEIGHTS must match these


def ensure_synthetic_dataset() -> Path:
    """Writes the synthetic dataset with the generator's defaults unless it is already there."""
    root = Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "rvos_synth"
    if not (root / "meta_expressions" / "train" / "meta_expressions.json").exists():
        shutil.rmtree(root, ignore_errors=True)  # an interrupted generation
        logger.info("writing the synthetic dataset to %s", root)
        generate_dataset(root, DEFAULT_VIDEOS)
    return root


def pretraining_mismatch(weights: str, pretrain_cfg: CfgNode) -> str | None:
    """Why an existing MODEL.WEIGHTS file is not what this job would pretrain with `pretrain_cfg`
    (its recorded attributes or iterations differ, or it records none), or None when it
    matches."""
    record = read_pretraining_record(weights)
    if record is None:
        return "it records no pretraining settings (written by another tool or an older version)"
    wanted = {k: pretraining_record(pretrain_cfg)[k] for k in CHECKED_PRETRAINING}
    differing = [
        f"{k} {record.get(k)} (this job: {v})" for k, v in wanted.items() if record.get(k) != v
    ]
    return "it was pretrained with " + ", ".join(differing) if differing else None


def ensure_pretrained_backbone(cfg: CfgNode, iterations: int) -> None:
    """Pretrains the backbone into MODEL.WEIGHTS (`pretrain_backbone` with PRETRAIN_CONFIG for
    `iterations`, on the device of `cfg`) when it names a missing file; the trainer logs its
    attribute accuracy on the valid split. An existing file is used as it is, with a warning
    when it was not pretrained as this job would pretrain it."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        return
    opts = ["SOLVER.MAX_ITER", str(iterations), "MODEL.DEVICE", cfg.MODEL.DEVICE]
    pretrain_cfg = attribute_config(PRETRAIN_CONFIG, weights, opts)
    if Path(weights).exists():
        mismatch = pretraining_mismatch(weights, pretrain_cfg)
        if mismatch:
            print(
                f"warning: using MODEL.WEIGHTS {weights} as it is, although {mismatch}; "
                "delete it to pretrain again",
                file=sys.stderr,
            )
        return
    pretrain_backbone(pretrain_cfg, weights)  # on the dataset that main() ensures


def build_cfg(config_file: Path, output_dir: Path, opts: list[str]) -> CfgNode:
    """The job's config: the valid splits are evaluated once, after training."""
    cfg = load_config(config_file, ["OUTPUT_DIR", str(output_dir), "MODEL.DEVICE", "cpu", *opts])
    cfg.DATASETS.TEST = SPLITS
    cfg.freeze()
    return cfg


@torch.no_grad()
def write_overlay(cfg: CfgNode, model: torch.nn.Module, dataset_name: str, path: Path) -> Path:
    """Segments the first video/expression of `dataset_name` and writes its overlay video."""
    record = DatasetCatalog.get(dataset_name)[0]
    model_input = RVOSDatasetMapper(cfg, is_train=False)(record)
    masks = model.eval()([model_input])[0]["pred_masks"].numpy() >= 0.5
    frames, _ = read_video_frames(Path(record["file_names"][0]).parent)
    frames = [frames[i] for i in model_input["frame_ids"]]
    print(f"overlay: {record['video_id']} {record['expression']!r} -> {path}", file=sys.stderr)
    return write_overlay_video(frames, masks, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--output-dir", type=Path, default=ROOT / "output" / "main_job")
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="ignore checkpoints of an earlier run in --output-dir",
    )
    parser.add_argument(
        "--pretrain-iterations",
        type=int,
        default=1200,
        help="backbone pretraining iterations when MODEL.WEIGHTS is missing",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    setup_logger(name="rvos_d2")  # progress of the generation and the pretraining

    ensure_synthetic_dataset()
    cfg = build_cfg(args.config_file, args.output_dir, args.opts)
    ensure_pretrained_backbone(cfg, args.pretrain_iterations)
    default_setup(cfg, argparse.Namespace(config_file=str(args.config_file), eval_only=False))
    train_cfg = cfg.clone()
    train_cfg.defrost()
    train_cfg.DATASETS.TEST = ()  # evaluated below, once
    trainer = RVOSTrainer(train_cfg)
    trainer.resume_or_load(resume=not args.from_scratch)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    results = RVOSTrainer.test(cfg, model)
    write_overlay(cfg, model, SPLITS[0], args.output_dir / "overlay_valid.mp4")

    summary: dict = {}
    for name in SPLITS:
        metrics = results[name]["rvos"]
        summary[name] = {k: round(float(metrics[k]), 4) for k in ("J", "F", "JF")}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    (args.output_dir / "main_job.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)
    return 0 if all(np.isfinite(summary[n]["JF"]) for n in SPLITS) else 1


if __name__ == "__main__":
    sys.exit(main())

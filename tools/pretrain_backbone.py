#!/usr/bin/env python
"""Pretrains a config's backbone on per-pixel object attributes and writes its weights.

    python tools/pretrain_backbone.py --config-file configs/Synthetic/ReferFormer-tiny.yaml \\
        --attributes category,colour,size --output output/pretrain/backbone.pth

The backbone (MODEL.BACKBONE of the config) learns to classify, at every pixel, the attributes
that <dataset-root>/<split>/meta.json records for each object. The output file loads with
MODEL.WEIGHTS (keys "backbone.*") and records the pretraining settings under "pretraining".
The last line printed is one JSON object: {"output", "seconds", "last"} (the last log entry:
iteration, loss, foreground accuracy per attribute, and with --eval-split the held-out split's
foreground accuracy as "heldout_fg_accuracy").
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import rvos_d2  # noqa: F401  (shims before any detectron2 submodule; registrations)
from rvos_d2.config import load_config
from rvos_d2.engine.attribute_pretraining import pretrain_config_backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", type=Path, required=True)
    parser.add_argument(
        "--dataset-root",
        type=Path,
        default=Path(os.environ.get("DETECTRON2_DATASETS", "datasets")) / "rvos_synth",
        help="Ref-YouTube-VOS style root holding <split>/meta.json, JPEGImages, Annotations",
    )
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--eval-split",
        help="a held-out split (e.g. valid) whose foreground accuracy is reported after training",
    )
    parser.add_argument(
        "--attributes", default="category", help="comma-separated meta.json object keys to classify"
    )
    parser.add_argument("--size", type=int, help="square frame size (default INPUT.MIN_SIZE_TEST)")
    parser.add_argument("--iterations", type=int, default=1200)
    parser.add_argument("--clips-per-batch", type=int, default=6)
    parser.add_argument(
        "--frames-per-clip",
        type=int,
        help="video backbones only (default INPUT.SAMPLING_FRAME_NUM)",
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-period", type=int, default=50)
    parser.add_argument("--output", type=Path, required=True, help=".pth file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    if not attributes:
        parser.error(f"--attributes {args.attributes!r}: name at least one attribute")
    if args.iterations < 1:
        parser.error(f"--iterations {args.iterations}: expected at least 1")
    start = time.perf_counter()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    log = pretrain_config_backbone(
        cfg,
        args.dataset_root,
        attributes,
        args.output,
        split=args.split,
        eval_split=args.eval_split,
        size=args.size,
        iterations=args.iterations,
        clips_per_batch=args.clips_per_batch,
        frames_per_clip=args.frames_per_clip,
        lr=args.lr,
        seed=args.seed,
        log_period=args.log_period,
    )
    summary = {
        "output": str(args.output),
        "seconds": round(time.perf_counter() - start, 1),
        "last": log[-1],
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

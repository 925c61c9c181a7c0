#!/usr/bin/env python
"""Pretrains a backbone on per-pixel object attributes and writes its weights for MODEL.WEIGHTS.

    python tools/pretrain_backbone.py --config-file configs/Synthetic/Attributes-tiny.yaml \\
        --output output/tiny_backbone/attributes.pth

Trains the config's DenseAttributeClassifier with the ordinary trainer (checkpoints, metrics
and evaluation in the folder named like --output without .pth), evaluates its DATASETS.TEST,
and writes the backbone's weights (keys "backbone.*") with the recipe under "pretraining"
(rvos_d2.engine.attribute_pretraining). The last line printed is one JSON object:
{"output", "seconds", "results"} (per test dataset, the foreground accuracy per attribute).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import rvos_d2  # noqa: F401  (shims before any detectron2 submodule; registrations)
from rvos_d2.engine.attribute_pretraining import attribute_config, pretrain_backbone

from detectron2.utils.logger import setup_logger

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config-file", type=Path, default=ROOT / "configs" / "Synthetic" / "Attributes-tiny.yaml"
    )
    parser.add_argument("--output", type=Path, required=True, help=".pth file to write")
    parser.add_argument("--iterations", type=int, help="SOLVER.MAX_ITER (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.iterations is not None and args.iterations < 1:
        parser.error(f"--iterations {args.iterations}: expected at least 1")
    start = time.perf_counter()
    setup_logger(name="rvos_d2")
    opts = list(args.opts)
    if args.iterations is not None:
        opts += ["SOLVER.MAX_ITER", str(args.iterations)]
    cfg = attribute_config(args.config_file, args.output, opts)
    cfg.freeze()
    results = pretrain_backbone(cfg, args.output, resume=args.resume)
    summary = {
        "output": str(args.output),
        "seconds": round(time.perf_counter() - start, 1),
        "results": results,
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

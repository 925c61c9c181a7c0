"""Command-line parsing and config setup shared by rvos_d2's tools."""

from __future__ import annotations

import argparse

import torch

from rvos_d2.config import load_config

from detectron2.config import CfgNode
from detectron2.engine import default_argument_parser, default_setup

__all__ = ["argument_parser", "setup"]

_EPILOG = """
Examples:
  one process:          %(prog)s --config-file cfg.yaml
  4 GPUs:               %(prog)s --config-file cfg.yaml --num-gpus 4
  resume the last run:  %(prog)s --config-file cfg.yaml --resume
  evaluate weights:     %(prog)s --config-file cfg.yaml --eval-only MODEL.WEIGHTS model.pth
  override options:     %(prog)s --config-file cfg.yaml SOLVER.BASE_LR 1e-4 OUTPUT_DIR out/
  two machines:         (machine 0) %(prog)s --num-machines 2 --machine-rank 0 --dist-url URL ...
                        (machine 1) %(prog)s --num-machines 2 --machine-rank 1 --dist-url URL ...

On a machine without CUDA, --num-gpus N starts N worker processes that train on the CPU with
torch.distributed's gloo backend (add MODEL.DEVICE cpu); SOLVER.IMS_PER_BATCH is split among them.
"""


def argument_parser() -> argparse.ArgumentParser:
    """detectron2's default arguments (config, resume, eval-only, distributed launch, opts)."""
    return default_argument_parser(epilog=_EPILOG)


def _check_device(cfg: CfgNode) -> None:
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"MODEL.DEVICE={cfg.MODEL.DEVICE!r} but CUDA is not available on this machine; "
            "add 'MODEL.DEVICE cpu' to the command line or the config"
        )


def setup(args: argparse.Namespace) -> CfgNode:
    """Builds the frozen config (defaults + rvos_d2 keys + file + opts) and runs default_setup."""
    cfg = load_config(args.config_file, args.opts or [])
    _check_device(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg

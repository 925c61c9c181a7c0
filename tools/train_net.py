#!/usr/bin/env python
"""Trains or evaluates an rvos_d2 model from a config: the project's training entry point.

See `--help` for the flags (detectron2's usual ones); without CUDA, `--num-gpus N` runs N
CPU worker processes. Importing rvos_d2 first applies its detectron2 shims and registrations.
Bad input (config file or key, dataset name, MODEL.WEIGHTS file) is reported on one line before
any worker starts, with exit code 2.
"""

import os
import sys

from rvos_d2.engine import RVOSTrainer, argument_parser, evaluate, launch, setup
from rvos_d2.engine.checkpoint import check_checkpoint_file
from rvos_d2.utils.cli import check_dataset_names, load_config, run_cli


def main(args):
    """Runs in every worker process: evaluation only, or training (optionally resumed)."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    trainer = RVOSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def check_inputs(args) -> None:
    """Raises a UserError for a bad config, dataset name or MODEL.WEIGHTS file."""
    cfg = load_config(args.config_file, args.opts or [])
    check_dataset_names(cfg)
    resuming = args.resume and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))
    if cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS and not resuming:
        check_checkpoint_file(cfg.MODEL.WEIGHTS)


def cli(argv=None) -> None:
    args = argument_parser().parse_args(argv)
    check_inputs(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    sys.exit(run_cli(cli))

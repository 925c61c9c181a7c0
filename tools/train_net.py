#!/usr/bin/env python
"""Trains or evaluates an rvos_d2 model from a config: the project's training entry point.

See `--help` for the flags (detectron2's usual ones); without CUDA, `--num-gpus N` runs N
CPU worker processes. Importing rvos_d2 first applies its detectron2 shims and registrations.
"""

from rvos_d2.engine import RVOSTrainer, argument_parser, evaluate, launch, setup


def main(args):
    """Runs in every worker process: evaluation only, or training (optionally resumed)."""
    cfg = setup(args)
    if args.eval_only:
        return evaluate(cfg, resume=args.resume)
    trainer = RVOSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def cli() -> None:
    args = argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    cli()

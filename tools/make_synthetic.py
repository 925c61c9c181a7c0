#!/usr/bin/env python
"""Generates the synthetic RVOS dataset (Ref-YouTube-VOS layout) and prints its statistics.

    python tools/make_synthetic.py --output datasets/rvos_synth

The output is registered as rvos_synth_{train,valid,valid_motion,valid_unseen_phrasing} when it
sits at $DETECTRON2_DATASETS/rvos_synth. The same seed and options always give the same files.
"""

import argparse
import shutil
import time
from pathlib import Path

import rvos_d2  # noqa: F401  (detectron2 shims before any detectron2 submodule)
from rvos_d2.data.prepare.synthetic import DEFAULT_VIDEOS, EXPRESSION_TYPES, generate_dataset


def parse_size(text: str) -> tuple[int, int]:
    """ "96" -> (96, 96); "64x128" -> (height 64, width 128)."""
    parts = text.lower().split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 32:
        raise argparse.ArgumentTypeError(f"--size {text!r}: expected S or HxW, each >= 32")
    return size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="dataset root to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frames", type=int, default=12, help="frames per video")
    parser.add_argument("--size", type=parse_size, default=(96, 96), help="S or HxW pixels")
    parser.add_argument("--num-train", type=int, default=DEFAULT_VIDEOS["train"])
    parser.add_argument("--num-valid", type=int, default=DEFAULT_VIDEOS["valid"])
    parser.add_argument("--num-valid-motion", type=int, default=DEFAULT_VIDEOS["valid_motion"])
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)

    output = Path(args.output)
    if output.exists() and any(output.iterdir()):
        if not args.overwrite:
            parser.error(f"--output {output} exists and is not empty (pass --overwrite)")
        shutil.rmtree(output)
    counts = {
        "train": args.num_train,
        "valid": args.num_valid,
        "valid_motion": args.num_valid_motion,
        "valid_unseen_phrasing": args.num_valid,  # the valid videos, reworded
    }
    height, width = args.size
    start = time.perf_counter()
    stats = generate_dataset(output, counts, args.seed, args.frames, height, width)
    elapsed = time.perf_counter() - start
    print(f"wrote {output} in {elapsed:.1f}s ({args.frames} frames of {height}x{width})")
    name_width = max(map(len, stats))
    for split, s in stats.items():
        kinds = ", ".join(f"{k} {s[f'expressions_{k}']}" for k in EXPRESSION_TYPES)
        absent = s["target_absent_frames"] / max(1, s["target_frames"])
        print(
            f"  {split:{name_width}s} {s['videos']:4d} videos {s['expressions']:5d} expressions "
            f"({kinds}); target absent in {100 * absent:.1f}% of frames"
        )


if __name__ == "__main__":
    main()

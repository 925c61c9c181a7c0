#!/usr/bin/env python
"""Opens every frame and annotation of a registered dataset split and lists every problem.

    python tools/check_dataset.py ref_davis_valid [--workers 8]

Frames must decode completely (no truncated or corrupt image) at the size the dataset records;
each annotation must decode with its mask reader at the frame size. One line per problem,
`PATH: what is wrong`, on stdout; exit code 1 if there is any, 0 if none, 2 for an unknown name.
Files are checked in parallel processes (one per core by default) behind a progress bar.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import tqdm

import rvos_d2  # noqa: F401  (shims, dataset registrations)
from rvos_d2.data.mask_io import MASK_READER_REGISTRY
from rvos_d2.utils.cli import InputError, check_dataset_name, run_cli
from rvos_d2.utils.image_io import read_image

from detectron2.data import DatasetCatalog

# A check: (kind "frame" or "mask", path shown in reports, payload, (height, width) or None).
Check = tuple[str, str, Any, Any]


def _size(record: dict[str, Any]) -> tuple[int, int] | None:
    height, width = record.get("height"), record.get("width")
    return None if height is None or width is None else (int(height), int(width))


def collect_checks(records: Iterable[dict[str, Any]]) -> tuple[list[Check], list[str]]:
    """The distinct frame and annotation checks of a dataset's dicts, and the problems that the
    dicts themselves show (no frames, annotation count differing from the frame count)."""
    checks: dict[tuple, Check] = {}
    problems = []
    for record in records:
        label = f"video {record.get('video_id')!r} expression {record.get('exp_id')!r}"
        files = record.get("file_names") or []
        if not files:
            problems.append(f"{record.get('dataset_name', '<dataset>')} {label}: no frames")
        size = _size(record)
        for path in files:
            checks.setdefault(("frame", path), ("frame", path, None, size))
        annotations = record.get("mask_annotations")
        if annotations is None:
            continue
        if len(annotations) != len(files):
            problems.append(
                f"{files[0] if files else label}: {label} has {len(annotations)} mask "
                f"annotations for {len(files)} frames"
            )
        obj_ids = list(record.get("obj_ids") or [])
        for frame, ann in zip(files, annotations):
            if ann is None:
                continue
            shown = ann.get("file", frame)
            key = ("mask", json.dumps(ann, sort_keys=True, default=str), tuple(obj_ids))
            checks.setdefault(key, ("mask", shown, (ann, obj_ids), size))
    return list(checks.values()), problems


def _size_problem(path: str, shape: tuple[int, ...], size: tuple[int, int] | None) -> list[str]:
    if size is not None and tuple(shape[:2]) != size:
        return [f"{path}: size {tuple(shape[:2])} (h, w) but the dataset records {size}"]
    return []


def run_check(check: Check) -> list[str]:
    """Problems found by one check (an empty list when the file is fine)."""
    kind, path, payload, size = check
    try:
        if kind == "frame":
            return _size_problem(path, read_image(path, format="RGB").shape, size)
        ann, obj_ids = payload
        if "file" in ann:
            read_image(ann["file"], format="L")  # complete and decodable
        mask = MASK_READER_REGISTRY.get(ann["type"])(ann, obj_ids)
        return _size_problem(path, mask.shape, size)
    except FileNotFoundError:
        return [f"{path}: missing"]
    except Exception as err:  # every failure to read is a problem to report, not a crash
        message = " ".join(str(err).split())
        return [message if message.startswith(path) else f"{path}: {message}"]


def check_dataset(name: str, workers: int, progress: bool = True) -> list[str]:
    """Every problem of the registered dataset `name`, one line each, in a stable order."""
    try:
        records = DatasetCatalog.get(name)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"cannot load dataset {name!r}: {err}") from err
    checks, problems = collect_checks(records)
    bar = tqdm.tqdm(
        total=len(checks), desc=name, unit="file", disable=not progress, file=sys.stderr
    )
    if workers <= 1:
        results = map(run_check, checks)
    else:
        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(run_check, checks, chunksize=max(1, len(checks) // (workers * 8)))
    try:
        for found in results:
            problems += found
            bar.update()
    finally:
        bar.close()
        if workers > 1:
            pool.shutdown()
    return sorted(set(problems))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", help="registered dataset name, e.g. ref_ytvos_train")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="parallel processes"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = get_parser().parse_args(argv)
    check_dataset_name(args.dataset)
    problems = check_dataset(args.dataset, args.workers, progress=not args.no_progress)
    for line in problems:
        print(line)
    print(f"{args.dataset}: {len(problems)} problems", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(run_cli(main))

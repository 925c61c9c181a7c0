"""Converts DAVIS-2017 + the Ref-DAVIS17 expressions into the Ref-YouTube-VOS layout.

    python tools/convert_davis_to_ytvos.py --davis-root datasets/ref-davis

reads `<davis-root>/DAVIS/` and `<davis-root>/davis_text_annotations/` and writes
`{train,valid}/`, `meta_expressions/` under `--output` (default: the davis root), which is
what the registered `ref_davis_train` / `ref_davis_valid` read. Frame and mask folders are
linked, not copied, unless `--copy` is given.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rvos_d2.data.prepare.davis import convert_davis_to_ytvos


def main(argv: list[str] | None = None) -> dict[str, int]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--davis-root",
        type=Path,
        required=True,
        help="folder holding DAVIS/ and davis_text_annotations/",
    )
    parser.add_argument(
        "--output", type=Path, default=None, help="output folder (default: --davis-root)"
    )
    parser.add_argument(
        "--annotations",
        default="Annotations",
        choices=("Annotations", "Annotations_unsupervised"),
        help="DAVIS mask folder holding the object ids of the expressions",
    )
    parser.add_argument("--resolution", default="480p", help="DAVIS resolution folder")
    parser.add_argument("--copy", action="store_true", help="copy folders instead of linking")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    counts = convert_davis_to_ytvos(
        args.davis_root,
        args.output or args.davis_root,
        annotations=args.annotations,
        resolution=args.resolution,
        copy=args.copy,
    )
    for split, n in counts.items():
        logging.info(f"Ref-DAVIS {split}: {n} expressions written")
    return counts


if __name__ == "__main__":
    main()

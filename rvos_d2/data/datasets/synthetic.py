"""Registration of the synthetic referring-video dataset (`rvos_synth_*`).

The data is written by tools/make_synthetic.py (generator: rvos_d2.data.prepare.synthetic) in
the Ref-YouTube-VOS release layout and read by the same loader. Splits: `train`, `valid`,
`valid_motion` (only motion expressions whose target has an identical twin) and
`valid_unseen_phrasing` (the videos and targets of `valid`, phrased with wordings that no
training expression uses).
"""

from __future__ import annotations

import os
from pathlib import Path

from rvos_d2.data.datasets.ref_ytvos import load_ref_ytvos
from rvos_d2.data.datasets.registration import register_replacing, require_dir, resolve_root

SPLITS = ("train", "valid", "valid_motion", "valid_unseen_phrasing")


def load_synthetic(root: str, split: str, dataset_name: str) -> list[dict]:
    """Dataset dicts of one split; a missing root names the command that generates it."""
    require_dir(
        Path(root),
        f"dataset {dataset_name} root",
        f"generate it with: python tools/make_synthetic.py --output {root}",
    )
    return load_ref_ytvos(root, split, dataset_name, has_masks=True)


def register_synthetic(
    root: str | os.PathLike | None = None, prefix: str = "rvos_synth"
) -> list[str]:
    """Registers `<prefix>_<split>` for every split read from `root`; returns the names.

    Nothing is read until a dataset is loaded; names registered before are replaced. A None root
    is `$DETECTRON2_DATASETS/rvos_synth`, resolved when a split is loaded.
    """
    root = None if root is None else str(root)
    names = []
    for split in SPLITS:
        name = f"{prefix}_{split}"
        register_replacing(
            name,
            lambda split=split, name=name: load_synthetic(
                resolve_root(root, "rvos_synth"), split, name
            ),
            evaluator_type="rvos",
            dataset_root=root,
            split=split,
            has_masks=True,
        )
        names.append(name)
    return names


register_synthetic()

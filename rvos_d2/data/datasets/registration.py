"""Shared helpers for dataset modules: the datasets root, lazy registration, input checks and
the one builder of RVOS dataset records.

Registration never touches the disk: the root is resolved and files are read only when
`DatasetCatalog.get(name)` calls the loader, so `import rvos_d2` stays fast and a missing
dataset only fails when it is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog


def datasets_root() -> Path:
    """The folder holding every dataset: `$DETECTRON2_DATASETS`, default `datasets`."""
    return Path(os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets")))


def resolve_root(root: str | os.PathLike | None, folder: str) -> str:
    """`root` itself, or for None `<datasets root>/<folder>`; call it when loading, so the
    environment at load time decides, as for every other dataset."""
    return str(datasets_root() / folder) if root is None else str(root)


def register_lazy(name: str, loader: Callable[[], list[dict]], **metadata: Any) -> None:
    """Registers `loader` and metadata under `name`; nothing is read until the dataset is used."""
    DatasetCatalog.register(name, loader)
    MetadataCatalog.get(name).set(**metadata)


def register_replacing(name: str, loader: Callable[[], list[dict]], **metadata: Any) -> None:
    """`register_lazy`, first dropping an earlier registration of `name` (to point it elsewhere)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_lazy(name, loader, **metadata)


def require_dir(path: Path, what: str, hint: str = "") -> Path:
    """Returns `path` if it is a folder, else raises FileNotFoundError naming it and `what`."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a folder{_hint(hint)}")
    return path


def require_file(path: Path, what: str, hint: str = "") -> Path:
    """Returns `path` if it is a file, else raises FileNotFoundError naming it and `what`."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}{_hint(hint)}")
    return path


def _hint(hint: str) -> str:
    return f" ({hint})" if hint else ""


def clean_expression(text: str, where: str) -> str:
    """Collapses whitespace; raises ValueError naming `where` when nothing is left."""
    cleaned = " ".join(str(text).split())
    if not cleaned:
        raise ValueError(f"{where}: empty referring expression")
    return cleaned


def rvos_record(
    *,
    dataset_name: str,
    video_id: str,
    exp_id: str,
    expression: str,
    file_names: list[str],
    frame_names: list[str],
    height: int | None,
    width: int | None,
    obj_ids: list[int] = (),
    mask_annotations: list[dict[str, Any] | None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One RVOS dataset dict (a video or image and one expression), the format every mapper
    and evaluator reads. `mask_annotations` (one entry per frame, None where unannotated; see
    rvos_d2.data.mask_io) is given for splits with masks; `extra` keys are kept as they are."""
    if len(frame_names) != len(file_names):
        raise ValueError(
            f"{dataset_name} video {video_id}: {len(file_names)} frames but "
            f"{len(frame_names)} frame names"
        )
    record = {
        "dataset_name": dataset_name,
        "video_id": video_id,
        "exp_id": exp_id,
        "expression": expression,
        "file_names": [str(f) for f in file_names],
        "frame_names": list(frame_names),
        "height": height,
        "width": width,
        "length": len(file_names),
        "has_masks": mask_annotations is not None,
        "obj_ids": list(obj_ids),
        **extra,
    }
    if mask_annotations is not None:
        if len(mask_annotations) != len(file_names):
            raise ValueError(
                f"{dataset_name} video {video_id}: {len(mask_annotations)} mask annotations "
                f"for {len(file_names)} frames"
            )
        record["mask_annotations"] = list(mask_annotations)
    return record

"""Shared helpers for dataset modules: the datasets root, lazy registration and input checks.

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

"""Checkpoint files: safe loading, atomic writing, and resuming past a damaged checkpoint.

Loads cannot run code stored in the (possibly untrusted) file: PyTorch files are read with
``torch.load(weights_only=True)``, allowing numpy arrays and scalars as well (training states may
hold them); detectron2 / Caffe2 model-zoo ``.pkl`` files are read with an unpickler that only
accepts numpy arrays, scalars and plain containers. A missing, empty or truncated file raises an
error naming it. Checkpoints and ``last_checkpoint`` are written to a temporary file, synced and
renamed, so an interrupted write never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch.torch_version import TorchVersion

from rvos_d2.utils.cli import InputError, InputFileError, MissingFileError

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = [
    "RVOSCheckpointer",
    "UnsafeCheckpointError",
    "atomic_write",
    "check_checkpoint_file",
    "load_checkpoint_file",
]

logger = logging.getLogger(__name__)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes zip archives (since PyTorch 1.6)


class UnsafeCheckpointError(InputFileError, pickle.UnpicklingError):
    """The checkpoint stores Python objects that a code-free load refuses."""


_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy >= 2 renamed numpy.core to numpy._core
_NUMPY_GLOBALS = {
    "multiarray._reconstruct": _NUMPY_CORE.multiarray._reconstruct,
    "multiarray.scalar": _NUMPY_CORE.multiarray.scalar,
}
# numpy >= 1.25 pickles dtypes through their classes (numpy.dtypes.Int64DType, ...).
_NUMPY_DTYPE_CLASSES = {
    name: cls
    for name, cls in vars(getattr(np, "dtypes", np)).items()
    if isinstance(cls, type) and issubclass(cls, np.dtype) and cls is not np.dtype
}
_PKL_ALLOWED = {
    ("_codecs", "encode"),  # bytes in protocol-2 pickles
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}


def _torch_safe_globals() -> list[Any]:
    """numpy objects to allow in weights_only loads, under both numpy module spellings."""
    allowed: list[Any] = [np.ndarray, np.dtype, *_NUMPY_GLOBALS.values()]
    allowed += _NUMPY_DTYPE_CLASSES.values()
    if TorchVersion(torch.__version__) >= (2, 6):  # (object, "module.name") aliases
        for module in ("numpy.core", "numpy._core"):
            allowed += [(obj, f"{module}.{name}") for name, obj in _NUMPY_GLOBALS.items()]
    return allowed


def _safe_globals_context():
    if hasattr(torch.serialization, "safe_globals"):
        return torch.serialization.safe_globals(_torch_safe_globals())
    return contextlib.nullcontext()


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler for model-zoo pickles: numpy arrays and plain Python containers only."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PKL_ALLOWED:
            return getattr(np if module == "numpy" else __import__(module), name)
        if module == "numpy.dtypes" and name in _NUMPY_DTYPE_CLASSES:
            return _NUMPY_DTYPE_CLASSES[name]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            key = f"multiarray.{name}"
            if key in _NUMPY_GLOBALS:
                return _NUMPY_GLOBALS[key]
        raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Opens a temporary file beside `path`; on success it is synced and renamed to `path`.

    Readers (and a run resumed after a crash) see the old file or the complete new one, never
    a partial one. On an exception the temporary file is removed and `path` is left unchanged.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def check_checkpoint_file(path: str | os.PathLike) -> None:
    """Cheap completeness check of a local checkpoint: it exists, is not empty and, for a
    PyTorch zip file, its archive directory (written last) is present."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise InputFileError(f"checkpoint {path} is empty (0 bytes): its writing was interrupted")
    with path.open("rb") as f:
        is_zip = f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC
    if is_zip and not zipfile.is_zipfile(path):
        raise InputFileError(
            f"checkpoint {path} is truncated ({size} bytes, its archive directory is missing)"
        )


def _read_model_zoo_pickle(path: str) -> dict[str, Any]:
    """Reads a detectron2 (``__author__`` + ``model``) or Caffe2 (``blobs``) model-zoo pickle."""
    with PathManager.open(path, "rb") as f:
        try:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(f"cannot safely load {path}: {err}") from err
        except (EOFError, ValueError, TypeError) as err:
            raise InputFileError(f"{path}: unreadable model-zoo pickle ({err})") from err
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a dict of weights, found {type(data).__name__}")
    if "model" in data and "__author__" in data:  # detectron2 model zoo
        return data
    weights = data.get("blobs", data)  # Caffe2 detection models keep weights under "blobs"
    weights = {k: v for k, v in weights.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Loads a PyTorch checkpoint without running code; a bare state dict becomes {"model": ...}.

    A missing, empty, truncated or corrupt file raises a UserError naming it.
    """
    local_path = PathManager.get_local_path(path)
    check_checkpoint_file(local_path)
    try:
        with _safe_globals_context():
            data = torch.load(local_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpointError(
            f"cannot safely load {path} (torch.load with weights_only=True refused it): {err}\n"
            "Re-save the checkpoint as plain state dicts (tensors, numbers, strings, containers)."
        ) from err
    except (EOFError, RuntimeError, zipfile.BadZipFile) as err:
        raise InputFileError(
            f"cannot read checkpoint {path} ({os.path.getsize(local_path)} bytes): it is "
            f"truncated or corrupt ({' '.join(str(err).split())})"
        ) from err
    if not isinstance(data, dict):
        raise InputFileError(
            f"{path}: expected a state dict or a checkpoint dict, found {type(data)}"
        )
    return data if "model" in data else {"model": data}


def _shape_mismatches(
    weights: dict[str, Any], model_state: dict[str, torch.Tensor], by_suffix: bool
) -> list[tuple[str, tuple, tuple]]:
    """(key, checkpoint shape, model shape) of the checkpoint tensors whose model counterpart
    has another shape. Keys match exactly, or (model-zoo files loaded with detectron2's
    matching heuristics) as a dotted suffix of model keys."""
    strip = bool(weights) and all(k.startswith("module.") for k in weights)
    mismatches = []
    for key, value in weights.items():
        name = key[len("module.") :] if strip else key
        if name in model_state:
            targets = [name]
        elif by_suffix:
            targets = [k for k in model_state if k.endswith("." + name)]
        else:
            continue
        shape = tuple(getattr(value, "shape", ()))
        if targets and all(tuple(model_state[t].shape) != shape for t in targets):
            mismatches.append((key, shape, tuple(model_state[targets[0]].shape)))
    return mismatches


class RVOSCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with code-free loading, atomic saving, resuming from
    the newest readable checkpoint, and an error for weights whose shapes differ from the model's
    (unless `allow_partial`)."""

    def __init__(
        self, model: torch.nn.Module, save_dir: str = "", *, allow_partial: bool = False, **kwargs
    ) -> None:
        """
        Args:
            model, save_dir, kwargs: as for DetectionCheckpointer (checkpointables, save_to_disk).
            allow_partial: load the matching tensors of a file whose other tensors have shapes
                that differ from the model's (those keep their initialisation) instead of raising.
        """
        super().__init__(model, save_dir, **kwargs)
        self.allow_partial = allow_partial
        self._source = ""

    def save(self, name: str, **kwargs: Any) -> None:
        """Writes `<save_dir>/<name>.pth` atomically, then tags it as the last checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = Path(self.save_dir) / f"{name}.pth"
        self.logger.info(f"Saving checkpoint to {path}")
        with atomic_write(path, "wb") as f:
            torch.save(data, f)
        self.tag_last_checkpoint(path.name)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        with atomic_write(Path(self.save_dir) / "last_checkpoint", "w") as f:
            f.write(last_filename_basename)

    def load(self, path: str, checkpointables: list[str] | None = None) -> dict[str, Any]:
        if path and "://" not in path and not os.path.exists(path):
            raise MissingFileError(f"checkpoint not found: {path}")
        self._source = path
        return super().load(path, checkpointables=checkpointables)

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """Like detectron2's, but a last checkpoint that cannot be read is reported and the newest
        readable ``model_*.pth`` of save_dir is used instead."""
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        last = self.get_checkpoint_file()
        # zero-padded iterations: name order is save order (model_final.pth last)
        others = sorted(Path(self.save_dir).glob("model_*.pth"), reverse=True)
        candidates = [last] + [str(p) for p in others if p != Path(last)]
        for candidate in candidates:
            try:
                check_checkpoint_file(candidate)
                return self.load(candidate)
            except (InputFileError, MissingFileError) as err:
                logger.error(f"cannot resume from {candidate}: {err}; trying an older checkpoint")
        raise InputFileError(f"no readable checkpoint to resume from in {self.save_dir}")

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            return _read_model_zoo_pickle(filename)
        return load_checkpoint_file(filename)

    def _load_model(self, checkpoint: dict[str, Any]):
        mismatches = _shape_mismatches(
            checkpoint["model"],
            self.model.state_dict(),
            by_suffix=checkpoint.get("matching_heuristics", False),
        )
        if mismatches:
            listed = "; ".join(f"{k} {a} vs {b}" for k, a, b in mismatches[:10])
            more = f" and {len(mismatches) - 10} more" if len(mismatches) > 10 else ""
            message = (
                f"{self._source}: {len(mismatches)} tensors have other shapes than the model's "
                f"(checkpoint vs model): {listed}{more}"
            )
            if not self.allow_partial:
                raise InputError(
                    f"{message}. The config differs from the one these weights were trained "
                    "with; set MODEL.WEIGHTS_ALLOW_PARTIAL True to load the other tensors and "
                    "keep these at their initialisation"
                )
            logger.warning(f"{message}; those keep their initialisation (WEIGHTS_ALLOW_PARTIAL)")
        return super()._load_model(checkpoint)

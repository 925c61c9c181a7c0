"""A DetectionCheckpointer whose loads cannot run code stored in the (possibly untrusted) file.

PyTorch files are read with ``torch.load(weights_only=True)``, allowing numpy arrays and scalars
as well (training states may hold them). detectron2 / Caffe2 model-zoo ``.pkl`` files are read
with an unpickler that only accepts numpy arrays, scalars and plain containers.
"""

from __future__ import annotations

import contextlib
import pickle
from typing import Any

import numpy as np
import torch
from torch.torch_version import TorchVersion

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager

__all__ = ["RVOSCheckpointer", "load_checkpoint_file"]

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


def _read_model_zoo_pickle(path: str) -> dict[str, Any]:
    """Reads a detectron2 (``__author__`` + ``model``) or Caffe2 (``blobs``) model-zoo pickle."""
    with PathManager.open(path, "rb") as f:
        try:
            data = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as err:
            raise pickle.UnpicklingError(f"cannot safely load {path}: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of weights, found {type(data).__name__}")
    if "model" in data and "__author__" in data:  # detectron2 model zoo
        return data
    weights = data.get("blobs", data)  # Caffe2 detection models keep weights under "blobs"
    weights = {k: v for k, v in weights.items() if not k.endswith("_momentum")}
    return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}


def load_checkpoint_file(path: str) -> dict[str, Any]:
    """Loads a PyTorch checkpoint without running code; a bare state dict becomes {"model": ...}."""
    local_path = PathManager.get_local_path(path)
    try:
        with _safe_globals_context():
            data = torch.load(local_path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(
            f"cannot safely load {path} (torch.load with weights_only=True refused it): {err}\n"
            "Re-save the checkpoint as plain state dicts (tensors, numbers, strings, containers)."
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a state dict or a checkpoint dict, found {type(data)}")
    return data if "model" in data else {"model": data}


class RVOSCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer with code-free loading of model and training states."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            return _read_model_zoo_pickle(filename)
        return load_checkpoint_file(filename)

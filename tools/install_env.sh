#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment: CUDA builds of torch/torchvision,
# detectron2 (left alone when importable, else the v0.6 Python tree), then `pip install -e .[dev]`.
# Every step checks first, so a second run on a complete environment changes nothing.
set -euo pipefail

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch>=2.14,<2.15"}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-"torchvision>=0.29,<0.30"}
D2_SDIST_NAME=${D2_SDIST_NAME:-pb1-detectron2}
D2_SDIST_VERSION=${D2_SDIST_VERSION:-0.6}

say() { printf '[setup] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

if ! "$VPY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 77)' 2>/dev/null; then
  say "upgrading pip/setuptools"
  "$VPY" -m pip install -q --upgrade pip "setuptools>=77" wheel ninja
fi

# The CPU torch wheel in pip's find-links cannot load torchvision's compiled ops, so ask for a
# release above it: PyPI then serves the CUDA 13 builds, which also run on a CPU-only machine.
if ! "$VPY" -c 'import torch, torchvision; from torchvision.ops import nms' 2>/dev/null; then
  say "installing $TORCH_SPEC $TORCHVISION_SPEC"
  "$VPY" -m pip install -q "$TORCH_SPEC" "$TORCHVISION_SPEC"
fi

if ! "$VPY" -c 'import detectron2' 2>/dev/null; then
  say "installing the detectron2 Python tree from $D2_SDIST_NAME==$D2_SDIST_VERSION (no C++ extension)"
  "$VPY" -m pip install -q fvcore iopath yacs termcolor tabulate cloudpickle tqdm tensorboard \
    omegaconf hydra-core pycocotools matplotlib "Pillow>=10"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$VPY" tools/fetch_sdist.py "$D2_SDIST_NAME" "$D2_SDIST_VERSION" "$tmp"
  tar -xzf "$tmp"/*.tar.gz -C "$tmp"
  src=$(dirname "$(find "$tmp" -maxdepth 3 -type f -path '*/detectron2/__init__.py' | head -n 1)")
  site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  cp -r "$src" "$site/detectron2"
  # model_zoo looks for its yaml files inside the package, as a source build would place them.
  if [ -d "$(dirname "$src")/configs" ]; then
    cp -r "$(dirname "$src")/configs" "$site/detectron2/model_zoo/configs"
  fi
fi

if ! "$VPY" -c 'import rvos_d2._C' 2>/dev/null || [ setup.py -nt "$VENV/.rvos_d2_installed" ] \
   || [ -n "$(find rvos_d2/layers/csrc -newer "$VENV/.rvos_d2_installed" -type f 2>/dev/null | head -n 1)" ]; then
  say "installing rvos_d2 (editable; compiles rvos_d2._C)"
  MAX_JOBS=${MAX_JOBS:-2} "$VPY" -m pip install -q --no-build-isolation -e ".[dev]"
  touch "$VENV/.rvos_d2_installed"
fi
say "environment ready: $VENV"

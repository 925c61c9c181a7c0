"""The environment setup script: on a complete environment a second run changes nothing."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="tests are not running in a venv")
def test_second_setup_run_is_a_no_op():
    result = subprocess.run(
        ["bash", "tools/install_env.sh"],
        cwd=ROOT,
        env={"VENV": sys.prefix, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("[setup]")]
    assert lines == [f"[setup] environment ready: {sys.prefix}"], result.stdout


def test_compiled_extension_is_importable():
    from rvos_d2 import _C

    assert callable(_C.ms_deform_attn_forward) and callable(_C.ms_deform_attn_backward)

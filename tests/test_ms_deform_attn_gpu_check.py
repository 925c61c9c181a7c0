"""The GPU check: its module runs on the CPU in quick mode, and its script refuses a CPU machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rvos_d2.layers import compiled_op_available, gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.sh"
needs_compiled = pytest.mark.skipif(not compiled_op_available(), reason="rvos_d2._C not built")
CPU = torch.device("cpu")


@needs_compiled
def test_quick_checks_pass_on_cpu():
    checks = gpu_check.run_checks(CPU, quick=True)
    names = {(c["check"], c["dtype"]) for c in checks}
    for case in ("odd_shapes", "unreached_level", "no_queries", "large_batch"):
        assert {(case, dtype) for dtype in ("float32", "float16", "bfloat16")} <= names
    assert ("gradcheck", "float64") in names and ("autocast_layer", "bfloat16") in names
    failed = [c for c in checks if not c["passed"]]
    assert not failed, failed
    unreached = [c for c in checks if c["check"] == "unreached_level"]
    assert all(c["unreached_gradients_zero"] for c in unreached)


def test_a_wrong_op_fails_the_check(monkeypatch):
    """The check compares against the reference, so a 1% error in the op is caught."""
    reference = gpu_check.ms_deform_attn_reference
    monkeypatch.setattr(gpu_check, "ms_deform_attn", lambda *args: reference(*args) * 1.01)
    result = gpu_check.check_case(gpu_check.CASES[0], torch.float32, CPU)
    assert not result["passed"] and result["errors"]["output"] > gpu_check.TOLERANCE[torch.float32]


@needs_compiled
def test_benchmark_entry_on_cpu():
    entry = gpu_check.bench("decoder", torch.float32, CPU, quick=True, peak={}, repeats=1)
    assert entry["queries_per_frame"] == 5 and entry["frames"] == 1
    assert entry["tokens_per_frame"] == 12 * 20 + 6 * 10 + 3 * 5 + 2 * 3
    assert entry["compiled_forward_backward_ms"] > 0 and entry["reference_forward_backward_ms"] > 0
    assert entry["traffic_bytes"]["backward"] > entry["traffic_bytes"]["forward"] > 0
    assert entry["achieved_bytes_per_s"]["forward"] > 0


def test_traffic_counts_every_tensor_once():
    case = gpu_check.Case("t", 1, 1, 2, ((1, 3),), 1, 1)  # value 3 x 2, one point, output 2
    float32 = gpu_check.traffic_bytes(case, torch.float32)
    assert float32["forward"] == 6 * 4 + 3 * 4 + 2 * 4
    # 16-bit: value and output in 2 bytes, sampling in 4; the value gradient via a float32 buffer
    half = gpu_check.traffic_bytes(case, torch.float16)
    assert half["forward"] == 6 * 2 + 3 * 4 + 2 * 2
    assert half["backward"] == 6 * 2 + 3 * 4 + 2 * 2 + 6 * (2 + 3 * 4) + 3 * 4


@needs_compiled
def test_script_runs_without_detectron2(tmp_path):
    """Run as a file it loads rvos_d2.layers alone: a detectron2 that cannot import is harmless."""
    blocker = tmp_path / "blocked"
    for name in ("detectron2", "fvcore"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is absent')\n")
    output = tmp_path / "summary.json"
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    command = [sys.executable, "rvos_d2/layers/gpu_check.py", "--device", "cpu", "--quick"]
    command += [
        "--skip-benchmarks",
        "--output",
        str(output),
        "--extra",
        '{"build": {"seconds": 1}}',
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(output.read_text())
    assert summary["passed"] and summary["build"] == {"seconds": 1}
    assert summary["environment"]["op"]["loaded"]
    assert "detectron2" not in result.stderr


def test_shell_script_parses_and_refuses_a_machine_without_cuda(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the script would build and run")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(
        ["bash", str(SCRIPT), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr

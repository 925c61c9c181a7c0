"""tools/benchmark.py ms_deform_attn: one JSON line with timings of both paths (decoder case)."""

import importlib.util
import json
from pathlib import Path

from rvos_d2.layers import compiled_op_available

BENCHMARK = Path(__file__).resolve().parent.parent / "tools" / "benchmark.py"


def test_ms_deform_attn_benchmark_prints_one_json_line(capsys):
    spec = importlib.util.spec_from_file_location("rvos_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["ms_deform_attn", "--device", "cpu", "--case", "decoder", "--repeats", "1"]
    module.main([*argv, "--warmup", "0"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["benchmark"] == "ms_deform_attn" and result["device"] == "cpu"
    case = result["cases"]["decoder"]
    assert case["queries_per_frame"] == 5
    assert case["tokens_per_frame"] == 45 * 80 + 23 * 40 + 12 * 20 + 6 * 10
    assert case["reference_ms"] > 0
    if compiled_op_available():
        assert case["compiled_ms"] > 0 and case["speedup"] > 0
        assert case["max_abs_diff"] < 1e-4

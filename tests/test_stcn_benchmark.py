"""tools/benchmark.py propagation: one JSON line with speed, peak memory and memory frames."""

import importlib.util
import json
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parent.parent / "tools" / "benchmark.py"


def test_propagation_benchmark_prints_one_json_line(capsys):
    spec = importlib.util.spec_from_file_location("rvos_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["propagation", "--device", "cpu", "--quick", "--frames", "3,12", "--size", "32", "48"]
    module.main([*argv, "--max-memory-frames", "2"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["benchmark"] == "propagation" and result["size"] == [32, 48]
    assert set(result["runs"]) == {"3", "12"}
    for run in result["runs"].values():
        assert run["fps"] > 0 and run["peak_rss_mib"] > 0
    # 12 frames, a memory frame every 5: the anchor + frame 5 (frame 10 replaces it at the cap)
    assert result["runs"]["3"]["memory_frames_at_end"] == 1
    assert result["runs"]["12"]["memory_frames_at_end"] == 2

"""tools/benchmark.py inference / train_step: one JSON line per run, both op paths, peak memory."""

import importlib.util
import json
from pathlib import Path

import pytest

from rvos_d2.layers import compiled_op_available

ROOT = Path(__file__).resolve().parent.parent
TINY = str(ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml")
# Narrower than the synthetic default so that a model builds and steps in seconds.
SMALL = ["MODEL.TINY_BACKBONE.WIDTH", "8", "MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM", "32"]
SMALL += ["MODEL.DEFORMABLE_TRANSFORMER.DIM_FEEDFORWARD", "64"]


@pytest.fixture(scope="module")
def benchmark_tool():
    spec = importlib.util.spec_from_file_location(
        "rvos_benchmark_model", ROOT / "tools" / "benchmark.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(tool, capsys, *argv) -> dict:
    common = ["--device", "cpu", "--repeats", "1", "--warmup", "0", "--config-file", TINY]
    tool.main([*argv, *common, "--frames", "2", "--size", "48", "64", "--opts", *SMALL])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    return json.loads(lines[0])


def test_inference_reports_fps_and_memory_per_path(benchmark_tool, capsys):
    result = run(benchmark_tool, capsys, "inference")
    assert result["benchmark"] == "inference" and result["amp"] == "none"
    entry = result["configs"][TINY]
    assert entry["size"] == [48, 64] and entry["frames_per_step"] == 2
    paths = ["compiled", "pytorch"] if compiled_op_available() else ["pytorch"]
    assert list(entry["paths"]) == paths
    for measured in entry["paths"].values():
        assert measured["step_ms"] > 0 and measured["peak_rss_mib"] > 0
        assert measured["frames_per_s"] == pytest.approx(2 / (measured["step_ms"] / 1000))
    if compiled_op_available():
        assert entry["speedup_compiled_vs_pytorch"] > 0


def test_train_step_under_bf16_autocast(benchmark_tool, capsys):
    result = run(benchmark_tool, capsys, "train_step", "--amp", "bf16", "--batch", "2")
    assert result["benchmark"] == "train_step" and result["amp"] == "bf16"
    entry = result["configs"][TINY]
    assert entry["frames_per_step"] == 4  # 2 clips of 2 frames
    assert all(m["step_ms"] > 0 for m in entry["paths"].values())


def test_frame_size_follows_resize_shortest_edge(benchmark_tool):
    assert benchmark_tool._frame_size(360, 640) == (360, 640)
    assert benchmark_tool._frame_size(512, 640) == (360, 640)  # the long side is capped
    assert benchmark_tool._frame_size(160, 1333) == (160, 284)


def test_unknown_op_path_is_named(benchmark_tool, capsys):
    with pytest.raises(ValueError, match="--op-paths: unknown path"):
        benchmark_tool.main(["inference", "--device", "cpu", "--op-paths", "fast"])


def test_long_video_streams_every_frame_of_each_length(benchmark_tool, capsys):
    argv = ["long_video", "--device", "cpu", "--config-file", TINY, "--frames", "3,7"]
    benchmark_tool.main([*argv, "--size", "48", "64"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["benchmark"] == "long_video" and result["size"] == [48, 64]
    for n in ("3", "7"):
        run = result["runs"][n]
        assert run["frames"] == int(n) and run["fps"] > 0 and run["peak_rss_mib"] > 0

"""tools/leaderboard.py: budget logic, ranked configs, and an end-to-end run on a tiny budget."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

from rvos_d2.config import load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def leaderboard():
    spec = importlib.util.spec_from_file_location("leaderboard", ROOT / "tools" / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["leaderboard"] = module  # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("leaderboard")


def test_iterations_fit_the_budget_at_the_measured_rate(leaderboard):
    assert leaderboard.iterations_for_budget(900.0, 0.5) == 1800
    assert leaderboard.iterations_for_budget(10.0, 3.0) == 3  # whole iterations within budget
    assert leaderboard.iterations_for_budget(1.0, 5.0) == 1  # at least one
    for bad in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="seconds per iteration"):
            leaderboard.iterations_for_budget(10.0, bad)


def test_the_schedule_is_compressed_proportionally(leaderboard):
    cfg = load_config(ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml")  # 1800, (1500,)
    opts = dict(zip(*[iter(leaderboard.scaled_schedule(cfg, 600))] * 2))
    assert opts == {"SOLVER.MAX_ITER": "600", "SOLVER.STEPS": "(500,)", "SOLVER.WARMUP_ITERS": "17"}
    cfg.merge_from_list(leaderboard.scaled_schedule(cfg, 600))
    assert cfg.SOLVER.STEPS == (500,)


def test_every_rvos_synthetic_config_is_ranked_and_only_those(leaderboard):
    configs = leaderboard.ranked_configs()
    assert {"ReferFormer-tiny", "SOC-tiny", "URVOS-tiny", "MLRL-tiny", "TopDown-tiny"} <= set(
        configs
    )
    assert "STCN-tiny" not in configs  # a VOS model: no expression to rank it on
    with pytest.raises(SystemExit, match="unknown"):
        leaderboard.ranked_configs(["NoSuch-tiny"])


def test_topdown_without_its_trained_parts_is_reported_not_ranked(leaderboard):
    cfg = load_config(ROOT / "configs" / "Synthetic" / "TopDown-tiny.yaml")
    assert "CANDIDATES.WEIGHTS" in leaderboard.missing_parts(cfg)
    assert leaderboard.missing_parts(load_config(leaderboard.CONFIG_DIR / "SOC-tiny.yaml")) is None


def test_inference_variants(leaderboard):
    names = {v.name for v in leaderboard.inference_variants("URVOS-tiny", None)}
    assert names == {"default", "3 iterations", "stage 1 only"}
    stcn = leaderboard.inference_variants("MLRL-tiny", "stcn.pth")
    assert [v.name for v in stcn] == ["default", "+ STCN"]
    assert "stcn.pth" in stcn[1].opts
    assert [v.name for v in leaderboard.inference_variants("MLRL-tiny", None)] == ["default"]


def test_a_tiny_run_writes_the_table(leaderboard, synth_root, tmp_path, monkeypatch, capsys):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    os.symlink(synth_root, datasets / "rvos_synth")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))
    monkeypatch.chdir(tmp_path)  # MODEL.WEIGHTS (the pretrained backbone) is written here
    monkeypatch.setattr(leaderboard, "PRETRAIN_ITERATIONS", 2)
    monkeypatch.setattr(leaderboard, "CALIBRATION_ITERS", 3)
    out = tmp_path / "board"
    args = ["--output-dir", str(out), "--methods", "ReferFormer-tiny", "--no-variants"]
    args += ["--budget-cpu-minutes", "0.02", "--splits", "rvos_synth_valid", "no_such_split"]
    assert leaderboard.main(args) == 0
    report = json.loads((out / "leaderboard.json").read_text())
    assert report["splits"] == ["rvos_synth_valid"]  # the unregistered split is left out
    assert report["budget_cpu_seconds"] == pytest.approx(1.2)
    run = report["methods"]["ReferFormer-tiny"]["train"]
    assert run["iterations"] == max(1, int(1.2 // run["cpu_seconds_per_iter"]))
    scores = report["methods"]["ReferFormer-tiny"]["eval"]["default"]["rvos_synth_valid"]
    assert all(0.0 <= scores[k] <= 1.0 for k in ("J", "F", "JF", "prec@0.5"))
    assert scores["fps"] > 0
    table = (out / "leaderboard.md").read_text()
    assert table.splitlines()[2].startswith("| ReferFormer-tiny | default |")
    # a rerun finds everything cached and trains nothing
    mtime = (out / "ReferFormer-tiny" / "model_final.pth").stat().st_mtime
    assert leaderboard.main(args) == 0
    assert (out / "ReferFormer-tiny" / "model_final.pth").stat().st_mtime == mtime

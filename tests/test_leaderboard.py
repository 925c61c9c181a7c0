"""tools/leaderboard.py: budget logic, ranked configs and variants, and runs on a tiny budget."""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

from rvos_d2.config import load_config

from detectron2.modeling import build_model

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = ROOT / "configs" / "Synthetic"


@pytest.fixture(scope="module")
def leaderboard():
    spec = importlib.util.spec_from_file_location("leaderboard", ROOT / "tools" / "leaderboard.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["leaderboard"] = module  # its dataclasses resolve annotations through it
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("leaderboard")


@pytest.fixture
def tiny_synthetic(synth_root, tmp_path, monkeypatch, leaderboard):
    """$DETECTRON2_DATASETS/rvos_synth is the small generated dataset; MODEL.WEIGHTS (relative)
    and every schedule land in tmp_path; calibration and pretraining take a few iterations."""
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    os.symlink(synth_root, datasets / "rvos_synth")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(leaderboard, "PRETRAIN_ITERATIONS", 2)
    monkeypatch.setattr(leaderboard, "CALIBRATION_ITERS", 3)
    return tmp_path


def test_iterations_fit_the_budget_at_the_measured_rate(leaderboard):
    assert leaderboard.iterations_for_budget(900.0, 0.5) == 1800
    assert leaderboard.iterations_for_budget(10.0, 3.0) == 3  # whole iterations within budget
    assert leaderboard.iterations_for_budget(1.0, 5.0) == 1  # at least one
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="seconds per iteration"):
            leaderboard.iterations_for_budget(10.0, bad)


def test_the_budget_sets_max_iter_from_a_measured_rate(leaderboard, tmp_path, monkeypatch):
    """A fake trainer whose iterations cost 0.25 CPU s: a 30 s budget gives 120 iterations,
    the schedule compressed alike, and the CPU seconds used are recorded."""
    clock = {"t": 0.0}
    monkeypatch.setattr(leaderboard.time, "process_time", lambda: clock["t"])
    runs = []

    class FakeTrainer:
        def __init__(self, cfg):
            self.cfg, self.hooks = cfg, []

        def resume_or_load(self, resume):
            pass

        def register_hooks(self, hooks):
            self.hooks += hooks

        def train(self):
            runs.append((self.cfg.SOLVER.MAX_ITER, self.cfg.SOLVER.STEPS, self.cfg.OUTPUT_DIR))
            for _ in range(self.cfg.SOLVER.MAX_ITER):
                clock["t"] += 0.25
                for hook in self.hooks:
                    hook.after_step()

    cfg = load_config(SYNTHETIC / "ReferFormer-tiny.yaml")  # 1800 iterations, steps (1500,)
    record = leaderboard.train_within_budget(cfg, FakeTrainer, 30.0, tmp_path)
    assert runs[0] == (leaderboard.CALIBRATION_ITERS, (1500,), str(tmp_path / "calibration"))
    assert runs[1] == (120, (100,), str(tmp_path))
    assert record["iterations"] == 120 and record["cpu_seconds_per_iter"] == 0.25
    assert record["train_cpu_seconds"] == 30.0


def test_the_schedule_is_compressed_proportionally(leaderboard):
    cfg = load_config(SYNTHETIC / "ReferFormer-tiny.yaml")  # 1800, (1500,), warm-up 50
    opts = dict(zip(*[iter(leaderboard.scaled_schedule(cfg, 600))] * 2))
    assert opts["SOLVER.MAX_ITER"] == "600"
    assert opts["SOLVER.STEPS"] == "(500,)" and opts["SOLVER.WARMUP_ITERS"] == "17"
    stcn = load_config(SYNTHETIC / "STCN-tiny.yaml")
    stcn.merge_from_list(["SOLVER.MAX_ITER", "2000", "SOLVER.STEPS", "(1600,)"])
    p = stcn.MODEL.PROPAGATION
    p.BOOTSTRAP_START_WARM, p.BOOTSTRAP_END_WARM = 500, 1500
    opts = dict(zip(*[iter(leaderboard.scaled_schedule(stcn, 200))] * 2))
    assert opts["MODEL.PROPAGATION.BOOTSTRAP_START_WARM"] == "50"
    assert opts["MODEL.PROPAGATION.BOOTSTRAP_END_WARM"] == "150"
    stcn.merge_from_list(leaderboard.scaled_schedule(stcn, 200))
    assert stcn.SOLVER.STEPS == (160,)


def test_every_rvos_synthetic_config_is_ranked_and_only_those(leaderboard):
    configs = leaderboard.ranked_configs()
    assert {"ReferFormer-tiny", "SOC-tiny", "URVOS-tiny", "MLRL-tiny", "TopDown-tiny"} <= set(
        configs
    )
    assert "STCN-tiny" not in configs  # a VOS model: no expression to rank it on
    for path in configs.values():
        assert load_config(path).MODEL.META_ARCHITECTURE != "SpaceTimeMemoryNetwork"
    with pytest.raises(SystemExit, match="unknown"):
        leaderboard.ranked_configs(["NoSuch-tiny"])


def test_variants(leaderboard, tmp_path):
    urvos = load_config(SYNTHETIC / "URVOS-tiny.yaml")
    names = [v.name for v in leaderboard.variants_of(urvos, "inference")]
    assert names == ["default", "3 iterations"]
    assert [v.name for v in leaderboard.variants_of(urvos, "none")] == ["default"]
    ablations = [v for v in leaderboard.variants_of(urvos, "all") if v.retrain]
    assert [v.opts[0] for v in ablations] == [
        "MODEL.URVOS.CROSS_MODAL_ATTENTION",
        "MODEL.URVOS.MEMORY_ATTENTION",
    ]
    mlrl = load_config(SYNTHETIC / "MLRL-tiny.yaml")
    levels = [v.opts[1] for v in leaderboard.variants_of(mlrl, "all") if v.retrain]
    assert levels == ["['frame', 'object']", "['video', 'object']", "['video', 'frame']"]
    for variant in leaderboard.variants_of(mlrl, "all"):  # every override is a real key
        mlrl.clone().merge_from_list(list(variant.opts))

    assert leaderboard.propagation_variants(tmp_path / "missing.pth") == ()
    (tmp_path / "model_final.pth").write_bytes(b"")
    stcn = leaderboard.propagation_variants(tmp_path / "model_final.pth")
    fusions = []
    for variant in stcn:
        opts = dict(zip(*[iter(variant.opts)] * 2))
        assert opts["TEST.PROPAGATION.WEIGHTS"] == str(tmp_path / "model_final.pth")
        assert opts["MODEL.PROPAGATION.KEY_DIM"] == str(
            load_config(SYNTHETIC / "STCN-tiny.yaml").MODEL.PROPAGATION.KEY_DIM
        )
        fusions.append(opts["TEST.PROPAGATION.FUSION"])
        mlrl.clone().merge_from_list(list(variant.opts))
    assert fusions == ["replace", "mean"]
    assert leaderboard.variants_of(mlrl, "inference", stcn)[-2:] == list(stcn)
    soc = load_config(SYNTHETIC / "SOC-tiny.yaml")
    assert not set(stcn) & set(leaderboard.variants_of(soc, "inference", stcn))


def test_topdown_parts_train_on_the_synthetic_videos(leaderboard):
    topdown = load_config(SYNTHETIC / "TopDown-tiny.yaml")
    candidates = leaderboard.candidate_cfg(topdown)
    assert candidates.DATASETS.TRAIN == ("rvos_synth_vos_train_frame_instances",)
    assert candidates.MODEL.RESNETS.DEPTH == 18 and candidates.MODEL.WEIGHTS == ""
    assert candidates.INPUT.MASK_FORMAT == "bitmask"
    propagation = leaderboard.propagation_cfg(topdown, Path("out"))
    assert propagation.MODEL.META_ARCHITECTURE == "SpaceTimeMemoryNetwork"
    for key in leaderboard.PROPAGATION_SHAPE[1:]:  # the network TopDown's config builds
        assert propagation.MODEL.PROPAGATION[key] == topdown.MODEL.PROPAGATION[key]


@pytest.mark.slow
def test_a_tiny_run_writes_the_table(leaderboard, tiny_synthetic, capsys):
    out = tiny_synthetic / "board"
    args = ["--output-dir", str(out), "--methods", "ReferFormer-tiny", "URVOS-tiny"]
    args += ["--budget-cpu-minutes", "0.02", "--splits", "rvos_synth_valid", "no_such_split"]
    assert leaderboard.main(args) == 0
    report = json.loads((out / "leaderboard.json").read_text())
    assert report["splits"] == ["rvos_synth_valid"]  # the unregistered split is left out
    assert report["missing_splits"] == ["no_such_split"]
    assert report["budget_cpu_seconds"] == pytest.approx(1.2)
    assert report["pretraining"]["output/tiny_backbone/attributes.pth"]["iterations"] == 2
    urvos = report["methods"]["URVOS-tiny"]["variants"]
    assert set(urvos) == {"default", "3 iterations"}
    run = urvos["default"]["train"]
    assert run["iterations"] == max(1, int(1.2 // run["cpu_seconds_per_iter"]))
    for method in ("ReferFormer-tiny", "URVOS-tiny"):
        for variant in report["methods"][method]["variants"].values():
            scores = variant["eval"]["rvos_synth_valid"]
            assert all(0.0 <= scores[k] <= 1.0 for k in ("J", "F", "JF", "prec@0.5"))
            assert all(math.isfinite(scores[k]) for k in ("IoU_variance", "JF_variance"))
            assert scores["fps"] > 0 and scores["frames_per_cpu_second"] > 0
    table = (out / "leaderboard.md").read_text().splitlines()
    assert table[2].startswith("| ReferFormer-tiny | default |")
    assert table[4].startswith("| URVOS-tiny | 3 iterations |")
    assert "| URVOS-tiny | default |" in capsys.readouterr().out
    # a rerun finds everything cached and trains nothing
    mtime = (out / "URVOS-tiny" / "model_final.pth").stat().st_mtime
    assert leaderboard.main(args) == 0
    assert (out / "URVOS-tiny" / "model_final.pth").stat().st_mtime == mtime


def test_one_method_on_one_split(leaderboard, tiny_synthetic):
    """The fast end-to-end run: one method, its default only, a budget of a few iterations."""
    out = tiny_synthetic / "board"
    args = ["--output-dir", str(out), "--methods", "ReferFormer-tiny", "--variants", "none"]
    args += ["--budget-cpu-minutes", "0.01", "--splits", "rvos_synth_valid"]
    assert leaderboard.main(args) == 0
    report = json.loads((out / "leaderboard.json").read_text())
    scores = report["methods"]["ReferFormer-tiny"]["variants"]["default"]["eval"]
    assert 0.0 <= scores["rvos_synth_valid"]["JF"] <= 1.0
    assert (out / "leaderboard.md").read_text().count("\n") == 3


def test_every_training_ablation_builds(leaderboard):
    """Each ablation's overrides give a model its meta-architecture accepts."""
    for path in leaderboard.ranked_configs().values():
        cfg = load_config(path)
        for variant in leaderboard.variants_of(cfg, "all"):
            if variant.retrain:
                ablated = load_config(path, list(variant.opts))
                build_model(ablated)

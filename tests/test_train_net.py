"""tools/train_net.py: flags, training with checkpoints and writers, resume, eval-only, DDP."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rvos_d2.engine import RVOSTrainer, argument_parser, launch, setup
from tests.fixtures.engine import ddp_train_worker, toy_opts

from detectron2.engine import HookBase

ROOT = Path(__file__).resolve().parents[1]
TRAIN_NET = ROOT / "tools" / "train_net.py"


def _load_train_net():
    spec = importlib.util.spec_from_file_location("train_net", TRAIN_NET)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_train_net()


def _args(*argv):
    return argument_parser().parse_args([str(a) for a in argv])


def test_help_lists_every_flag():
    out = subprocess.run(
        [sys.executable, str(TRAIN_NET), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in (
        "--config-file",
        "--eval-only",
        "--resume",
        "--num-gpus",
        "--num-machines",
        "--machine-rank",
        "--dist-url",
        "opts",
        "gloo",
    ):
        assert flag in out, flag


@pytest.fixture(scope="module")
def trained(synth_root, tmp_path_factory):
    """Output folder of a 4-iteration run of train_net.main (checkpoints every 2 iterations)."""
    output = tmp_path_factory.mktemp("train_net") / "output"
    train_net.main(_args(*toy_opts(output, max_iter=4, checkpoint_period=2)))
    return output


def test_training_writes_checkpoints_metrics_and_events(trained):
    names = {p.name for p in trained.iterdir()}
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= names
    assert (trained / "last_checkpoint").read_text() == "model_final.pth"
    assert any(name.startswith("events.out.tfevents") for name in names)
    records = [json.loads(line) for line in (trained / "metrics.json").read_text().splitlines()]
    iterations = [r["iteration"] for r in records if "total_loss" in r]
    assert iterations and iterations[-1] == 3
    assert all("lr" in r and "eta_seconds" in r for r in records if "total_loss" in r)
    assert any("rvos/JF" in r for r in records)  # final evaluation by the EvalHook
    log = (trained / "log.txt").read_text()
    assert "eta:" in log and "iter: 3" in log


class _CrashAt(HookBase):
    """Simulates a crash when the trainer reaches iteration `at`."""

    def __init__(self, at):
        self.at = at

    def before_step(self):
        if self.trainer.iter == self.at:
            raise RuntimeError("simulated crash")


def _checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_restores_iteration_optimizer_and_scheduler(trained, tmp_path):
    trained = Path(shutil.copytree(trained, tmp_path / "output"))
    cfg = setup(_args("--resume", *toy_opts(trained, max_iter=7, checkpoint_period=2)))
    saved = _checkpoint(trained / "model_final.pth")
    trainer = RVOSTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert saved["iteration"] == 3 and trainer.start_iter == 4
    state = trainer.optimizer.state_dict()
    saved_optimizer = saved["trainer"]["_trainer"]["optimizer"]
    assert state["state"].keys() == saved_optimizer["state"].keys()
    for key, param_state in saved_optimizer["state"].items():
        assert torch.equal(state["state"][key]["exp_avg"], param_state["exp_avg"])
        assert torch.equal(state["state"][key]["exp_avg_sq"], param_state["exp_avg_sq"])
        assert float(state["state"][key]["step"]) == 4
    assert trainer.scheduler.last_epoch == saved["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name

    # A crash loses at most the iterations since the last periodic checkpoint.
    trainer.register_hooks([_CrashAt(6)])
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    assert (trained / "last_checkpoint").read_text() == "model_0000005.pth"
    train_net.main(_args("--resume", *toy_opts(trained, max_iter=7, checkpoint_period=2)))
    final = _checkpoint(trained / "model_final.pth")
    assert final["iteration"] == 6
    final_optimizer = final["trainer"]["_trainer"]["optimizer"]
    assert float(next(iter(final_optimizer["state"].values()))["step"]) == 7


def test_eval_only_reports_metrics(trained, tmp_path):
    weights = trained / "model_0000001.pth"
    results = train_net.main(
        _args("--eval-only", *toy_opts(tmp_path / "eval"), "MODEL.WEIGHTS", weights)
    )
    metrics = results["rvos"]
    assert {"JF", "J", "F"} <= metrics.keys()
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("JF", "J", "F"))
    assert (tmp_path / "eval" / "inference" / "synth_test_valid").is_dir()


def test_eval_only_without_weights_fails(synth_root, tmp_path):
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        train_net.main(_args("--eval-only", *toy_opts(tmp_path)))


def test_unknown_meta_architecture(synth_root, tmp_path):
    with pytest.raises(KeyError, match="'Nope' names no registered meta-architecture"):
        train_net.main(_args(*toy_opts(tmp_path), "MODEL.META_ARCHITECTURE", "Nope"))


def test_config_typo_is_reported(tmp_path):
    with pytest.raises(AssertionError, match="Non-existent key: SOLVER.BACKBONE_MULTIPLER"):
        train_net.main(_args(*toy_opts(tmp_path), "SOLVER.BACKBONE_MULTIPLER", "0.1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU-only behaviour")
def test_cuda_device_without_cuda_is_reported(tmp_path):
    with pytest.raises(ValueError, match="MODEL.DEVICE cpu"):
        setup(_args(*toy_opts(tmp_path), "MODEL.DEVICE", "cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU workers are used without CUDA only")
def test_two_cpu_processes_train_with_ddp(synth_root, tmp_path):
    argv = [str(a) for a in toy_opts(tmp_path / "output", max_iter=3, checkpoint_period=100)]
    launch(ddp_train_worker, 2, dist_url="auto", args=(str(synth_root), str(tmp_path), argv))
    ranks = [torch.load(tmp_path / f"rank{r}.pth", weights_only=False) for r in (0, 1)]
    for rank, result in enumerate(ranks):
        assert result["ddp"], f"rank {rank} did not use DistributedDataParallel"
        assert (result["world_size"], result["local_rank"], result["local_size"]) == (2, rank, 2)
    first, second = ranks
    for name, value in first["after"].items():
        assert torch.equal(value, second["after"][name]), f"{name} differs between ranks"
    changed = [n for n, v in first["after"].items() if not torch.equal(v, first["before"][n])]
    assert "mask_head.weight" in changed and "backbone.0.weight" in changed
    assert not any(name.startswith("text_encoder.") for name in changed)  # frozen
    assert set(first["eval"]["rvos"]) >= {"JF", "J", "F"}  # distributed evaluation gathered
    assert (tmp_path / "output" / "model_final.pth").is_file()

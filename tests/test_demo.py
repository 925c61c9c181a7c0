"""tools/demo.py and tools/run_main_job.py end to end on tiny inputs (random or briefly trained)."""

import importlib.util
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from rvos_d2.config import load_config
from rvos_d2.engine.attribute_pretraining import attribute_config, backbone_checkpoint
from rvos_d2.utils.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml"
SMALL_MODEL = [
    "MODEL.TINY_BACKBONE.WIDTH",
    "8",
    "MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM",
    "32",
    "MODEL.DEFORMABLE_TRANSFORMER.DIM_FEEDFORWARD",
    "64",
    "MODEL.DEFORMABLE_TRANSFORMER.ENC_LAYERS",
    "1",
    "MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS",
    "1",
]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return _load_tool("demo")


@pytest.fixture
def frame_folder(synth_root) -> Path:
    return next(iter(sorted((synth_root / "valid" / "JPEGImages").iterdir())))


def _run_demo(demo, video, text, output, *extra):
    argv = [
        "--config-file",
        str(TINY_CONFIG),
        "--video",
        str(video),
        "--text",
        text,
        "--output",
        str(output),
        "--opts",
        *SMALL_MODEL,
        "MODEL.WEIGHTS",
        "",
        *extra,
    ]
    return demo.main(argv)


def test_demo_writes_a_mask_per_frame_and_an_overlay(demo, frame_folder, tmp_path):
    frames = sorted(frame_folder.glob("*.jpg"))
    assert _run_demo(demo, frame_folder, "the red circle", tmp_path) == 0
    masks = sorted((tmp_path / "masks").glob("*.png"))
    assert [m.stem for m in masks] == [f.stem for f in frames]
    first = cv2.imread(str(masks[0]), cv2.IMREAD_GRAYSCALE)
    assert first.shape == cv2.imread(str(frames[0])).shape[:2]
    assert set(np.unique(first)) <= {0, 255}
    capture = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(frames)
    capture.release()


def test_demo_reads_a_video_file(demo, frame_folder, tmp_path):
    frames = [cv2.imread(str(f)) for f in sorted(frame_folder.glob("*.jpg"))]
    video = tmp_path / "clip.mp4"
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.release()
    assert _run_demo(demo, video, "the square moving up", tmp_path / "out") == 0
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == len(frames)


def test_demo_refuses_bad_input(demo, frame_folder, tmp_path, caplog, capsys):
    with pytest.raises(SystemExit, match="2"):  # one line on stderr, as for every user error
        run_cli(lambda argv: _run_demo(demo, tmp_path / "missing.mp4", "the dog", tmp_path / "a"))
    assert "video not found" in capsys.readouterr().err
    assert _run_demo(demo, frame_folder, "   ", tmp_path / "b") == 2
    assert "--text is empty" in caplog.text
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "00000.jpg").write_bytes(b"not an image")
    with pytest.raises(SystemExit, match="2"):
        run_cli(lambda argv: _run_demo(demo, broken, "the dog", tmp_path / "c"))
    assert f"{broken / '00000.jpg'} is not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


def test_main_job_prints_metrics_json_last(synth_root, tmp_path, monkeypatch, capsys):
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    os.symlink(synth_root, datasets / "rvos_synth")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(datasets))
    job = _load_tool("run_main_job")
    backbone = tmp_path / "backbone" / "attributes.pth"
    opts = [
        *SMALL_MODEL[2:],  # the backbone keeps the width that the pretraining config gives it
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.IMS_PER_BATCH",
        "2",
        "DATALOADER.NUM_WORKERS",
        "0",
        "INPUT.SAMPLING_FRAME_NUM",
        "2",
        "MODEL.WEIGHTS",
        str(backbone),
    ]
    args = ["--output-dir", str(tmp_path / "out"), "--pretrain-iterations", "2", *opts]
    assert job.main(args) == 0
    assert backbone.exists()  # pretrained first, since it was missing
    assert torch.load(backbone, weights_only=True)["pretraining"]["iterations"] == 2
    assert (tmp_path / "backbone" / "attributes" / "model_final.pth").exists()  # its trainer run
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    splits = ("rvos_synth_valid", "rvos_synth_valid_motion", "rvos_synth_valid_unseen_phrasing")
    assert set(summary) == {*splits, "seconds"}
    for split in splits:
        assert set(summary[split]) == {"J", "F", "JF"}
        assert all(0.0 <= v <= 1.0 for v in summary[split].values())
        assert summary[split]["JF"] == pytest.approx(
            (summary[split]["J"] + summary[split]["F"]) / 2, abs=1e-3
        )
    assert (tmp_path / "out" / "overlay_valid.mp4").stat().st_size > 0
    assert (tmp_path / "out" / "model_final.pth").exists()


def test_main_job_checks_a_reused_backbone_against_its_pretraining(tmp_path, monkeypatch, capsys):
    job = _load_tool("run_main_job")
    pretrain_cfg = attribute_config(
        job.PRETRAIN_CONFIG, tmp_path / "x.pth", ["SOLVER.MAX_ITER", 1200]
    )
    attributes = list(pretrain_cfg.MODEL.DENSE_ATTRIBUTES.NAMES)
    files = {
        "same": {"attributes": attributes, "iterations": 1200, "lr": 1e-3},
        "shorter": {"attributes": attributes, "iterations": 600},
        "other": {"attributes": ["category"], "iterations": 1200},
        "none": None,
    }
    for name, record in files.items():
        torch.save(backbone_checkpoint(nn.Linear(2, 2), record), tmp_path / f"{name}.pth")
    assert job.pretraining_mismatch(str(tmp_path / "same.pth"), pretrain_cfg) is None
    assert "iterations 600 (this job: 1200)" in job.pretraining_mismatch(
        str(tmp_path / "shorter.pth"), pretrain_cfg
    )
    assert "attributes ['category']" in job.pretraining_mismatch(
        str(tmp_path / "other.pth"), pretrain_cfg
    )
    assert "no pretraining settings" in job.pretraining_mismatch(
        str(tmp_path / "none.pth"), pretrain_cfg
    )
    (tmp_path / "zoo.pkl").write_bytes(b"not a PyTorch file")
    assert "no pretraining settings" in job.pretraining_mismatch(
        str(tmp_path / "zoo.pkl"), pretrain_cfg
    )

    # An existing file is used as it is, never pretrained over.
    monkeypatch.setattr(job, "pretrain_backbone", lambda *a, **k: pytest.fail("pretrained again"))
    shorter = tmp_path / "shorter.pth"
    before = shorter.read_bytes()
    cfg = load_config(TINY_CONFIG, ["MODEL.WEIGHTS", str(shorter)])
    job.ensure_pretrained_backbone(cfg, 1200)
    assert shorter.read_bytes() == before
    assert f"using MODEL.WEIGHTS {shorter} as it is" in capsys.readouterr().err
    cfg = load_config(TINY_CONFIG, ["MODEL.WEIGHTS", str(tmp_path / "same.pth")])
    job.ensure_pretrained_backbone(cfg, 1200)
    assert capsys.readouterr().err == ""

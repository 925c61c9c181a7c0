"""`python -m rvos_d2.collect_env`: detectron2's report plus the op, text encoder and datasets."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rvos_d2 import collect_env
from rvos_d2.layers import ms_deform_attn_func

ROOT = Path(__file__).resolve().parents[1]


def _check_report(out: str) -> None:
    assert "PyTorch" in out and "detectron2" in out  # detectron2's own table
    assert "rvos_d2._C" in out and "text encoder 'minilm'" in out
    # Long cells wrap at spaces: join the lines of the "datasets found" cell.
    found = " ".join(out[out.index("datasets found") : out.index("datasets missing")].split())
    assert "rvos_synth_train," in found and "rvos_synth_vos_valid" in found
    assert "ref_ytvos_train" not in found


def test_report_lists_op_encoder_and_datasets_found(monkeypatch, tmp_path, capsys):
    (tmp_path / "rvos_synth").mkdir()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    collect_env.main()
    _check_report(capsys.readouterr().out)


@pytest.mark.slow  # a fresh interpreter imports detectron2, transformers and rvos_d2 (~20 s)
def test_module_runs_as_a_command(tmp_path):
    (tmp_path / "rvos_synth").mkdir()
    env = {**os.environ, "DETECTRON2_DATASETS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rvos_d2.collect_env"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    _check_report(result.stdout)


def test_broken_op_is_reported_with_its_cause(monkeypatch):
    monkeypatch.setattr(ms_deform_attn_func, "_C", None)
    monkeypatch.setattr(ms_deform_attn_func, "_LOAD_ERROR", "rvos_d2._C failed to load (X)")
    assert collect_env.op_rows() == [("rvos_d2._C", "not loaded: rvos_d2._C failed to load (X)")]


def test_configured_dataset_root_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    roots = collect_env.registered_dataset_roots()
    assert roots["ref_ytvos_train"] == tmp_path / "nowhere" / "ref-youtube-vos"
    assert roots["refcoco_unc_val"] == tmp_path / "nowhere" / "coco"
    assert "coco_2017_train" not in roots  # detectron2's own datasets are not listed
    rows = dict(collect_env.dataset_rows())
    assert rows["datasets found"] == "none"

"""Nothing lost, nothing silently wrong: atomic checkpoints, resume past a damaged checkpoint,
incomplete videos and images, workers that outlive their launcher, one-line user errors,
partial weight loads, unusable sentences, and tools/check_dataset.py."""

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from rvos_d2.engine.checkpoint import RVOSCheckpointer
from rvos_d2.utils.cli import InputError, InputFileError, UserError, run_cli
from rvos_d2.utils.video_io import VideoReader
from tests.fixtures.engine import toy_opts

# the module, not the `launch` function that rvos_d2.engine exports under the same name
launch_module = importlib.import_module("rvos_d2.engine.launch")
ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml"
SMALL = ["MODEL.TINY_BACKBONE.WIDTH", "8", "MODEL.DEFORMABLE_TRANSFORMER.HIDDEN_DIM", "32"]
SMALL += ["MODEL.DEFORMABLE_TRANSFORMER.ENC_LAYERS", "1", "MODEL.DEFORMABLE_TRANSFORMER.DEC_LAYERS"]
SMALL += ["1", "MODEL.DEVICE", "cpu"]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # process-pool workers find the tool's functions by module name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_net():
    return _load_tool("train_net")


@contextlib.contextmanager
def _records(logger_name: str):
    """Log records of one logger (detectron2's loggers do not propagate to pytest's caplog)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _args(*argv):
    from rvos_d2.engine import argument_parser

    return argument_parser().parse_args([str(a) for a in argv])


def _read_all(path: Path, allow_incomplete: bool = False) -> list:
    return list(VideoReader(path, allow_incomplete))


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


# ------------------------------------------------------------------ 1. checkpoints
def _interrupt_nth_save(monkeypatch, n: int) -> None:
    """torch.save writes part of its n-th file, then the process is 'killed' (KeyboardInterrupt)."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            f.write(b"PK\x03\x04" + b"\0" * 100)
            raise KeyboardInterrupt
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_interrupted_final_save_leaves_no_partial_file_and_resume_writes_it(
    train_net, synth_root, tmp_path, monkeypatch
):
    output = tmp_path / "output"
    opts = toy_opts(output, max_iter=4, checkpoint_period=2)
    _interrupt_nth_save(monkeypatch, 3)  # model_0000001, model_0000003, then model_final
    with pytest.raises(KeyboardInterrupt):
        train_net.main(_args(*opts))
    monkeypatch.undo()
    assert not (output / "model_final.pth").exists()
    assert not list(output.glob(".*.tmp"))
    assert (output / "last_checkpoint").read_text() == "model_0000003.pth"

    train_net.main(_args("--resume", *opts))  # resumed at the last iteration: nothing to train
    final = torch.load(output / "model_final.pth", weights_only=True)
    saved = torch.load(output / "model_0000003.pth", weights_only=True)
    assert final["iteration"] == 3
    for name, value in saved["model"].items():
        assert torch.equal(final["model"][name], value), name
    results = train_net.main(
        _args(
            "--eval-only", *toy_opts(tmp_path / "eval"), "MODEL.WEIGHTS", output / "model_final.pth"
        )
    )
    assert "JF" in results["rvos"]


def test_resume_reports_an_unreadable_last_checkpoint_and_uses_the_previous(
    train_net, synth_root, tmp_path
):
    output = tmp_path / "output"
    opts = toy_opts(output, max_iter=4, checkpoint_period=2)
    train_net.main(_args(*opts))
    _truncate(output / "model_final.pth", 0.5)  # e.g. written by a tool without atomic saves

    from rvos_d2.engine import RVOSTrainer, setup

    trainer = RVOSTrainer(setup(_args("--resume", *opts)))
    with _records("rvos_d2.engine.checkpoint") as records:
        trainer.resume_or_load(resume=True)
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    assert any(str(output / "model_final.pth") in m and "truncated" in m for m in errors), errors
    previous = torch.load(output / "model_0000003.pth", weights_only=True)["model"]
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, previous[name]), name
    assert trainer.start_iter == 4
    final = torch.load(output / "model_final.pth", weights_only=True)  # rewritten, complete
    assert final["iteration"] == 3


# ------------------------------------------------------------------ 2. truncated videos
def _mp4_boxes(data: bytes, start: int = 0, end: int | None = None):
    offset, end = start, len(data) if end is None else end
    while offset < end:
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        yield kind.decode("latin1"), offset, size
        offset += size


def _move_index_to_front(path: Path) -> None:
    """Rewrites an mp4 with its `moov` index before the media data (a "faststart" file)."""
    data = path.read_bytes()
    boxes = {kind: data[o : o + s] for kind, o, s in _mp4_boxes(data)}
    moov = bytearray(boxes.pop("moov"))
    mdat = boxes.pop("mdat")

    def shift_chunk_offsets(start: int, end: int) -> None:
        for kind, offset, size in _mp4_boxes(moov, start, end):
            if kind in ("moov", "trak", "mdia", "minf", "stbl"):
                shift_chunk_offsets(offset + 8, offset + size)
            elif kind == "stco":
                (count,) = struct.unpack(">I", moov[offset + 12 : offset + 16])
                for at in range(offset + 16, offset + 16 + 4 * count, 4):
                    (value,) = struct.unpack(">I", moov[at : at + 4])
                    moov[at : at + 4] = struct.pack(">I", value + len(moov))

    shift_chunk_offsets(0, len(moov))
    path.write_bytes(b"".join(boxes.values()) + bytes(moov) + mdat)


@pytest.fixture
def truncated_mp4(tmp_path) -> Path:
    """A 12-frame mp4 with its index at the front, cut to half its size."""
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 8, (64, 64))
    for _ in range(12):
        writer.write((rng.random((64, 64, 3)) * 255).astype(np.uint8))
    writer.release()
    _move_index_to_front(path)
    assert len(_read_all(path)) == 12
    _truncate(path, 0.5)
    return path


def test_truncated_video_fails_naming_file_and_counts(truncated_mp4, caplog):
    with pytest.raises(InputFileError) as info:
        _read_all(truncated_mp4)
    message = str(info.value)
    assert str(truncated_mp4) in message and "declares 12" in message
    decoded = int(message.split("decoded ")[1].split()[0])
    assert 0 < decoded < 12
    with caplog.at_level(logging.WARNING, logger="rvos_d2.utils.video_io"):
        frames = _read_all(truncated_mp4, allow_incomplete=True)
    assert len(frames) == decoded
    assert f"decoded {decoded} frames but the container declares 12" in caplog.text


def test_demo_refuses_a_truncated_video(truncated_mp4, tmp_path, capsys):
    demo = _load_tool("demo")
    argv = ["--config-file", str(TINY_CONFIG), "--video", str(truncated_mp4)]
    argv += ["--text", "the red circle", "--output", str(tmp_path / "out"), "--opts", *SMALL]
    with pytest.raises(SystemExit) as info:
        run_cli(demo.main, [*argv, "MODEL.WEIGHTS", ""])
    assert info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(truncated_mp4) in errors[0] and "declares 12" in errors[0]
    # nothing where a complete result goes; what was segmented is marked incomplete
    assert not (tmp_path / "out" / "masks").exists()
    assert not (tmp_path / "out" / "overlay.mp4").exists()
    assert (tmp_path / "out" / "incomplete").is_dir()


def test_demo_with_allow_incomplete_writes_every_decoded_frame(truncated_mp4, tmp_path, caplog):
    demo = _load_tool("demo")
    decoded = len(_read_all(truncated_mp4, allow_incomplete=True))
    argv = ["--config-file", str(TINY_CONFIG), "--video", str(truncated_mp4)]
    argv += ["--text", "the red circle", "--output", str(tmp_path / "out")]
    argv += ["--allow-incomplete-video", "--opts", *SMALL, "MODEL.WEIGHTS", ""]
    with caplog.at_level(logging.WARNING, logger="rvos_d2.utils.video_io"):
        assert demo.main(argv) == 0
    assert "declares 12" in caplog.text
    assert len(list((tmp_path / "out" / "masks").glob("*.png"))) == decoded
    assert (tmp_path / "out" / "overlay.mp4").is_file()
    assert not (tmp_path / "out" / "incomplete").exists()


# ------------------------------------------------------------------ 3. truncated images
def test_truncated_frame_is_named_by_the_video_reader_and_the_mapper(synth_root, tmp_path):
    from rvos_d2.config import load_config
    from rvos_d2.data.mappers import RVOSDatasetMapper

    from detectron2.data import DatasetCatalog

    record = dict(DatasetCatalog.get("synth_test_valid")[0])
    folder = tmp_path / "frames"
    folder.mkdir()
    files = [Path(shutil.copy(f, folder)) for f in record["file_names"]]
    bad = files[2]
    _truncate(bad, 0.7)
    with pytest.raises(OSError, match=f"{bad} is truncated"):
        _read_all(folder)

    cfg = load_config(None, ["INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64"])
    mapper = RVOSDatasetMapper(cfg, is_train=False)
    record["file_names"] = [str(f) for f in files]
    with pytest.raises(OSError, match=f"{bad} is truncated"):
        mapper(record)


# ------------------------------------------------------------------ 4. launcher death
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # zombie: exited
    return True


def _fork_launcher_and_worker(pid_file: Path) -> int:
    """Forks a 'launcher' that forks a 'worker' tied to it; returns the launcher's pid."""
    launcher = os.fork()
    if launcher:
        return launcher
    try:
        if os.fork() == 0:
            launch_module.exit_with_launcher(os.getppid())
            pid_file.write_text(str(os.getpid()))
        while True:
            time.sleep(0.05)
    finally:
        os._exit(0)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("parent_death_signal", [True, False], ids=["prctl", "polling"])
def test_worker_exits_when_its_launcher_is_killed(tmp_path, monkeypatch, parent_death_signal):
    if not parent_death_signal:
        monkeypatch.setattr(launch_module, "_set_parent_death_signal", lambda sig: False)
        monkeypatch.setattr(launch_module, "PARENT_POLL_SECONDS", 0.05)
    pid_file = tmp_path / "worker.pid"
    launcher = _fork_launcher_and_worker(pid_file)
    try:
        deadline = time.time() + 10
        while not pid_file.exists() or not pid_file.read_text():
            assert time.time() < deadline, "the worker did not start"
            time.sleep(0.02)
        worker = int(pid_file.read_text())
        assert _alive(worker)
    finally:
        os.kill(launcher, signal.SIGKILL)
        os.waitpid(launcher, 0)
    deadline = time.time() + 5
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.02)
    survived = _alive(worker)
    if survived:
        os.kill(worker, signal.SIGKILL)
    assert not survived, "the worker outlived its launcher"


LAUNCHER_SCRIPT = """
import os, sys, time
from pathlib import Path

def worker(folder):
    Path(folder, f"{os.getpid()}.pid").write_text("")
    while True:
        time.sleep(0.1)

if __name__ == "__main__":
    from rvos_d2.engine.launch import launch
    launch(worker, 2, dist_url="auto", args=(sys.argv[1],))
"""


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU workers are used without CUDA only")
def test_launch_workers_exit_when_the_launcher_is_killed(tmp_path):
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER_SCRIPT)
    launcher = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=ROOT)
    deadline = time.time() + 120
    while len(list(tmp_path.glob("*.pid"))) < 2:
        assert time.time() < deadline and launcher.poll() is None, "workers did not start"
        time.sleep(0.2)
    workers = [int(p.stem) for p in tmp_path.glob("*.pid")]
    launcher.kill()
    launcher.wait()
    deadline = time.time() + 10
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.1)
    survivors = [w for w in workers if _alive(w)]
    for worker in survivors:
        os.kill(worker, signal.SIGKILL)
    assert not survivors, "workers outlived their launcher"


# ------------------------------------------------------------------ 5. one-line user errors
def _cli_error(capsys, main, argv) -> str:
    with pytest.raises(SystemExit) as info:
        run_cli(main, [str(a) for a in argv])
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_train_net_reports_user_errors_on_one_line(train_net, synth_root, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"_BASE_: {TINY_CONFIG}\nSOLVER:\n  BASE_LRR: 0.1\n")
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: typo.yaml\nSOLVER:\n  MAX_ITER: 3\n")
    for config in (typo, child):  # the file that holds the typo is named
        line = _cli_error(capsys, train_net.cli, ["--config-file", config])
        assert f"{typo}: unknown config key SOLVER.BASE_LRR" in line
        assert "closest valid: SOLVER.BASE_LR" in line

    opts = toy_opts(tmp_path / "out")
    line = _cli_error(capsys, train_net.cli, [*opts, "SOLVER.BACKBONE_MULTIPLER", "0.1"])
    assert "unknown config key SOLVER.BACKBONE_MULTIPLER" in line
    assert "closest valid: SOLVER.BACKBONE_MULTIPLIER" in line

    missing = tmp_path / "nope.yaml"
    assert str(missing) in _cli_error(capsys, train_net.cli, ["--config-file", missing])

    weights = tmp_path / "weights.pth"
    line = _cli_error(capsys, train_net.cli, ["--eval-only", *opts, "MODEL.WEIGHTS", weights])
    assert f"checkpoint not found: {weights}" in line
    torch.save({"model": {"w": torch.zeros(1000)}}, weights)
    _truncate(weights, 0.6)
    line = _cli_error(capsys, train_net.cli, ["--eval-only", *opts, "MODEL.WEIGHTS", weights])
    assert str(weights) in line and "truncated" in line

    line = _cli_error(capsys, train_net.cli, [*opts, "DATASETS.TEST", "('synth_test_vaild',)"])
    assert "DATASETS.TEST: no registered dataset named 'synth_test_vaild'" in line
    assert "closest valid: synth_test_valid" in line and "coco" not in line


def test_convert_checkpoint_reports_missing_and_truncated_input(tmp_path, capsys):
    tool = _load_tool("convert_checkpoint")
    source, output = tmp_path / "resnet.pth", tmp_path / "out.pth"
    assert f"checkpoint not found: {source}" in _cli_error(capsys, tool.main, [source, output])
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, source)
    _truncate(source, 0.5)
    line = _cli_error(capsys, tool.main, [source, output])
    assert str(source) in line and "truncated" in line
    assert not output.exists()


def test_truncated_weights_loaded_directly_name_the_file(tmp_path):
    weights = tmp_path / "model.pth"
    torch.save({"model": nn.Linear(30, 30).state_dict()}, weights)
    _truncate(weights, 0.5)
    with pytest.raises(UserError, match=f"{weights}.*truncated"):
        RVOSCheckpointer(nn.Linear(30, 30)).load(str(weights))


@pytest.mark.slow
def test_train_net_exits_2_with_one_line_in_a_real_process(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "train_net.py"),
            "--config-file",
            tmp_path / "x.yaml",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode == 2
    assert (
        done.stderr.strip() == f"train_net.py: error: config file not found: {tmp_path / 'x.yaml'}"
    )


# ------------------------------------------------------------------ 6. partial loads
class _Net(nn.Module):
    def __init__(self, queries: int):
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.query_embed = nn.Embedding(queries, 4)


def test_shape_mismatch_is_an_error_unless_partial_loads_are_allowed(tmp_path):
    torch.manual_seed(0)
    trained = _Net(queries=5)
    RVOSCheckpointer(trained, str(tmp_path)).save("model")
    path = str(tmp_path / "model.pth")

    other = _Net(queries=3)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(InputError, match=r"query_embed.weight \(5, 4\) vs \(3, 4\)"):
        RVOSCheckpointer(other).load(path)
    for key, value in other.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key])

    RVOSCheckpointer(other, allow_partial=True).load(path)
    assert torch.equal(other.backbone.weight, trained.backbone.weight)
    assert torch.equal(other.query_embed.weight, before["query_embed.weight"])


def test_backbone_only_weights_load_without_a_flag(tmp_path):
    torch.manual_seed(0)
    source = _Net(queries=5)
    backbone_only = {f"backbone.{k}": v for k, v in source.backbone.state_dict().items()}
    torch.save({"model": backbone_only, "matching_heuristics": True}, tmp_path / "bb.pth")
    target = _Net(queries=3)
    RVOSCheckpointer(target).load(str(tmp_path / "bb.pth"))
    assert torch.equal(target.backbone.weight, source.backbone.weight)


def test_changed_num_queries_is_reported_for_referformer(tmp_path):
    from rvos_d2.config import load_config

    from detectron2.modeling import build_model

    small = [*SMALL, "MODEL.WEIGHTS", ""]
    torch.manual_seed(0)
    model = build_model(load_config(TINY_CONFIG, small))
    RVOSCheckpointer(model, str(tmp_path)).save("model")
    changed = build_model(
        load_config(TINY_CONFIG, [*small, "MODEL.QUERY_DECODER.NUM_QUERIES", "3"])
    )
    with pytest.raises(InputError, match="MODEL.WEIGHTS_ALLOW_PARTIAL"):
        RVOSCheckpointer(changed).load(str(tmp_path / "model.pth"))


# ------------------------------------------------------------------ 7. sentences
@pytest.fixture(scope="module")
def text_encoder():
    from rvos_d2.modeling.text_encoder import TextEncoder

    return TextEncoder(name="minilm", out_dim=8, max_tokens=32)


def test_long_sentence_warns_with_token_counts(text_encoder):
    sentence = " ".join(["the small red circle moving left"] * 60)  # about 2,000 characters
    with _records("rvos_d2.modeling.text_encoder") as records:
        features = text_encoder([sentence], "cpu")
    assert features.word_feats.shape[1] == 32
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert any("of 362 tokens truncated to its first 32" in w for w in warnings), warnings
    with _records("rvos_d2.modeling.text_encoder") as records:
        text_encoder(["the red circle"], "cpu")
    assert not records


def test_sentence_without_a_known_token_is_refused(text_encoder):
    with pytest.raises(InputError, match="no token known"):
        text_encoder(["\U0001f600 \U0001f389\U0001f680"], "cpu")
    features = text_encoder(["the dog \U0001f600"], "cpu")  # one unknown token among words
    assert features.word_feats.shape[1] == 5


# ------------------------------------------------------------------ 8. check_dataset.py
@pytest.fixture
def faulty_dataset(synth_root, tmp_path):
    """A copy of the synthetic valid split with planted faults; returns (name, fault paths)."""
    from rvos_d2.data.datasets.synthetic import register_synthetic

    root = Path(shutil.copytree(synth_root, tmp_path / "faulty"))
    videos = sorted((root / "valid" / "JPEGImages").iterdir())
    annotations = root / "valid" / "Annotations"
    truncated = sorted(videos[0].glob("*.jpg"))[1]
    _truncate(truncated, 0.7)
    missing = sorted(videos[1].glob("*.jpg"))[2]
    missing.unlink()
    corrupt_png = sorted((annotations / videos[2].name).glob("*.png"))[0]
    corrupt_png.write_bytes(corrupt_png.read_bytes()[:60])
    resized_png = sorted((annotations / videos[2].name).glob("*.png"))[1]
    from PIL import Image

    with Image.open(resized_png) as image:
        image.resize((20, 20)).save(resized_png)
    register_synthetic(str(root), prefix="faulty_test")
    return "faulty_test_valid", {
        truncated: "is truncated",
        missing: "missing",
        corrupt_png: "is truncated or corrupt",
        resized_png: "size (20, 20)",
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_check_dataset_lists_every_planted_fault(faulty_dataset, workers, capsys):
    name, faults = faulty_dataset
    tool = _load_tool("check_dataset")
    code = tool.main([name, "--workers", str(workers)])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert code == 1
    assert len(lines) == len(faults), lines
    for path, problem in faults.items():
        assert any(line.startswith(str(path)) and problem in line for line in lines), path
    assert f"{name}: 4 problems" in err and "file" in err  # summary and tqdm's progress bar


def test_check_dataset_passes_a_clean_split_and_rejects_unknown_names(synth_root, capsys):
    tool = _load_tool("check_dataset")
    assert tool.main(["synth_test_valid", "--workers", "1", "--no-progress"]) == 0
    assert capsys.readouterr().out == ""
    line = _cli_error(capsys, tool.main, ["synth_test_vaild"])
    assert "no registered dataset named 'synth_test_vaild'" in line

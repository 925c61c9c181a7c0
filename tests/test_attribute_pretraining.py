"""Dense attribute pretraining: labels from meta.json, training, checkpoint, command-line tool."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from rvos_d2.config import load_config
from rvos_d2.data.prepare.synthetic import generate_split
from rvos_d2.engine import RVOSCheckpointer
from rvos_d2.engine.attribute_pretraining import (
    DenseAttributeHead,
    attribute_accuracy,
    backbone_checkpoint,
    load_attribute_videos,
    pretrain_backbone,
)
from rvos_d2.modeling.backbone.tiny import TinyConvBackbone
from tools.pretrain_backbone import main as pretrain_main

from detectron2.modeling import build_backbone

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml"
ATTRIBUTES = ["category", "colour", "size", "motion"]
SIZE = 48
PIXEL_MEAN = [123.675, 116.28, 103.53]
PIXEL_STD = [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def synth_train(tmp_path_factory) -> Path:
    """Root of 4 synthetic train videos of 6 frames, 48x48."""
    root = tmp_path_factory.mktemp("attr_synth")
    generate_split(root, "train", num_videos=4, seed=0, num_frames=6, height=SIZE, width=SIZE)
    return root


def _backbone() -> TinyConvBackbone:
    return TinyConvBackbone(
        width=8, out_features=["res2", "res3", "res4", "res5"], temporal_stages=["res2"]
    )


def _pretrain(backbone, videos, iterations, **overrides):
    """pretrain_backbone with the test defaults (2 clips of 2 frames at lr 1e-3)."""
    kwargs = dict(
        clips_per_batch=2, frames_per_clip=2, lr=1e-3, pixel_mean=PIXEL_MEAN, pixel_std=PIXEL_STD
    )
    return pretrain_backbone(backbone, videos, iterations=iterations, **{**kwargs, **overrides})


def test_labels_follow_annotations_and_meta(synth_train):
    split = synth_train / "train"
    videos = load_attribute_videos(split, ATTRIBUTES, SIZE)
    meta = json.loads((split / "meta.json").read_text())["videos"]
    assert videos.video_ids == sorted(meta) and len(videos.frames) == 4
    for name in ATTRIBUTES:
        values = {o[name] for v in meta.values() for o in v["objects"].values()}
        assert videos.vocab[name] == sorted(values)
    vid = videos.video_ids[0]
    frame_names = sorted(p.stem for p in (split / "JPEGImages" / vid).glob("*.jpg"))
    frames, labels = videos.frames[0], videos.labels[0]
    assert frames.dtype == torch.uint8 and frames.shape == (6, 3, SIZE, SIZE)
    assert labels.dtype == torch.int64 and labels.shape == (6, len(ATTRIBUTES), 12, 12)
    # Labels are at full annotation size / 4: compare with the nearest-resized id map.
    ids = np.asarray(
        Image.open(split / "Annotations" / vid / f"{frame_names[0]}.png").resize(
            (SIZE // 4, SIZE // 4), Image.NEAREST
        )
    )
    assert (labels[0][:, ids == 0] == 0).all()
    present = [int(o) for o in meta[vid]["objects"] if (ids == int(o)).any()]
    assert present
    for obj_id in present:
        obj = meta[vid]["objects"][str(obj_id)]
        for a, name in enumerate(ATTRIBUTES):
            expected = videos.vocab[name].index(obj[name]) + 1
            assert (labels[0, a][torch.from_numpy(ids == obj_id)] == expected).all()


def test_missing_attribute_names_object_and_attribute(tmp_path, synth_train):
    split = tmp_path / "train"
    meta = json.loads((synth_train / "train" / "meta.json").read_text())
    vid = sorted(meta["videos"])[1]
    obj_id = sorted(meta["videos"][vid]["objects"])[0]
    del meta["videos"][vid]["objects"][obj_id]["colour"]
    split.mkdir()
    (split / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{vid}.*object '{obj_id}'.*'colour'"):
        load_attribute_videos(split, ["category", "colour"], SIZE)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_attribute_videos(tmp_path / "valid", ["category"], SIZE)


def test_pretraining_reduces_the_loss(synth_train):
    torch.manual_seed(0)
    videos = load_attribute_videos(synth_train / "train", ATTRIBUTES, SIZE)
    backbone = _backbone()
    log = _pretrain(
        backbone, videos, 30, clips_per_batch=4, frames_per_clip=3, lr=3e-3, log_period=1
    )
    assert [e["iteration"] for e in log] == list(range(1, 31))
    for entry in log:
        assert set(entry["fg_accuracy"]) == set(ATTRIBUTES)
        assert all(0 <= v <= 1 for v in entry["fg_accuracy"].values())
    first = np.mean([e["loss"] for e in log[:3]])
    last = np.mean([e["loss"] for e in log[-3:]])
    assert np.isfinite(last) and last < 0.6 * first, (first, last)


def test_held_out_split_uses_the_given_vocab(tmp_path):
    generate_split(tmp_path, "valid", num_videos=3, seed=5, num_frames=4, height=SIZE, width=SIZE)
    own = load_attribute_videos(tmp_path / "valid", ATTRIBUTES, SIZE)
    vocab = {name: ["unseen", *reversed(values)] for name, values in own.vocab.items()}
    held_out = load_attribute_videos(tmp_path / "valid", ATTRIBUTES, SIZE, vocab=vocab)
    assert held_out.vocab == vocab
    for a, name in enumerate(ATTRIBUTES):  # the same pixels carry the renumbered classes
        for mine, theirs in zip(own.labels, held_out.labels):
            names = [None, *own.vocab[name]]
            relabelled = [None, *vocab[name]]
            assert [names[i] for i in mine[:, a].flatten().tolist()] == [
                relabelled[i] for i in theirs[:, a].flatten().tolist()
            ]
    meta = json.loads((tmp_path / "valid" / "meta.json").read_text())
    vid, video = next(iter(meta["videos"].items()))
    obj_id = next(iter(video["objects"]))
    video["objects"][obj_id]["colour"] = "ultraviolet"
    (tmp_path / "valid" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{vid}.*'{obj_id}'.*colour 'ultraviolet'"):
        load_attribute_videos(tmp_path / "valid", ATTRIBUTES, SIZE, vocab=own.vocab)


def test_attribute_accuracy_counts_foreground_pixels(synth_train):
    videos = load_attribute_videos(synth_train / "train", ATTRIBUTES, SIZE)
    backbone = _backbone()
    classes = {name: len(values) + 1 for name, values in videos.vocab.items()}
    head = DenseAttributeHead(backbone.output_shape(), classes)
    for classifier in head.classifiers.values():  # predicts class 1 at every pixel
        nn.init.zeros_(classifier.weight)
        nn.init.zeros_(classifier.bias)
        classifier.bias.data[1] = 1.0
    accuracy = attribute_accuracy(backbone, head, videos, PIXEL_MEAN, PIXEL_STD)
    labels = torch.cat(videos.labels)
    for a, name in enumerate(ATTRIBUTES):
        y = labels[:, a]
        assert accuracy[name] == pytest.approx((y[y > 0] == 1).float().mean().item())
    assert backbone.training and head.training  # modes are restored


def test_pretraining_reports_held_out_accuracy(synth_train):
    videos = load_attribute_videos(synth_train / "train", ["colour"], SIZE)
    log = _pretrain(_backbone(), videos, 2, log_period=1, eval_videos=videos)
    assert "heldout_fg_accuracy" not in log[0]
    assert 0 <= log[-1]["heldout_fg_accuracy"]["colour"] <= 1
    other = load_attribute_videos(synth_train / "train", ["category"], SIZE)
    with pytest.raises(ValueError, match="eval_videos"):
        _pretrain(_backbone(), videos, 1, eval_videos=other)


def test_checkpoint_loads_into_a_meta_architecture(synth_train):
    videos = load_attribute_videos(synth_train / "train", ["category"], SIZE)
    trained = _backbone()
    _pretrain(trained, videos, 2)
    checkpoint = backbone_checkpoint(trained)
    model = nn.Module()
    model.backbone = _backbone()
    result = model.load_state_dict(checkpoint["model"])
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(1, 2, 3, SIZE, SIZE)
    trained.eval()
    model.eval()
    with torch.no_grad():
        expected, actual = trained(x), model.backbone(x)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0)


def test_tool_writes_a_loadable_checkpoint(tmp_path, synth_train, capsys):
    output = tmp_path / "out" / "backbone.pth"
    opts = ["MODEL.TINY_BACKBONE.WIDTH", "8"]
    args = ["--config-file", str(TINY_CONFIG), "--dataset-root", str(synth_train)]
    args += ["--size", str(SIZE), "--iterations", "2", "--clips-per-batch", "2"]
    code = pretrain_main([*args, "--output", str(output), *opts])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(output) and summary["last"]["iteration"] == 2
    assert "heldout_fg_accuracy" not in summary["last"]
    checkpoint = torch.load(output, weights_only=True)
    state = checkpoint["model"]
    assert state and all(k.startswith("backbone.") for k in state)
    record = checkpoint["pretraining"]
    assert record["iterations"] == 2 and record["clips_per_batch"] == 2
    assert record["attributes"] == ["category"] and record["size"] == SIZE
    # MODEL.WEIGHTS loads it into a model whose `backbone` is the config's backbone.
    model = nn.Module()
    model.backbone = build_backbone(load_config(TINY_CONFIG, opts))
    RVOSCheckpointer(model).load(str(output))
    expected = {k.removeprefix("backbone."): v for k, v in state.items()}
    torch.testing.assert_close(model.backbone.state_dict(), expected)


def test_pretraining_trains_a_backbone_built_frozen(synth_train):
    videos = load_attribute_videos(synth_train / "train", ["category"], SIZE)
    backbone = TinyConvBackbone(8, ["res2", "res3", "res4", "res5"], freeze=True)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    _pretrain(backbone, videos, 2, frames_per_clip=1)
    assert not torch.equal(backbone.stem.weight, before["stem.weight"])

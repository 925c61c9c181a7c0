"""Dense attribute pretraining: dataset, mapper, model, evaluator, trainer run and export."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvos_d2.config import load_config
from rvos_d2.data import build_dataset_mapper
from rvos_d2.data.datasets.attributes import SYNTH_ATTRIBUTES, register_synthetic_attributes
from rvos_d2.engine import RVOSCheckpointer
from rvos_d2.engine.attribute_pretraining import attribute_config, pretrain_backbone
from rvos_d2.evaluation import build_evaluator
from tools.pretrain_backbone import main as pretrain_main

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_backbone, build_model

ROOT = Path(__file__).resolve().parents[1]
ATTRIBUTES_CONFIG = ROOT / "configs" / "Synthetic" / "Attributes-tiny.yaml"
REFERFORMER_CONFIG = ROOT / "configs" / "Synthetic" / "ReferFormer-tiny.yaml"
SIZE = 48
# the test dataset on small frames and batches; the backbone stays ReferFormer-tiny's
SMALL = [
    "DATASETS.TRAIN", ("synth_test_attributes_train",),
    "DATASETS.TEST", ("synth_test_attributes_valid",),
    "INPUT.MIN_SIZE_TRAIN", (SIZE,),
    "INPUT.MIN_SIZE_TEST", SIZE,
    "SOLVER.IMS_PER_BATCH", 2,
]  # fmt: skip


@pytest.fixture(scope="module")
def attr_data(synth_root):
    """synth_test_attributes_{train,valid} over the session's synthetic dataset."""
    register_synthetic_attributes(synth_root, prefix="synth_test_attributes")
    return synth_root


def _cfg(*opts):
    return load_config(ATTRIBUTES_CONFIG, [*SMALL, *opts])


def test_dataset_labels_objects_with_the_training_values(attr_data):
    valid = DatasetCatalog.get("synth_test_attributes_valid")
    vocab = MetadataCatalog.get("synth_test_attributes_valid").attribute_classes
    train_meta = json.loads((attr_data / "train" / "meta.json").read_text())["videos"]
    for name in SYNTH_ATTRIBUTES:
        values = {o[name] for v in train_meta.values() for o in v["objects"].values()}
        assert vocab[name] == sorted(values)
    meta = json.loads((attr_data / "valid" / "meta.json").read_text())["videos"]
    assert [d["video_id"] for d in valid] == sorted(meta)
    for d in valid:
        frames = sorted((attr_data / "valid" / "JPEGImages" / d["video_id"]).glob("*.jpg"))
        assert d["file_names"] == [str(f) for f in frames] and d["length"] == len(frames)
        assert [Path(a).stem for a in d["annotation_files"]] == [f.stem for f in frames]
        for obj_id, obj in meta[d["video_id"]]["objects"].items():
            for name in SYNTH_ATTRIBUTES:
                assert vocab[name][d["object_labels"][int(obj_id)][name] - 1] == obj[name]


def test_dataset_errors_name_the_object_and_value(tmp_path, attr_data):
    root = tmp_path / "broken"
    (root / "valid").mkdir(parents=True)
    (root / "train").symlink_to(attr_data / "train")
    valid = register_synthetic_attributes(root, prefix="broken_attributes")[1]
    meta = json.loads((attr_data / "valid" / "meta.json").read_text())
    vid = sorted(meta["videos"])[0]
    obj_id = sorted(meta["videos"][vid]["objects"])[0]
    meta["videos"][vid]["objects"][obj_id]["colour"] = "ultraviolet"
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{vid}.*'{obj_id}'.*colour 'ultraviolet'"):
        DatasetCatalog.get(valid)
    del meta["videos"][vid]["objects"][obj_id]["colour"]
    (root / "valid" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=rf"{vid}.*'{obj_id}'.*colour None"):
        DatasetCatalog.get(valid)


def test_mapper_labels_pixels_with_their_objects_attributes(attr_data):
    d = DatasetCatalog.get("synth_test_attributes_train")[0]
    np.random.seed(0)
    x = build_dataset_mapper(_cfg(), is_train=True)(d)
    assert x["image"].shape == (3, 3, SIZE, SIZE) and x["image"].dtype == torch.uint8
    t0 = x["frame_ids"][0]
    assert x["frame_ids"] == [t0, t0 + 1, t0 + 2]
    with Image.open(d["annotation_files"][t0]) as ann:
        ids = np.asarray(ann.resize((SIZE // 4,) * 2, Image.NEAREST)).astype(np.int64)
    for name in SYNTH_ATTRIBUTES:
        labels = x["attribute_labels"][name]
        assert labels.shape == (3, SIZE // 4, SIZE // 4) and labels.dtype == torch.int64
        expected = np.zeros_like(ids)
        for obj_id, obj_labels in d["object_labels"].items():
            expected[ids == obj_id] = obj_labels[name]
        assert (expected > 0).any()
        np.testing.assert_array_equal(labels[0].numpy(), expected)
    video = build_dataset_mapper(_cfg(), is_train=False)(d)
    assert video["frame_ids"] == list(range(d["length"]))
    assert (video["height"], video["width"]) == (d["height"], d["width"])
    with pytest.raises(ValueError, match=r"colour class \d is outside 1\.\.1 .*NUM_CLASSES"):
        build_dataset_mapper(_cfg("MODEL.DENSE_ATTRIBUTES.NUM_CLASSES", [7, 1, 2, 5]), True)(d)


def test_model_training_reduces_a_finite_loss(attr_data):
    cfg = _cfg("MODEL.TINY_BACKBONE.WIDTH", 8)
    torch.manual_seed(0)
    np.random.seed(0)
    model = build_model(cfg).train()
    mapper = build_dataset_mapper(cfg, is_train=True)
    dicts = DatasetCatalog.get("synth_test_attributes_train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    totals = []
    for step in range(30):
        batch = [mapper(dicts[(2 * step + i) % len(dicts)]) for i in range(4)]
        losses = model(batch)
        assert set(losses) == {f"loss_{name}" for name in SYNTH_ATTRIBUTES}
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert np.mean(totals[-3:]) < 0.6 * np.mean(totals[:3]), totals


def test_evaluator_pools_object_pixels_per_attribute(attr_data):
    evaluator = build_evaluator(_cfg(), "synth_test_attributes_valid")
    evaluator.reset()
    # video a: 4 object pixels of colour, 3 right; no object pixel of size
    labels = {"colour": torch.tensor([[[0, 1, 2], [2, 2, 0]]]), "size": torch.zeros(1, 2, 3).long()}
    colour = torch.tensor([[[1, 1, 2], [2, 1, 2]]])
    scores = {
        "colour": torch.nn.functional.one_hot(colour, 3).permute(0, 3, 1, 2).float(),
        "size": torch.rand(1, 3, 2, 3),
    }
    evaluator.process(
        [{"video_id": "a", "attribute_labels": labels}], [{"attribute_scores": scores}]
    )
    # video b: one object pixel, colour wrong (2 for 1), size right (2)
    labels = {"colour": torch.tensor([[[1]]]), "size": torch.tensor([[[2]]])}
    scores = {
        "colour": torch.tensor([0.2, 0.1, 0.7]).view(1, 3, 1, 1),
        "size": torch.tensor([0.1, 0.3, 0.6]).view(1, 3, 1, 1),
    }
    evaluator.process(
        [{"video_id": "b", "attribute_labels": labels}], [{"attribute_scores": scores}]
    )
    result = evaluator.evaluate()["attributes"]
    assert result["colour"] == pytest.approx(3 / 5)
    assert result["size"] == 1.0
    assert result["mean"] == pytest.approx((3 / 5 + 1) / 2)
    evaluator.reset()
    with pytest.raises(ValueError, match="colour predictions are"):
        evaluator.process(
            [{"video_id": "c", "attribute_labels": {"colour": torch.zeros(1, 2, 2).long()}}],
            [{"attribute_scores": {"colour": torch.rand(1, 3, 2, 3)}}],
        )


def test_pretraining_writes_a_backbone_that_referformer_tiny_loads(attr_data, tmp_path):
    output = tmp_path / "backbone" / "attributes.pth"
    cfg = attribute_config(ATTRIBUTES_CONFIG, output, [*SMALL, "SOLVER.MAX_ITER", 3])
    results = pretrain_backbone(cfg, output)
    accuracy = results["synth_test_attributes_valid"]["attributes"]
    assert set(accuracy) == {*SYNTH_ATTRIBUTES, "mean"}
    assert all(0 <= v <= 1 for v in accuracy.values())
    assert (tmp_path / "backbone" / "attributes" / "model_final.pth").is_file()
    checkpoint = torch.load(output, weights_only=True)
    state = checkpoint["model"]
    assert state and all(k.startswith("backbone.") for k in state)
    record = checkpoint["pretraining"]
    assert record["iterations"] == 3 and record["attributes"] == list(SYNTH_ATTRIBUTES)
    assert record["clips_per_batch"] == 2 and record["size"] == [SIZE]
    # Every backbone tensor of ReferFormer-tiny is in the file, with its shape.
    referformer = load_config(REFERFORMER_CONFIG)
    backbone = build_backbone(referformer)
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in state.items()})
    # MODEL.WEIGHTS loads it through the RVOS checkpointer.
    holder = torch.nn.Module()
    holder.backbone = build_backbone(referformer)
    RVOSCheckpointer(holder).load(str(output))
    torch.testing.assert_close(holder.backbone.state_dict(), backbone.state_dict())


def test_tool_prints_the_results_and_rejects_other_configs(attr_data, tmp_path, capsys):
    output = tmp_path / "tool.pth"
    args = ["--output", str(output), "--iterations", "1", *map(str, SMALL)]
    assert pretrain_main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output"] == str(output)
    assert set(summary["results"]) == {"synth_test_attributes_valid"}
    assert torch.load(output, weights_only=True)["pretraining"]["iterations"] == 1
    with pytest.raises(ValueError, match="ReferFormer-tiny.yaml.*DenseAttributeClassifier"):
        pretrain_main(["--config-file", str(REFERFORMER_CONFIG), "--output", str(output)])

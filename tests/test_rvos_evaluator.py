"""RVOSEvaluator end to end on tiny registered datasets, including a two-process gather."""

import csv
import pickle

import numpy as np
import pytest
import torch

import rvos_d2  # noqa: F401  (shims before detectron2 submodules)
from rvos_d2.engine.launch import launch
from rvos_d2.evaluation import (
    A2DEvaluator,
    RVOSEvaluator,
    RVOSSubmissionWriter,
    build_evaluator,
    metrics,
)
from rvos_d2.evaluation.rvos_evaluator import summarize
from tests.fixtures.eval_data import (
    EVAL_A2D,
    EVAL_RVOS,
    EVAL_SUBMISSION,
    RVOS_ANNOTATED,
    model_io,
    register_eval_datasets,
    target_mask,
)

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.utils import comm

PAIR_METRICS = ["J", "F", "JF", *metrics.precision_at([1.0]), "overall_IoU", "mean_IoU"]
METRIC_KEYS = PAIR_METRICS + ["IoU_variance", "JF_variance"]


def _run(dataset_name, predict=target_mask, output_dir=None):
    evaluator = RVOSEvaluator(dataset_name, output_dir, distributed=False)
    evaluator.reset()
    for d in DatasetCatalog.get(dataset_name):
        evaluator.process(*[[x] for x in model_io(d, predict)])
    return evaluator.evaluate()


def _garbage_outside_annotations(d, frame):
    """The true target on annotated frames, an all-foreground mask elsewhere."""
    if d["mask_annotations"][frame] is None:
        return np.ones((d["height"], d["width"]), bool)
    return target_mask(d, frame)


def test_perfect_predictions_score_one(eval_root):
    result = _run(EVAL_RVOS, _garbage_outside_annotations)
    assert list(result) == ["rvos"]
    assert list(result["rvos"]) == METRIC_KEYS
    for key, value in result["rvos"].items():
        assert value == (0.0 if key.endswith("_variance") else 1.0), key


def test_perfect_predictions_on_the_synthetic_dataset(synth_root):
    from rvos_d2.data.mask_io import load_target_mask

    def truth(d, frame):
        return load_target_mask(d, frame)

    result = _run("synth_test_valid", truth)
    assert result["rvos"]["J"] == 1.0 and result["rvos"]["F"] == 1.0


def test_empty_prediction_for_one_pair_by_hand(eval_root):
    # v2 expression 1 targets object 2, which is absent on v2's annotated frame 3: an empty
    # prediction scores J = F = 1 there and 0 on the other 4 annotated frames.
    def predict(d, frame):
        if (d["video_id"], d["exp_id"]) == ("v2", "1"):
            return np.zeros((d["height"], d["width"]), bool)
        return target_mask(d, frame)

    dicts = DatasetCatalog.get(EVAL_RVOS)
    result = _run(EVAL_RVOS, predict)["rvos"]
    pairs, frames = len(dicts), sum(len(RVOS_ANNOTATED[d["video_id"]]) for d in dicts)
    assert result["J"] == pytest.approx((pairs - 1 + 1 / 5) / pairs)
    assert result["F"] == pytest.approx((pairs - 1 + 1 / 5) / pairs)
    assert result["prec@0.5"] == pytest.approx((frames - 4) / frames)
    assert result["mean_IoU"] == pytest.approx((frames - 4) / frames)
    d = next(d for d in dicts if (d["video_id"], d["exp_id"]) == ("v2", "1"))
    lost = sum(target_mask(d, f).sum() for f in RVOS_ANNOTATED["v2"])
    total = sum(target_mask(d, f).sum() for d in dicts for f in RVOS_ANNOTATED[d["video_id"]])
    assert result["overall_IoU"] == pytest.approx((total - lost) / total)


def test_per_video_csv(eval_root, tmp_path):
    def predict(d, frame):  # v0 expression 0 predicts the other object: J = 0 on every frame
        if (d["video_id"], d["exp_id"]) == ("v0", "0"):
            return target_mask({**d, "obj_ids": [2]}, frame)
        return target_mask(d, frame)

    _run(EVAL_RVOS, predict, output_dir=str(tmp_path))
    with open(tmp_path / f"{EVAL_RVOS}_per_video.csv") as f:
        rows = list(csv.DictReader(f))
    dicts = DatasetCatalog.get(EVAL_RVOS)
    assert [(r["video_id"], r["exp_id"]) for r in rows] == sorted(
        (d["video_id"], d["exp_id"]) for d in dicts
    )
    assert list(rows[0]) == ["video_id", "exp_id", "J", "F", "JF", "frames"]
    by_key = {(r["video_id"], r["exp_id"]): r for r in rows}
    assert by_key[("v1", "0")]["frames"] == "3"
    assert float(by_key[("v1", "0")]["JF"]) == 1.0
    assert float(by_key[("v0", "0")]["J"]) == 0.0


def test_groups_from_metadata_are_averaged(eval_root, tmp_path):
    name = "eval_tiny_grouped"
    base = DatasetCatalog.get(EVAL_RVOS)
    annotator = {"v0": 1, "v1": 2, "v2": 2, "v3": 2}
    dicts = [{**d, "dataset_name": name, "annotator": annotator[d["video_id"]]} for d in base]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(evaluator_type="rvos", eval_group_by=("annotator",))
    try:
        # Annotator 1 (video v0) perfect, annotator 2 (v1..v3) all empty predictions.
        def predict(d, frame):
            if d["video_id"] == "v0":
                return target_mask(d, frame)
            return np.zeros((d["height"], d["width"]), bool)

        result = _run(name, predict, output_dir=str(tmp_path))["rvos"]
        # Mean over annotators, not over pairs: (1 + J of annotator 2) / 2.
        empty_frames = {("v2", "1")}  # the one pair with an annotated empty target frame
        grp2 = [d for d in dicts if annotator[d["video_id"]] == 2]
        j2 = np.mean([1 / 5 if (d["video_id"], d["exp_id"]) in empty_frames else 0 for d in grp2])
        assert result["J"] == pytest.approx((1 + j2) / 2)
        with open(tmp_path / f"{name}_per_video.csv") as f:
            header = next(csv.reader(f))
        assert header == ["video_id", "exp_id", "annotator", "J", "F", "JF", "frames"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_summarize_needs_a_scored_frame():
    record = {"video_id": "v", "exp_id": "0", "group": (), "J": [], "F": [], "I": [], "U": []}
    with pytest.raises(ValueError, match="no annotated frame"):
        summarize([record])


def test_missing_annotated_frame_prediction_is_an_error(eval_root):
    d = next(d for d in DatasetCatalog.get(EVAL_RVOS) if d["video_id"] == "v1")
    evaluator = RVOSEvaluator(EVAL_RVOS, distributed=False)
    model_input, output = model_io(d, frame_ids=[0, 1, 2, 3])  # annotated frame 4 missing
    with pytest.raises(ValueError, match=r"no prediction for frames \[4\]"):
        evaluator.process([model_input], [output])
    # Leaving out an unannotated frame (1) is fine.
    model_input, output = model_io(d, frame_ids=[0, 2, 4])
    evaluator.process([model_input], [output])


def test_wrong_prediction_size_is_an_error(eval_root):
    d = DatasetCatalog.get(EVAL_RVOS)[0]
    model_input, output = model_io(d)
    output["pred_masks"] = output["pred_masks"][:, :-1]
    evaluator = RVOSEvaluator(EVAL_RVOS, distributed=False)
    with pytest.raises(ValueError, match="original size"):
        evaluator.process([model_input], [output])


def test_split_without_masks_is_an_error(eval_root):
    d = DatasetCatalog.get(EVAL_SUBMISSION)[0]
    evaluator = RVOSEvaluator(EVAL_SUBMISSION, distributed=False)
    with pytest.raises(ValueError, match="rvos_submission"):
        evaluator.process(*[[x] for x in model_io(d, lambda d, i: np.zeros((1, 1)))])


def test_processing_a_pair_twice_is_an_error(eval_root):
    d = DatasetCatalog.get(EVAL_RVOS)[0]
    evaluator = RVOSEvaluator(EVAL_RVOS, distributed=False)
    for _ in range(2):
        evaluator.process(*[[x] for x in model_io(d)])
    with pytest.raises(ValueError, match="more than once"):
        evaluator.evaluate()


def test_build_evaluator_dispatches_on_evaluator_type(eval_root, rvos_cfg, tmp_path):
    rvos_cfg.OUTPUT_DIR = str(tmp_path)
    assert isinstance(build_evaluator(rvos_cfg, EVAL_RVOS), RVOSEvaluator)
    assert isinstance(build_evaluator(rvos_cfg, EVAL_A2D, str(tmp_path)), A2DEvaluator)
    writer = build_evaluator(rvos_cfg, EVAL_SUBMISSION)
    assert isinstance(writer, RVOSSubmissionWriter)
    writer.process(*[[x] for x in model_io(DatasetCatalog.get(EVAL_SUBMISSION)[0])])
    writer.evaluate()  # the default output folder is <OUTPUT_DIR>/inference/<dataset>
    assert (tmp_path / "inference" / EVAL_SUBMISSION / "submission.zip").is_file()
    name = "eval_tiny_unknown_type"
    DatasetCatalog.register(name, list)
    MetadataCatalog.get(name).set(evaluator_type="coco")
    try:
        with pytest.raises(ValueError, match="evaluator_type 'coco'"):
            build_evaluator(rvos_cfg, name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


# --------------------------------------------------------------------------------------------
# Two processes (gloo on CPU): each rank processes half of the pairs.
# --------------------------------------------------------------------------------------------


def _imperfect(d, frame):
    """A deterministic, pair-dependent imperfect prediction: the target shifted and dilated."""
    shift = (int(d["exp_id"]) + len(d["video_id"]) + frame) % 3
    mask = np.roll(target_mask(d, frame), shift, axis=1)
    if d["video_id"] in ("v1", "v3"):
        mask[1:] |= mask[:-1]
    return mask


def _distributed_worker(root, out_dir, result_file):
    """One worker of rvos_d2's CPU launcher: evaluates its share of the pairs."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    register_eval_datasets(root)
    evaluator = RVOSEvaluator(EVAL_RVOS, str(out_dir), distributed=True)
    evaluator.reset()
    for d in DatasetCatalog.get(EVAL_RVOS)[rank::world_size]:
        evaluator.process(*[[x] for x in model_io(d, _imperfect)])
    result = evaluator.evaluate()
    with open(f"{result_file}.{rank}", "wb") as f:
        pickle.dump(result, f)


@pytest.mark.skipif(torch.cuda.device_count() == 1, reason="two workers need 0 or >= 2 GPUs")
def test_two_process_gather_equals_single_process(eval_root, tmp_path):
    single_dir, multi_dir = tmp_path / "single", tmp_path / "multi"
    expected = _run(EVAL_RVOS, _imperfect, output_dir=str(single_dir))
    assert 0 < expected["rvos"]["JF"] < 1
    result_file = tmp_path / "result"
    launch(_distributed_worker, 2, dist_url="auto", args=(eval_root, multi_dir, str(result_file)))
    with open(f"{result_file}.0", "rb") as f:
        main_result = pickle.load(f)
    with open(f"{result_file}.1", "rb") as f:
        assert pickle.load(f) == {}
    assert list(main_result["rvos"]) == list(expected["rvos"])
    for key, value in expected["rvos"].items():
        assert main_result["rvos"][key] == pytest.approx(value, rel=1e-12), key
    csv_name = f"{EVAL_RVOS}_per_video.csv"
    assert (multi_dir / csv_name).read_text() == (single_dir / csv_name).read_text()


def test_torch_threshold_is_strictly_above_half(eval_root):
    d = DatasetCatalog.get(EVAL_RVOS)[0]
    model_input, output = model_io(d)
    # Probability exactly 0.5 is background: the target at 0.5 everywhere predicts nothing.
    output["pred_masks"] = torch.full_like(output["pred_masks"], 0.5)
    evaluator = RVOSEvaluator(EVAL_RVOS, distributed=False)
    evaluator.process([model_input], [output])
    assert evaluator.evaluate()["rvos"]["J"] == 0.0


def test_merge_object_probabilities_follows_the_published_rule():
    from rvos_d2.evaluation.object_merge import merge_object_probabilities

    first = np.array([[0.9, 0.6, 0.4, 0.7, 0.0]])
    second = np.array([[0.8, 0.7, 0.45, 0.7, 0.0]])
    # highest probability >= 0.5 wins, a tie goes to the first object, below 0.5 is background
    assert merge_object_probabilities([first, second]).tolist() == [[1, 2, 0, 1, 0]]
    with pytest.raises(ValueError, match="differ in shape"):
        merge_object_probabilities([first, second[:, :3]])


def test_objects_of_one_annotation_are_merged_before_scoring(eval_root):
    base = [d for d in DatasetCatalog.get(EVAL_RVOS) if d["video_id"] in ("v0", "v1", "v2")]

    def predict(d, frame):
        """Expression "0" (object 1): both objects at 0.6; expression "1": object 2 at 0.9."""
        if d["exp_id"] == "0":
            return target_mask({**d, "obj_ids": [1, 2]}, frame) * 0.6
        return target_mask(d, frame) * 0.9

    results = {}
    for merge in ((), ("annotator",)):
        name = f"eval_tiny_merge_{len(merge)}"
        dicts = [{**d, "dataset_name": name, "annotator": 1} for d in base]
        DatasetCatalog.register(name, lambda dicts=dicts: dicts)
        MetadataCatalog.get(name).set(
            evaluator_type="rvos", eval_group_by=("annotator",), merge_objects_by=merge
        )
        try:
            evaluator = RVOSEvaluator(name, None, distributed=False)
            evaluator.reset()
            for d in DatasetCatalog.get(name):
                model_input, output = model_io(d, lambda d, f: np.zeros((d["height"], d["width"])))
                output["pred_masks"] = torch.from_numpy(
                    np.stack([predict(d, f) for f in model_input["frame_ids"]]).astype(np.float32)
                )
                evaluator.process([model_input], [output])
            results[merge] = evaluator.evaluate()["rvos"]
        finally:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
    assert results[()]["J"] < 0.9  # object 1's expression also covers object 2
    assert results[("annotator",)]["J"] == pytest.approx(1.0)  # object 2 takes its pixels


def test_candidate_recall_is_reported_when_every_output_has_it():
    def record(exp_id, candidate=None):
        r = {"video_id": "v", "exp_id": exp_id, "group": (), "J": [0.1], "F": [0.2]}
        r.update(I=[1], U=[10])
        if candidate is not None:
            r["candidate_iou"] = candidate
        return r

    result = summarize([record("0", 0.9), record("1", 0.5), record("2", 0.2)])
    assert result["candidate_recall@0.5"] == pytest.approx(2 / 3)
    assert result["candidate_IoU"] == pytest.approx(1.6 / 3)
    assert "candidate_recall@0.5" not in summarize([record("0", 0.9), record("1")])

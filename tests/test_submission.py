"""Submission writer: PNG content and the zip layout Annotations/<video>/<exp_id>/<frame>.png."""

import zipfile

import cv2
import numpy as np
import pytest

from rvos_d2.evaluation import RVOSSubmissionWriter
from tests.fixtures.eval_data import EVAL_SUBMISSION, model_io

from detectron2.data import DatasetCatalog


def _prediction(d, frame):
    """A per-(video, expression, frame) box, so every written file has distinct content."""
    mask = np.zeros((d["height"], d["width"]), bool)
    top = frame + int(d["exp_id"])
    mask[top : top + 5, 2 : 4 + frame] = True
    return mask


def _write(tmp_path, predict=_prediction):
    writer = RVOSSubmissionWriter(EVAL_SUBMISSION, str(tmp_path), distributed=False)
    writer.reset()
    for d in DatasetCatalog.get(EVAL_SUBMISSION):
        writer.process(*[[x] for x in model_io(d, predict)])
    return writer.evaluate()


def test_zip_layout_and_png_content(eval_root, tmp_path):
    assert _write(tmp_path) == {}
    dicts = DatasetCatalog.get(EVAL_SUBMISSION)
    expected = {
        f"Annotations/{d['video_id']}/{d['exp_id']}/{name}.png"
        for d in dicts
        for name in d["frame_names"]
    }
    with zipfile.ZipFile(tmp_path / "submission.zip") as archive:
        assert set(archive.namelist()) == expected
        assert len(archive.namelist()) == len(expected)
        for d in dicts:
            for frame, name in enumerate(d["frame_names"]):
                data = archive.read(f"Annotations/{d['video_id']}/{d['exp_id']}/{name}.png")
                png = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
                assert png.dtype == np.uint8 and png.shape == (d["height"], d["width"])
                assert set(np.unique(png)) <= {0, 255}
                np.testing.assert_array_equal(png == 255, _prediction(d, frame))
    on_disk = {str(p.relative_to(tmp_path)) for p in (tmp_path / "Annotations").rglob("*.png")}
    assert on_disk == expected


def test_probabilities_are_thresholded_at_half(eval_root, tmp_path):
    d = DatasetCatalog.get(EVAL_SUBMISSION)[0]
    model_input, output = model_io(d)
    output["pred_masks"][:] = 0.5
    output["pred_masks"][0, 0, 0] = 0.51
    writer = RVOSSubmissionWriter(EVAL_SUBMISSION, str(tmp_path), distributed=False)
    writer.process([model_input], [output])
    png = cv2.imread(
        str(tmp_path / "Annotations" / d["video_id"] / d["exp_id"] / "00000.png"),
        cv2.IMREAD_UNCHANGED,
    )
    assert png[0, 0] == 255 and png.sum() == 255


def test_missing_frame_is_an_error(eval_root, tmp_path):
    d = DatasetCatalog.get(EVAL_SUBMISSION)[0]
    writer = RVOSSubmissionWriter(EVAL_SUBMISSION, str(tmp_path), distributed=False)
    model_input, output = model_io(d, _prediction, frame_ids=list(range(d["length"] - 1)))
    with pytest.raises(ValueError, match="no prediction for frames"):
        writer.process([model_input], [output])


def test_output_directory_is_required(eval_root):
    with pytest.raises(ValueError, match="output directory"):
        RVOSSubmissionWriter(EVAL_SUBMISSION, None)

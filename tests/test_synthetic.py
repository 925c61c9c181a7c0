"""Synthetic RVOS generator: layout, determinism, masks vs. labels, unambiguous expressions."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rvos_d2.data.datasets.synthetic import register_synthetic
from rvos_d2.data.mask_io import load_target_mask
from rvos_d2.data.prepare.synthetic import (
    COLOURS,
    SIZES,
    ExpressionSpec,
    SynthObject,
    generate_dataset,
    resolve,
)
from rvos_d2.data.prepare.synthetic_language import (
    COLOUR_WORDS,
    HELD_OUT_WORDS,
    MOTION_PHRASES,
    RELATION_PHRASES,
    SENTENCE_FORMS,
    SHAPE_WORDS,
    SIZE_WORDS,
    Wording,
    all_wordings,
    phrase,
    words_of,
)
from rvos_d2.data.transforms import swap_left_right
from tests.fixtures.synthetic import SYNTH_TEST_FRAMES, SYNTH_TEST_SIZE, SYNTH_TEST_SIZES

from detectron2.data import DatasetCatalog, MetadataCatalog

SPLITS = tuple(SYNTH_TEST_SIZES)
MOTION_WORDS = {
    "left": r"\bleft\b",
    "right": r"\bright\b",
    "up": r"\b(up|upwards|rises)\b",
    "down": r"\b(down|downwards|sinks)\b",
    "still": r"\b(not moving|still|motionless|stays in place)\b",
}


def _read(root: Path, split: str):
    exps = json.loads((root / "meta_expressions" / split / "meta_expressions.json").read_text())
    meta = json.loads((root / split / "meta.json").read_text())
    return exps["videos"], meta["videos"]


def _id_maps(root: Path, split: str, video: str, frames: list[str]) -> np.ndarray:
    ann = root / split / "Annotations" / video
    return np.stack([np.asarray(Image.open(ann / f"{f}.png")) for f in frames])


def test_registered_splits_follow_the_contract(synth_root):
    height, width = SYNTH_TEST_SIZE
    for split in SPLITS:
        name = f"synth_test_{split}"
        assert MetadataCatalog.get(name).evaluator_type == "rvos"
        dicts = DatasetCatalog.get(name)
        exps, _ = _read(synth_root, split)
        assert len(dicts) == sum(len(v["expressions"]) for v in exps.values())
        assert len({d["video_id"] for d in dicts}) == SYNTH_TEST_SIZES[split]
        for d in dicts:
            assert d["dataset_name"] == name and d["has_masks"]
            assert (d["height"], d["width"]) == (height, width)
            assert d["length"] == SYNTH_TEST_FRAMES == len(d["file_names"])
            assert all(re.fullmatch(r"\d{5}", f) for f in d["frame_names"])
            assert all(Path(f).is_file() for f in d["file_names"])
            expected = exps[d["video_id"]]["expressions"][d["exp_id"]]
            assert d["obj_ids"] == [int(expected["obj_id"])]
            assert d["expression"] == expected["exp"]
            with Image.open(d["file_names"][0]) as img:
                assert img.size == (width, height) and img.mode == "RGB"
    for split in SPLITS:
        assert f"rvos_synth_{split}" in DatasetCatalog.list()


def test_masks_match_object_ids_colours_and_motion(synth_root):
    for split in SPLITS:
        exps, meta = _read(synth_root, split)
        for video, entry in exps.items():
            frames = entry["frames"]
            ids = _id_maps(synth_root, split, video, frames)
            objects = meta[video]["objects"]
            assert 2 <= len(objects) <= 5
            assert set(np.unique(ids)) - {0} <= {int(o) for o in objects}
            images = [
                np.asarray(Image.open(synth_root / split / "JPEGImages" / video / f"{f}.jpg"))
                for f in frames
            ]
            for obj_id, obj in objects.items():
                present = ids == int(obj_id)
                assert obj["frames"] == [f for f, p in zip(frames, present) if p.any()]
                pixels = np.concatenate([im[p] for im, p in zip(images, present)]).astype(float)
                nearest = min(COLOURS, key=lambda c: np.abs(pixels.mean(0) - COLOURS[c]).sum())
                assert nearest == obj["colour"], (video, obj_id)
                _check_motion(present, obj["motion"], obj["size"], (video, obj_id))


def _check_motion(present: np.ndarray, motion: str, size: str, where) -> None:
    """The visible centroid moves the labelled way between first and last well-seen frames."""
    areas = present.reshape(len(present), -1).sum(1)
    seen = np.flatnonzero(areas >= 0.5 * areas.max())
    first, last = (np.argwhere(present[t]).mean(0) for t in (seen[0], seen[-1]))
    dy, dx = last - first
    radius = SIZES[size] * min(SYNTH_TEST_SIZE)
    if motion == "still":
        assert max(abs(dx), abs(dy)) < radius, where
        return
    along = {"left": -dx, "right": dx, "up": -dy, "down": dy}[motion]
    across = abs(dx) if motion in ("up", "down") else abs(dy)
    if seen[-1] - seen[0] >= 2:
        assert along > 0 and along > across, where


def _parse(text: str) -> dict[str, str]:
    """Attributes named in an expression (each synonym read back to its attribute value)."""
    found = {}
    for name, table in (("size", SIZE_WORDS), ("colour", COLOUR_WORDS), ("category", SHAPE_WORDS)):
        hits = {
            value
            for value, wording in table.items()
            for word in wording.train + wording.held_out
            if re.search(rf"\b{word}\b", text)
        }
        assert len(hits) <= 1, text
        if hits:
            found[name] = hits.pop()
    return found


def test_expressions_are_unique_and_pick_out_their_target(synth_root):
    kinds = set()
    for split in SPLITS:
        exps, meta = _read(synth_root, split)
        for video, entry in exps.items():
            texts = [e["exp"] for e in entry["expressions"].values()]
            assert len(texts) == len(set(texts)), video
            objects = meta[video]["objects"]
            ids = _id_maps(synth_root, split, video, entry["frames"])
            for exp in entry["expressions"].values():
                kinds.add(exp["type"])
                attrs = _parse(exp["exp"])
                group = [o for o, v in objects.items() if all(v[k] == a for k, a in attrs.items())]
                assert exp["obj_id"] in group, exp
                if exp["type"] == "appearance":
                    assert group == [exp["obj_id"]], exp
                elif exp["type"] == "motion":
                    assert len(group) >= 2, exp
                    movers = [
                        o
                        for o in group
                        if re.search(MOTION_WORDS[objects[o]["motion"]], exp["exp"])
                    ]
                    assert movers == [exp["obj_id"]], exp
                else:
                    assert len(group) >= 2, exp
                    _check_relation(exp, group, ids)
    assert kinds == {"appearance", "relative", "motion"}


def _check_relation(exp: dict, group: list[str], ids: np.ndarray) -> None:
    """In every frame showing the target and a look-alike, the target is the extreme one."""
    text = exp["exp"]
    axis = 1 if re.search(r"left|right", text) else 0
    lowest = bool(re.search(r"left|top|upper", text))
    areas = {o: (ids == int(o)).reshape(len(ids), -1).sum(1) for o in group}
    compared = 0
    for t in range(len(ids)):
        seen = [o for o in group if areas[o][t] >= 0.5 * areas[o].max()]
        if exp["obj_id"] not in seen or len(seen) < 2:
            continue
        centre = {o: np.argwhere(ids[t] == int(o)).mean(0)[axis] for o in seen}
        extreme = min(centre, key=centre.get) if lowest else max(centre, key=centre.get)
        assert extreme == exp["obj_id"], (text, t)
        compared += 1
    assert compared > 0, text


def test_motion_split_targets_differ_from_a_twin_only_in_motion(synth_root):
    exps, meta = _read(synth_root, "valid_motion")
    for video, entry in exps.items():
        objects = meta[video]["objects"]
        for exp in entry["expressions"].values():
            assert exp["type"] == "motion"
            target = objects[exp["obj_id"]]
            look = ("category", "colour", "size")
            twins = [
                o
                for key, o in objects.items()
                if key != exp["obj_id"] and all(o[k] == target[k] for k in look)
            ]
            assert twins, exp
            assert all(o["motion"] != target["motion"] for o in twins)
            assert re.search(MOTION_WORDS[target["motion"]], exp["exp"]), exp


def test_some_targets_leave_the_frame(synth_root):
    dicts = DatasetCatalog.get("synth_test_train") + DatasetCatalog.get("synth_test_valid")
    absent = [
        (d["video_id"], d["exp_id"], t)
        for d in dicts
        for t in range(d["length"])
        if not load_target_mask(d, t).any()
    ]
    assert absent
    d = next(d for d in dicts if (d["video_id"], d["exp_id"]) == absent[0][:2])
    assert any(load_target_mask(d, t).any() for t in range(d["length"]))


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generation_is_deterministic_and_handles_non_square_frames(tmp_path):
    counts = {"train": 2, "valid_motion": 1}
    for name in ("a", "b"):
        generate_dataset(tmp_path / name, counts, seed=3, num_frames=4, height=48, width=80)
    first = _tree(tmp_path / "a")
    assert first == _tree(tmp_path / "b")
    png = next(p for p in first if p.endswith(".png"))
    assert np.asarray(Image.open(tmp_path / "a" / png)).shape == (48, 80)
    generate_dataset(tmp_path / "c", counts, seed=4, num_frames=4, height=48, width=80)
    assert _tree(tmp_path / "c") != first
    more = {"train": 3, "valid_motion": 1}
    generate_dataset(tmp_path / "d", more, seed=3, num_frames=4, height=48, width=80)
    for video in ("train_00000", "train_00001"):  # adding videos leaves earlier ones unchanged
        path = f"train/Annotations/{video}/00005.png"
        assert _tree(tmp_path / "d")[path] == first[path]


def _object(obj_id, motion, start, shape="square", colour="red"):
    return SynthObject(obj_id, shape, colour, "small", 5.0, motion, 3.0, start, depth=obj_id)


def test_resolve_tells_ambiguous_from_unambiguous_specs():
    objects = [
        _object(1, "up", (20.0, 40.0)),
        _object(2, "still", (50.0, 40.0)),
        _object(3, "still", (80.0, 20.0), colour="blue"),
    ]
    visible = np.ones((3, 4), bool)
    square = (("shape", "square"),)
    red_square = (("colour", "red"), ("shape", "square"))
    assert resolve(ExpressionSpec("appearance", square), objects, visible) == {1, 2, 3}
    assert resolve(ExpressionSpec("appearance", red_square), objects, visible) == {1, 2}
    assert resolve(ExpressionSpec("motion", red_square, motion="up"), objects, visible) == {1}
    assert resolve(ExpressionSpec("motion", square, motion="still"), objects, visible) == {2, 3}
    left = ExpressionSpec("relative", square, relation=("x", "min"))
    assert resolve(left, objects, visible) == {1}
    right = ExpressionSpec("relative", red_square, relation=("x", "max"))
    assert resolve(right, objects, visible) == {2}
    visible[1, 2:] = False  # the right red square leaves: the left one is then the rightmost
    assert resolve(right, objects, visible) == {1, 2}


def test_missing_root_names_the_generator(tmp_path):
    register_synthetic(tmp_path / "absent", prefix="synth_missing")
    with pytest.raises(FileNotFoundError, match=r"absent.*tools/make_synthetic.py"):
        DatasetCatalog.get("synth_missing_valid")


def test_make_synthetic_cli(tmp_path, capsys):
    from tools.make_synthetic import main

    out = tmp_path / "synth"
    args = ["--output", str(out), "--frames", "4", "--size", "48x64"]
    args += ["--num-train", "1", "--num-valid", "1", "--num-valid-motion", "1"]
    main(args)
    assert "valid_motion" in capsys.readouterr().out
    assert (out / "meta_expressions" / "valid_motion" / "meta_expressions.json").is_file()
    with pytest.raises(SystemExit):
        main(args)  # refuses to overwrite without --overwrite
    with pytest.raises(SystemExit):
        main(["--output", str(out), "--size", "16"])


def test_unseen_phrasing_rewords_the_valid_videos_with_held_out_wordings(synth_root):
    valid, valid_meta = _read(synth_root, "valid")
    unseen, unseen_meta = _read(synth_root, "valid_unseen_phrasing")
    assert len(unseen) == len(valid)
    for (v_id, v_entry), (u_id, u_entry) in zip(sorted(valid.items()), sorted(unseen.items())):
        assert valid_meta[v_id] == unseen_meta[u_id]
        for frame in v_entry["frames"]:
            for folder, ext in (("Annotations", "png"), ("JPEGImages", "jpg")):
                a = synth_root / "valid" / folder / v_id / f"{frame}.{ext}"
                b = synth_root / "valid_unseen_phrasing" / folder / u_id / f"{frame}.{ext}"
                assert a.read_bytes() == b.read_bytes()
        targets = [(e["obj_id"], e["type"]) for e in v_entry["expressions"].values()]
        assert targets == [(e["obj_id"], e["type"]) for e in u_entry["expressions"].values()]
        for exp in u_entry["expressions"].values():
            assert words_of(exp["exp"]) & HELD_OUT_WORDS, exp


def test_no_training_expression_uses_a_held_out_word(synth_root):
    assert HELD_OUT_WORDS
    for split in ("train", "valid", "valid_motion"):
        exps, _ = _read(synth_root, split)
        for entry in exps.values():
            for exp in entry["expressions"].values():
                assert not words_of(exp["exp"]) & HELD_OUT_WORDS, exp


def test_every_held_out_wording_is_recognisable():
    for wording in all_wordings():
        for text in wording.held_out:
            assert words_of(text) & HELD_OUT_WORDS, text


def test_the_grammar_draws_several_forms_for_one_spec():
    rng = np.random.default_rng(0)
    attributes = (("size", "small"), ("colour", "red"), ("shape", "circle"))
    texts = {phrase(attributes, "appearance", rng) for _ in range(200)}
    assert "the small red circle" in texts and len(texts) > 10
    assert any(t.startswith("segment ") for t in texts)
    assert any(" that is " in t for t in texts)
    assert all(not words_of(t) & HELD_OUT_WORDS for t in texts)


def test_held_out_phrasing_draws_every_held_out_sentence_form():
    rng = np.random.default_rng(2)
    attributes = (("shape", "star"),)
    texts = [phrase(attributes, "appearance", rng, held_out=True) for _ in range(300)]
    for form in SENTENCE_FORMS.held_out:
        prefix = form.split("{e}")[0]
        assert any(t.startswith(prefix) for t in texts), form


def test_importing_rvos_d2_does_not_load_the_data_preparation_modules():
    import subprocess
    import sys

    code = (
        "import sys, rvos_d2, rvos_d2.data; "
        "print([m for m in sys.modules if m.startswith('rvos_d2.data.prepare')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _all_specs():
    """(attributes, kind, motion, relation, pair) for every kind, motion and relation."""
    attribute_sets = (
        (("shape", "hexagon"),),
        (("colour", "purple"),),
        (("size", "large"), ("colour", "orange"), ("shape", "cross")),
    )
    for attributes in attribute_sets:
        yield attributes, "appearance", None, None, False
        for motion in MOTION_PHRASES:
            yield attributes, "motion", motion, None, False
        for relation in RELATION_PHRASES:
            for pair in (False, True):
                yield attributes, "relative", None, relation, pair


def test_held_out_words_occur_exactly_in_held_out_phrasings_of_every_spec():
    rng = np.random.default_rng(1)
    for attributes, kind, motion, relation, pair in _all_specs():
        for held_out in (False, True):
            for _ in range(40):
                text = phrase(attributes, kind, rng, motion, relation, pair, held_out)
                assert bool(words_of(text) & HELD_OUT_WORDS) == held_out, text
                named_attributes = {"category" if k == "shape" else k: v for k, v in attributes}
                assert _parse(text) == named_attributes, text
                if motion is not None:
                    named = [m for m, word in MOTION_WORDS.items() if re.search(word, text)]
                    assert named == [motion], text


def test_horizontal_flip_maps_each_left_wording_to_its_right_counterpart():
    pairs = [
        (MOTION_PHRASES["left"], MOTION_PHRASES["right"]),
        (RELATION_PHRASES[("x", "min")][0], RELATION_PHRASES[("x", "max")][0]),
    ]
    pairs.append(tuple(Wording(RELATION_PHRASES[("x", s)][1], ()) for s in ("min", "max")))
    for left, right in pairs:
        assert tuple(map(swap_left_right, left.train)) == right.train
        assert tuple(map(swap_left_right, left.held_out)) == right.held_out
    unsided = [MOTION_PHRASES[m] for m in ("up", "down", "still")]
    unsided += [RELATION_PHRASES[r][0] for r in (("y", "min"), ("y", "max"))]
    unsided += [Wording(RELATION_PHRASES[r][1], ()) for r in (("y", "min"), ("y", "max"))]
    for wording in unsided:
        for text in wording.train + wording.held_out:
            assert swap_left_right(text) == text

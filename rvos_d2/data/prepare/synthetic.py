"""Generator of the synthetic referring-video dataset (registered by
rvos_d2.data.datasets.synthetic; written by tools/make_synthetic.py).

Short videos of coloured shapes that move, occlude one another by depth and leave or enter the
frame, each target described by one expression that is verified to pick out exactly that
object. Written in the Ref-YouTube-VOS release layout and read by the same loader, so the
whole pipeline (loader, mapper, model, evaluator) can be trained and tested offline.

Expression types:
- "appearance": size / colour / shape words ("the small red circle").
- "relative": an extreme position within a group of look-alikes ("the leftmost square").
- "motion": the appearance words match several objects and only the motion word separates them
  ("the square moving up"). The `valid_motion` split holds only these, and there the target
  always has an identical twin (same shape, colour and size), so a single frame cannot tell them
  apart.
The wording (synonyms, sentence forms; `synthetic_language`) is drawn from a random stream of
its own, so the videos do not depend on it. `valid_unseen_phrasing` holds the videos and
targets of `valid`, each expression phrased with at least one held-out wording.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from rvos_d2.data.datasets.synthetic import SPLITS
from rvos_d2.data.prepare.synthetic_language import phrase

SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon")
COLOURS = {
    "red": (215, 45, 45),
    "green": (45, 175, 65),
    "blue": (50, 100, 235),
    "yellow": (235, 215, 45),
    "purple": (155, 70, 205),
    "orange": (240, 140, 35),
}
SIZES = {"small": 0.07, "large": 0.12}  # radius as a fraction of min(height, width)
MOTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
SPEEDS = (0.3, 0.45, 0.6)  # distance travelled over the video, as a fraction of the frame extent
EXPRESSION_TYPES = ("appearance", "relative", "motion")
FRAME_STRIDE = 5  # frame names step by 5 ("00000", "00005", ...) as in Ref-YouTube-VOS

_BACKGROUNDS = ((48, 48, 52), (38, 52, 62), (62, 54, 44), (44, 60, 46), (70, 70, 74))
_ATTRIBUTE_SETS = (
    ("shape",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour", "shape"),
    ("colour",),
    ("size", "colour"),
)
_RELATION_TEMPLATES = {
    ("x", "min"): ("the leftmost {d}", "the {d} on the left"),
    ("x", "max"): ("the rightmost {d}", "the {d} on the right"),
    ("y", "min"): ("the topmost {d}", "the upper {d}"),
    ("y", "max"): ("the bottommost {d}", "the lower {d}"),
}
_MOTION_TEMPLATES = {
    "left": ("the {d} moving left", "the {d} that moves to the left"),
    "right": ("the {d} moving right", "the {d} that moves to the right"),
    "up": ("the {d} moving up", "the {d} going up"),
    "down": ("the {d} moving down", "the {d} going down"),
    "still": ("the {d} that is not moving", "the still {d}"),
}
DEFAULT_VIDEOS = {"train": 300, "valid": 40, "valid_motion": 40, "valid_unseen_phrasing": 40}
_VIDEO_SOURCE = {"valid_unseen_phrasing": "valid"}  # splits that rephrase another's videos
_MIN_VISIBLE_FRACTION = 0.25  # an object counts as seen in a frame when this much of it shows
_MAX_VIDEO_TRIES = 200


@dataclasses.dataclass(frozen=True)
class SynthObject:
    """One moving shape; `start` is its centre (x, y) at frame 0, larger depth is nearer."""

    obj_id: int
    shape: str
    colour: str
    size: str
    radius: float
    motion: str
    speed: float  # pixels per frame
    start: tuple[float, float]
    depth: int

    @property
    def appearance(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.size)

    def centre(self, t: int) -> tuple[float, float]:
        dx, dy = MOTIONS[self.motion]
        return (self.start[0] + dx * self.speed * t, self.start[1] + dy * self.speed * t)


@dataclasses.dataclass(frozen=True)
class ExpressionSpec:
    """What an expression means: attribute filters, then a motion or an extreme position."""

    kind: str  # one of EXPRESSION_TYPES
    attributes: tuple[tuple[str, str], ...]  # (attribute name, value)
    motion: str | None = None
    relation: tuple[str, str] | None = None  # (axis "x"/"y", "min"/"max")


@dataclasses.dataclass
class SynthVideo:
    """A rendered video: frames (T x H x W x 3 RGB), id maps (T x H x W) and its expressions."""

    objects: list[SynthObject]
    frames: np.ndarray
    id_maps: np.ndarray
    expressions: list[tuple[int, ExpressionSpec, str]]  # (target obj_id, spec, text)


# ---------------------------------------------------------------- rendering
def _shape_polygon(shape: str, r: float) -> np.ndarray | None:
    """Vertices (N x 2) of a shape centred at 0 whose axis-aligned half-extent is at most r."""
    if shape == "circle":
        return None
    if shape == "square":
        s = 0.85 * r
        return np.array([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        return np.array([(0.0, -r), (r, 0.8 * r), (-r, 0.8 * r)])
    if shape == "diamond":
        return np.array([(0.0, -r), (0.8 * r, 0.0), (0.0, r), (-0.8 * r, 0.0)])
    if shape == "cross":
        a, b = r, 0.33 * r
        return np.array(
            [
                (-b, -a),
                (b, -a),
                (b, -b),
                (a, -b),
                (a, b),
                (b, b),
                (b, a),
                (-b, a),
                (-b, b),
                (-a, b),
                (-a, -b),
                (-b, -b),
            ]
        )
    angles = {
        "hexagon": np.arange(6) * np.pi / 3,
        "star": -np.pi / 2 + np.arange(10) * np.pi / 5,
    }[shape]
    radii = np.full(len(angles), r) if shape == "hexagon" else np.tile([r, 0.42 * r], 5)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def render_object_mask(obj: SynthObject, t: int, height: int, width: int) -> np.ndarray:
    """H x W bool silhouette of `obj` at frame t, ignoring occlusion (clipped to the frame)."""
    canvas = np.zeros((height, width), np.uint8)
    cx, cy = obj.centre(t)
    scale = 16  # cv2 sub-pixel precision: 4 fractional bits
    polygon = _shape_polygon(obj.shape, obj.radius)
    if polygon is None:
        centre = (round(cx * scale), round(cy * scale))
        cv2.circle(canvas, centre, round(obj.radius * scale), 1, -1, cv2.LINE_8, 4)
    else:
        pts = np.round((polygon + (cx, cy)) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8, 4)
    return canvas.astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = np.array(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))], np.float32)
    if rng.random() < 0.5:
        return np.broadcast_to(base, (height, width, 3)).copy()
    coarse = rng.normal(0.0, 8.0, (max(2, height // 16), max(2, width // 16), 1))
    texture = cv2.resize(coarse.astype(np.float32), (width, height), cv2.INTER_CUBIC)
    return base + texture[..., None]


def render_video(
    objects: Sequence[SynthObject],
    num_frames: int,
    height: int,
    width: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draws objects far-to-near; returns RGB frames (T,H,W,3 uint8) and id maps (T,H,W uint8)."""
    background = _background(rng, height, width)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    id_maps = np.zeros((num_frames, height, width), np.uint8)
    for t in range(num_frames):
        image = background.copy()
        for obj in sorted(objects, key=lambda o: o.depth):
            mask = render_object_mask(obj, t, height, width)
            id_maps[t][mask] = obj.obj_id
            image[mask] = COLOURS[obj.colour]
        image += rng.normal(0.0, 3.0, image.shape).astype(np.float32)
        frames[t] = np.clip(image, 0, 255).astype(np.uint8)
    return frames, id_maps


# ---------------------------------------------------------------- sampling
def _axis_start(
    rng: np.random.Generator, extent: float, r: float, travel: float, crossing: str | None
) -> float:
    """Start coordinate along the motion axis for motion in the + direction.

    crossing "enter": fully outside at frame 0, at least half inside at the end;
    "leave": fully inside at frame 0, fully outside at the end; None: stays inside if it can.
    """
    if crossing == "enter" and travel >= 1.5 * r:
        return rng.uniform(0.5 * r - travel, -r)
    if crossing == "leave" and travel >= 2.0 * r:
        return rng.uniform(extent + r - travel, extent - r)
    return rng.uniform(r, max(r, extent - r - travel))


def _sample_object(
    rng: np.random.Generator,
    obj_id: int,
    appearance: tuple[str, str, str],
    motion: str,
    num_frames: int,
    height: int,
    width: int,
) -> SynthObject:
    shape, colour, size = appearance
    radius = SIZES[size] * min(height, width) * rng.uniform(0.92, 1.08)
    travel = 0.0
    if motion == "still":
        start = (rng.uniform(radius, width - radius), rng.uniform(radius, height - radius))
    else:
        dx, dy = MOTIONS[motion]
        extent, cross_extent = (width, height) if dx else (height, width)
        travel = float(rng.choice(SPEEDS)) * extent
        crossing = None
        if rng.random() < 0.4:
            crossing = "enter" if rng.random() < 0.5 else "leave"
        along = _axis_start(rng, extent, radius, travel, crossing)
        if dx + dy < 0:  # moving left / up: mirror the placement for the + direction
            along = extent - along
        across = rng.uniform(radius, cross_extent - radius)
        start = (along, across) if dx else (across, along)
    return SynthObject(
        obj_id=obj_id,
        shape=shape,
        colour=colour,
        size=size,
        radius=radius,
        motion=motion,
        speed=travel / max(1, num_frames - 1),
        start=(float(start[0]), float(start[1])),
        depth=0,
    )


def _random_appearance(rng: np.random.Generator, shape: str | None = None) -> tuple[str, str, str]:
    return (
        shape or SHAPES[rng.integers(len(SHAPES))],
        list(COLOURS)[rng.integers(len(COLOURS))],
        list(SIZES)[rng.integers(len(SIZES))],
    )


def _sample_layout(
    rng: np.random.Generator, split: str, num_frames: int, height: int, width: int
) -> list[SynthObject]:
    """Chooses 2-5 objects; motion-only videos (and some others) get identical twins."""
    num_objects = int(rng.integers(2, 6))
    motions = list(MOTIONS)
    plan: list[tuple[tuple[str, str, str], str]] = []
    if split == "valid_motion" or rng.random() < 0.35:  # twins that differ only in motion
        twin = _random_appearance(rng)
        for motion in rng.permutation(motions)[: int(rng.integers(2, 4))]:
            plan.append((twin, str(motion)))
    elif rng.random() < 0.5:  # look-alikes of one shape for relative-position expressions
        shape = SHAPES[rng.integers(len(SHAPES))]
        for _ in range(int(rng.integers(2, 4))):
            plan.append((_random_appearance(rng, shape), motions[rng.integers(len(motions))]))
    while len(plan) < num_objects:
        plan.append((_random_appearance(rng), motions[rng.integers(len(motions))]))
    objects = []
    for appearance, motion in plan:
        while any(o.appearance == appearance and o.motion == motion for o in objects):
            # an exact duplicate could never be told apart: draw another object
            appearance, motion = _random_appearance(rng), motions[rng.integers(len(motions))]
        objects.append(
            _sample_object(rng, len(objects) + 1, appearance, motion, num_frames, height, width)
        )
    depths = rng.permutation(len(objects))
    return [dataclasses.replace(o, depth=int(d)) for o, d in zip(objects, depths)]


# ---------------------------------------------------------------- expressions
def _visible_fraction(objects: Sequence[SynthObject], id_maps: np.ndarray) -> np.ndarray:
    """(num_objects x T) visible pixels of each object over its full, unclipped area."""
    num_frames, height, width = id_maps.shape
    counts = np.stack([(id_maps == o.obj_id).reshape(num_frames, -1).sum(1) for o in objects])
    pad = int(np.ceil(max(o.radius for o in objects))) + 1
    full = []
    for o in objects:  # area of the silhouette when fully inside a frame
        probe = dataclasses.replace(o, start=(pad, pad), motion="still")
        full.append(render_object_mask(probe, 0, 2 * pad, 2 * pad).sum())
    return counts / np.maximum(np.asarray(full, np.float64)[:, None], 1.0)


def resolve(spec: ExpressionSpec, objects: Sequence[SynthObject], visible: np.ndarray) -> set[int]:
    """Ids of every object `spec` can refer to in the video (visible: objects x T bool).

    A relative expression refers, in each frame, to the extreme visible member of its group (and
    to every member within a margin of it); the referents are the union over frames.
    """
    group = [
        i
        for i, o in enumerate(objects)
        if all(getattr(o, name) == value for name, value in spec.attributes)
        and (spec.motion is None or o.motion == spec.motion)
    ]
    if spec.relation is None:
        return {objects[i].obj_id for i in group}
    axis, side = spec.relation
    referents: set[int] = set()
    for t in range(visible.shape[1]):
        members = [i for i in group if visible[i, t]]
        if not members:
            continue
        coord = {i: objects[i].centre(t)[0 if axis == "x" else 1] for i in members}
        best = min(coord.values()) if side == "min" else max(coord.values())
        margin = 0.75 * max(objects[i].radius for i in members)
        referents |= {objects[i].obj_id for i in members if abs(coord[i] - best) < margin}
    return referents


def _description(attributes: Iterable[tuple[str, str]]) -> str:
    values = dict(attributes)
    words = [values[k] for k in ("size", "colour") if k in values]
    return " ".join([*words, values.get("shape", "shape")])


def _candidates(
    target: int, objects: Sequence[SynthObject], visible: np.ndarray
) -> dict[str, list[ExpressionSpec]]:
    """Every verified-unambiguous expression spec for objects[target], grouped by type."""
    obj = objects[target]
    out: dict[str, list[ExpressionSpec]] = {k: [] for k in EXPRESSION_TYPES}
    for names in _ATTRIBUTE_SETS:
        attributes = tuple((n, getattr(obj, n)) for n in names)
        plain = ExpressionSpec("appearance", attributes)
        group = resolve(plain, objects, visible)
        if group == {obj.obj_id}:
            out["appearance"].append(plain)
            continue
        motion = ExpressionSpec("motion", attributes, motion=obj.motion)
        if resolve(motion, objects, visible) == {obj.obj_id}:
            out["motion"].append(motion)
        together = [i for i, o in enumerate(objects) if o.obj_id in group]
        if not (visible[target] & (visible[together].sum(0) >= 2)).any():
            continue  # never seen next to a look-alike: a relation would mean nothing
        for relation in _RELATION_TEMPLATES:
            spec = ExpressionSpec("relative", attributes, relation=relation)
            if resolve(spec, objects, visible) == {obj.obj_id}:
                out["relative"].append(spec)
    return out


def expression_text(spec: ExpressionSpec, group_size: int, rng: np.random.Generator) -> str:
    """The plain rendering of a spec ("on the left" style only for pairs): it keeps the
    expressions of a video distinct while sampling; the written wording is `phrase_expressions`'."""
    d = _description(spec.attributes)
    if spec.kind == "appearance":
        return f"the {d}"
    if spec.kind == "motion":
        templates = _MOTION_TEMPLATES[spec.motion]
    else:
        templates = _RELATION_TEMPLATES[spec.relation]
        templates = templates if group_size == 2 else templates[:1]
    return templates[rng.integers(len(templates))].format(d=d)


def _choose_expressions(
    rng: np.random.Generator, split: str, objects: Sequence[SynthObject], visible: np.ndarray
) -> list[tuple[int, ExpressionSpec, str]] | None:
    """One expression per target; None when some target has no admissible expression."""
    chosen = []
    for i, obj in enumerate(objects):
        candidates = _candidates(i, objects, visible)
        if split == "valid_motion":
            twins = [o for o in objects if o.appearance == obj.appearance and o is not obj]
            if not twins:
                continue
            kinds = ["motion"] if candidates["motion"] else []
        else:
            kinds = [k for k in EXPRESSION_TYPES if candidates[k]]
        if not kinds:
            return None
        kind = kinds[rng.integers(len(kinds))]
        spec = candidates[kind][rng.integers(len(candidates[kind]))]
        group_size = len(resolve(ExpressionSpec(kind, spec.attributes), objects, visible))
        chosen.append((obj.obj_id, spec, expression_text(spec, group_size, rng)))
    texts = [text for _, _, text in chosen]
    if not chosen or len(set(texts)) != len(texts):
        return None
    return chosen


def sample_video(
    rng: np.random.Generator, split: str, num_frames: int, height: int, width: int
) -> SynthVideo:
    """Samples layouts until every object is seen enough and every target has an expression."""
    for _ in range(_MAX_VIDEO_TRIES):
        objects = _sample_layout(rng, split, num_frames, height, width)
        frames, id_maps = render_video(objects, num_frames, height, width, rng)
        visible = _visible_fraction(objects, id_maps) >= _MIN_VISIBLE_FRACTION
        if (visible.sum(1) < max(2, num_frames // 3)).any():
            continue
        expressions = _choose_expressions(rng, split, objects, visible)
        if expressions is None:
            continue
        return SynthVideo(objects, frames, id_maps, expressions)
    raise RuntimeError(
        f"could not sample a valid {split} video of {num_frames} frames at {height}x{width} in "
        f"{_MAX_VIDEO_TRIES} tries; use more frames or a larger size"
    )


def phrase_expressions(
    video: SynthVideo, rng: np.random.Generator, held_out: bool = False, tries: int = 20
) -> SynthVideo:
    """The video with each expression reworded by the grammar (`phrase`; held-out wordings
    with `held_out`), redrawn until the wordings of its targets differ."""
    visible = _visible_fraction(video.objects, video.id_maps) >= _MIN_VISIBLE_FRACTION
    for _ in range(tries):
        expressions = []
        for obj_id, spec, _ in video.expressions:
            group = resolve(ExpressionSpec(spec.kind, spec.attributes), video.objects, visible)
            text = phrase(
                spec.attributes,
                spec.kind,
                rng,
                motion=spec.motion,
                relation=spec.relation,
                pair=len(group) == 2,
                held_out=held_out,
            )
            expressions.append((obj_id, spec, text))
        if len({text for _, _, text in expressions}) == len(expressions):
            return dataclasses.replace(video, expressions=expressions)
    raise RuntimeError(f"no distinct wordings for {len(video.expressions)} expressions")


# ---------------------------------------------------------------- writing
def _palette() -> list[int]:
    """The PASCAL VOC / DAVIS colour map: id i gets the colour spread from the bits of i."""
    palette = []
    for i in range(256):
        rgb = [0, 0, 0]
        for j in range(8):
            for c in range(3):
                rgb[c] |= ((i >> (3 * j + c)) & 1) << (7 - j)
        palette += rgb
    return palette


def _write_video(split_dir: Path, video_id: str, video: SynthVideo) -> list[str]:
    frame_names = [f"{t * FRAME_STRIDE:05d}" for t in range(len(video.frames))]
    image_dir = split_dir / "JPEGImages" / video_id
    ann_dir = split_dir / "Annotations" / video_id
    image_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    palette = _palette()
    for name, frame, ids in zip(frame_names, video.frames, video.id_maps):
        ok = cv2.imwrite(
            str(image_dir / f"{name}.jpg"), frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 92]
        )
        if not ok:
            raise OSError(f"cannot write {image_dir / name}.jpg")
        png = Image.frombytes("P", (ids.shape[1], ids.shape[0]), np.ascontiguousarray(ids))
        png.putpalette(palette)
        png.save(ann_dir / f"{name}.png")
    return frame_names


def generate_split(
    root: str | os.PathLike,
    split: str,
    num_videos: int,
    seed: int = 0,
    num_frames: int = 12,
    height: int = 96,
    width: int = 96,
) -> dict[str, int]:
    """Writes one split in the Ref-YouTube-VOS layout; returns counts for a summary.

    Each video is drawn from its own generator seeded by (seed, split, index), so a video does
    not change when the number of videos does.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {SPLITS}")
    if num_frames < 2 or min(height, width) < 32:
        raise ValueError(
            f"need at least 2 frames of at least 32x32, got {num_frames} frames of {height}x{width}"
        )
    root = Path(root)
    split_dir = root / split
    meta_videos: dict = {}
    exp_videos: dict = {}
    stats = {"videos": 0, "expressions": 0, "target_frames": 0, "target_absent_frames": 0}
    stats.update({f"expressions_{k}": 0 for k in EXPRESSION_TYPES})
    source = _VIDEO_SOURCE.get(split, split)
    for index in range(num_videos):
        rng = np.random.default_rng([seed, SPLITS.index(source), index])
        video = sample_video(rng, source, num_frames, height, width)
        wording_rng = np.random.default_rng([seed, SPLITS.index(split), index, 1])
        video = phrase_expressions(video, wording_rng, held_out=split in _VIDEO_SOURCE)
        video_id = f"{split}_{index:05d}"
        frame_names = _write_video(split_dir, video_id, video)
        present = {
            o.obj_id: [n for n, ids in zip(frame_names, video.id_maps) if (ids == o.obj_id).any()]
            for o in video.objects
        }
        meta_videos[video_id] = {
            "height": height,
            "width": width,
            "objects": {
                str(o.obj_id): {
                    "category": o.shape,
                    "frames": present[o.obj_id],
                    "colour": o.colour,
                    "size": o.size,
                    "motion": o.motion,
                }
                for o in video.objects
            },
        }
        exp_videos[video_id] = {
            "expressions": {
                str(k): {"exp": text, "obj_id": str(obj_id), "type": spec.kind}
                for k, (obj_id, spec, text) in enumerate(video.expressions)
            },
            "frames": frame_names,
        }
        stats["videos"] += 1
        for obj_id, spec, _ in video.expressions:
            stats["expressions"] += 1
            stats[f"expressions_{spec.kind}"] += 1
            stats["target_frames"] += num_frames
            stats["target_absent_frames"] += num_frames - len(present[obj_id])
    split_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / "meta.json").write_text(json.dumps({"videos": meta_videos}))
    exp_file = root / "meta_expressions" / split / "meta_expressions.json"
    exp_file.parent.mkdir(parents=True, exist_ok=True)
    exp_file.write_text(json.dumps({"videos": exp_videos}, indent=1))
    return stats


def generate_dataset(
    root: str | os.PathLike,
    num_videos: dict[str, int],
    seed: int = 0,
    num_frames: int = 12,
    height: int = 96,
    width: int = 96,
) -> dict[str, dict[str, int]]:
    """Writes every split named in `num_videos` under `root`; returns per-split counts."""
    return {
        split: generate_split(root, split, count, seed, num_frames, height, width)
        for split, count in num_videos.items()
    }

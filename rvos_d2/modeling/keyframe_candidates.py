"""Key-frame object candidates of the top-down method (Liang et al., 2021, Eq. 1).

K key frames are sampled uniformly from the video and every detectron2 instance segmentation
model given (e.g. Mask R-CNN from detectron2's model zoo, built from its own config so that its
COCO weights load unchanged) proposes masks on each of them; the candidates of all models are
combined, as the paper combines HTC and CondInst. The models stay frozen here: they are trained
on their own with detectron2's DefaultTrainer and their own config, on COCO-format data or on
the videos' per-frame object masks, registered here as `<vos dataset>_frame_instances` (every
object of every annotated frame, one class "object"; train with INPUT.MASK_FORMAT "bitmask").
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.data.datasets.vos import load_id_map

from detectron2.config import CfgNode, configurable, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

__all__ = [
    "Candidates",
    "KeyFrameCandidates",
    "build_candidate_model",
    "frame_instance_dicts",
    "key_frame_indices",
    "register_frame_instances",
    "resolve_candidate_config",
]


def key_frame_indices(num_frames: int, num_key_frames: int) -> list[int]:
    """K frames sampled uniformly: the centre frame of each of K equal segments of the video
    (every frame when the video is shorter than K)."""
    if num_frames < 1 or num_key_frames < 1:
        raise ValueError(
            f"key_frame_indices: num_frames ({num_frames}) and num_key_frames "
            f"({num_key_frames}) must be >= 1"
        )
    k = min(num_frames, num_key_frames)
    return [int((i + 0.5) * num_frames / k) for i in range(k)]


def resolve_candidate_config(name: str) -> str:
    """A config file path, or a name inside detectron2's model-zoo configs
    ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")."""
    if os.path.isfile(name):
        return name
    import detectron2

    zoo = Path(detectron2.__file__).parent / "model_zoo" / "configs" / name
    if zoo.is_file():
        return str(zoo)
    raise FileNotFoundError(
        f"MODEL.TOPDOWN.CANDIDATES.CONFIG_FILES: {name!r} is neither a file nor a config of "
        f"detectron2's model zoo ({zoo.parent.parent})"
    )


def build_candidate_model(
    config_file: str, opts: Sequence[str], device: str
) -> tuple[nn.Module, CfgNode]:
    """A detectron2 model built from its own config (`opts`: KEY VALUE overrides), frozen and in
    eval mode; its weights are loaded with the rest of the model's (assemble_topdown_weights)."""
    cfg = get_cfg()
    cfg.merge_from_file(resolve_candidate_config(config_file))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    model.requires_grad_(False)
    return model.eval(), cfg


@dataclass
class Candidates:
    """N candidate masks proposed on the key frames of one video."""

    masks: Tensor  # N x H x W bool, at the size of the frames given
    scores: Tensor  # N detection scores
    frames: Tensor  # N long: the key frame each was detected in
    sources: Tensor  # N long: the index of the model that proposed it

    def __len__(self) -> int:
        return self.masks.shape[0]


class KeyFrameCandidates(nn.Module):
    """Instance masks of one or more frozen detectron2 models on K uniformly sampled key frames."""

    @configurable
    def __init__(
        self,
        *,
        models: Sequence[nn.Module],
        input_formats: Sequence[str],
        test_sizes: Sequence[tuple[int, int]],
        num_key_frames: int,
        score_threshold: float,
        max_per_frame: int,
    ) -> None:
        """
        Args:
            models: detectron2 instance segmentation models (inputs as GeneralizedRCNN's,
                outputs with `instances.pred_masks` and `scores`).
            input_formats: each model's INPUT.FORMAT ("RGB" or "BGR").
            test_sizes: each model's (INPUT.MIN_SIZE_TEST, INPUT.MAX_SIZE_TEST).
            num_key_frames: K, frames sampled uniformly from the video (the paper: 7).
            score_threshold: candidates scored below it are dropped.
            max_per_frame: at most this many candidates per model and key frame (best first).
        """
        super().__init__()
        if not (len(models) == len(input_formats) == len(test_sizes)) or not models:
            raise ValueError(
                "KeyFrameCandidates: models, input_formats and test_sizes must be non-empty and "
                f"of one length, got {len(models)}, {len(input_formats)}, {len(test_sizes)}"
            )
        for fmt in input_formats:
            if fmt not in ("RGB", "BGR"):
                raise ValueError(f"candidate model INPUT.FORMAT {fmt!r}: expected RGB or BGR")
        self.models = nn.ModuleList(models)
        self.input_formats = list(input_formats)
        self.test_sizes = [tuple(s) for s in test_sizes]
        self.num_key_frames = num_key_frames
        self.score_threshold = score_threshold
        self.max_per_frame = max_per_frame

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        c = cfg.MODEL.TOPDOWN.CANDIDATES
        files, weights, opts = list(c.CONFIG_FILES), list(c.WEIGHTS), list(c.OPTS)
        if not files or len(weights) != len(files) or len(opts) != len(files):
            raise ValueError(
                "MODEL.TOPDOWN.CANDIDATES: CONFIG_FILES must name at least one model, with one "
                f"WEIGHTS and one OPTS entry each; got {len(files)}, {len(weights)}, {len(opts)}"
            )
        built = [build_candidate_model(f, o, cfg.MODEL.DEVICE) for f, o in zip(files, opts)]
        return {
            "models": [m for m, _ in built],
            "input_formats": [c_.INPUT.FORMAT for _, c_ in built],
            "test_sizes": [(c_.INPUT.MIN_SIZE_TEST, c_.INPUT.MAX_SIZE_TEST) for _, c_ in built],
            "num_key_frames": cfg.MODEL.TOPDOWN.NUM_KEY_FRAMES,
            "score_threshold": c.SCORE_THRESH,
            "max_per_frame": c.MAX_PER_FRAME,
        }

    def train(self, mode: bool = True) -> KeyFrameCandidates:
        """The candidate models stay in eval mode (frozen)."""
        super().train(mode)
        self.models.eval()
        return self

    def _model_input(self, frame: Tensor, index: int) -> dict:
        """One RGB uint8 3 x H x W frame as model `index` expects it: resized as its test-time
        ResizeShortestEdge would, in its channel order, outputs asked at H x W."""
        height, width = frame.shape[-2:]
        min_size, max_size = self.test_sizes[index]
        image = frame.float()
        if min_size > 0:
            size = ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)
            if size != (height, width):
                image = F.interpolate(image[None], size=size, mode="bilinear")[0]
        if self.input_formats[index] == "BGR":
            image = image.flip(0)
        return {"image": image, "height": height, "width": width}

    @torch.no_grad()
    def forward(self, frames: Tensor | Sequence[Tensor]) -> Candidates:
        """Candidates of every model on the key frames of one video (RGB uint8, T x 3 x H x W or
        a sequence of 3 x H x W frames)."""
        num_frames = len(frames)
        if num_frames == 0:
            raise ValueError("KeyFrameCandidates: the video has no frame")
        height, width = frames[0].shape[-2:]
        masks, scores, key_frames, sources = [], [], [], []
        for t in key_frame_indices(num_frames, self.num_key_frames):
            for index, model in enumerate(self.models):
                device = next(model.parameters()).device
                instances = model([self._model_input(frames[t].to(device), index)])[0]
                instances = instances["instances"]
                keep = instances.scores >= self.score_threshold
                order = instances.scores[keep].argsort(descending=True)[: self.max_per_frame]
                chosen = instances[keep.nonzero()[:, 0][order]]
                masks.append(chosen.pred_masks.bool())
                scores.append(chosen.scores)
                key_frames.append(torch.full((len(chosen),), t, dtype=torch.long))
                sources.append(torch.full((len(chosen),), index, dtype=torch.long))
        device = masks[0].device
        return Candidates(
            masks=torch.cat(masks).reshape(-1, height, width),
            scores=torch.cat(scores).float(),
            frames=torch.cat(key_frames).to(device),
            sources=torch.cat(sources).to(device),
        )


def frame_instance_dicts(videos: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """detectron2 instance segmentation dicts from VOS video dicts (rvos_d2.data.datasets.vos):
    one per annotated frame, holding every object visible in it as class 0 with an RLE mask."""
    from pycocotools import mask as mask_util

    records = []
    for video in videos:
        for t, file_name in enumerate(video["file_names"]):
            ids = load_id_map(video, t)
            if ids is None:
                continue
            annotations = []
            for obj_id in video["obj_ids"]:
                mask = ids == int(obj_id)
                if not mask.any():
                    continue
                rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(
                    {
                        "bbox": mask_util.toBbox(rle).tolist(),
                        "bbox_mode": BoxMode.XYWH_ABS,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "category_id": 0,
                        "iscrowd": 0,
                    }
                )
            records.append(
                {
                    "file_name": file_name,
                    "image_id": f"{video['video_id']}/{t}",
                    "height": ids.shape[0],
                    "width": ids.shape[1],
                    "annotations": annotations,
                }
            )
    return records


FRAME_INSTANCES_SOURCES = ("rvos_synth_vos_train", "ytvos2019_vos_train", "davis17_vos_train")


def register_frame_instances(vos_name: str) -> str:
    """Registers `<vos_name>_frame_instances`: the frames of VOS dataset `vos_name` as an
    instance segmentation dataset (see `frame_instance_dicts`); returns its name."""
    name = f"{vos_name}_frame_instances"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: frame_instance_dicts(DatasetCatalog.get(vos_name)))
        MetadataCatalog.get(name).set(thing_classes=["object"], evaluator_type="coco")
    return name


for _source in FRAME_INSTANCES_SOURCES:
    register_frame_instances(_source)

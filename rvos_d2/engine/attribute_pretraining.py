"""Dense attribute pretraining of a backbone, for backbones trained from scratch.

The backbone learns to classify, at every pixel, the attributes recorded for each object in a
Ref-YouTube-VOS style ``<split>/meta.json`` (``{"videos": {vid: {"objects": {obj_id:
{"category": str, ...}}}}}``; the synthetic dataset also records "colour", "size" and
"motion"). The object-id maps of ``Annotations/`` give each pixel its object, and so its
attribute values. It stands in for the ImageNet / Kinetics pretraining that such backbones lack;
the result is saved with `backbone_checkpoint` and loaded through MODEL.WEIGHTS.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import Backbone, build_backbone

__all__ = [
    "AttributeVideos",
    "DenseAttributeHead",
    "attribute_accuracy",
    "backbone_checkpoint",
    "load_attribute_videos",
    "pretrain_backbone",
    "pretrain_config_backbone",
]

LABEL_STRIDE = 4
BACKGROUND_WEIGHT = 0.1

logger = logging.getLogger(__name__)


@dataclass
class AttributeVideos:
    """Frames and per-pixel attribute labels of the videos of one split.

    frames[i]: uint8 T x 3 x S x S (RGB); labels[i]: int64 T x A x S/4 x S/4, 0 for background
    and k + 1 for the k-th value of ``vocab[attributes[a]]``.
    """

    attributes: list[str]
    vocab: dict[str, list[str]]
    video_ids: list[str]
    frames: list[Tensor]
    labels: list[Tensor]


def load_attribute_videos(
    split_dir: Path,
    attributes: Sequence[str],
    size: int,
    vocab: dict[str, list[str]] | None = None,
) -> AttributeVideos:
    """Reads every video of `split_dir` at `size` x `size` with labels for `attributes`.

    The class values come from the split itself unless `vocab` is given (a held-out split is
    labelled with its training split's vocab, so that class indices agree).
    """
    split_dir = Path(split_dir)
    attributes = list(attributes)
    if not attributes:
        raise ValueError("no attributes requested")
    if size % LABEL_STRIDE or size <= 0:
        raise ValueError(f"size {size}: expected a positive multiple of {LABEL_STRIDE}")
    meta_file = split_dir / "meta.json"
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found")
    videos = json.loads(meta_file.read_text()).get("videos")
    if not videos:
        raise ValueError(f"{meta_file}: no videos under the 'videos' key")
    for vid, video in videos.items():
        for obj_id, obj in video.get("objects", {}).items():
            for name in attributes:
                if name not in obj:
                    raise ValueError(
                        f"{meta_file}: video {vid!r} object {obj_id!r} has no attribute {name!r}"
                    )
                if vocab is not None and str(obj[name]) not in vocab.get(name, ()):
                    raise ValueError(
                        f"{meta_file}: video {vid!r} object {obj_id!r} has {name} "
                        f"{obj[name]!r}, not among the given values {vocab.get(name)}"
                    )
    if vocab is None:
        vocab = {
            name: sorted(
                {str(obj[name]) for v in videos.values() for obj in v.get("objects", {}).values()}
            )
            for name in attributes
        }
    vocab = {name: list(vocab[name]) for name in attributes}
    label_size = size // LABEL_STRIDE
    frames, labels = [], []
    for vid, video in videos.items():
        objects = video.get("objects", {})
        lut = np.zeros((len(attributes), max([255, *map(int, objects)]) + 1), np.int64)
        for obj_id, obj in objects.items():
            for a, name in enumerate(attributes):
                lut[a, int(obj_id)] = vocab[name].index(str(obj[name])) + 1
        image_files = sorted((split_dir / "JPEGImages" / vid).glob("*.jpg"))
        if not image_files:
            raise FileNotFoundError(f"{split_dir / 'JPEGImages' / vid}: no .jpg frames")
        images, id_maps = [], []
        for image_file in image_files:
            ann_file = split_dir / "Annotations" / vid / f"{image_file.stem}.png"
            if not ann_file.is_file():
                raise FileNotFoundError(f"{ann_file} not found (annotation of {image_file})")
            with Image.open(image_file) as img:
                images.append(np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR)))
            with Image.open(ann_file) as ann:
                ids = ann.resize((label_size, label_size), Image.NEAREST)
                id_maps.append(np.asarray(ids, dtype=np.int64))
        ids = np.stack(id_maps)  # T x h x w
        frames.append(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous())
        labels.append(torch.from_numpy(np.stack([lut[a][ids] for a in range(len(attributes))], 1)))
    return AttributeVideos(attributes, vocab, list(videos), frames, labels)


class DenseAttributeHead(nn.Module):
    """Fuses the backbone's maps at stride 4 and classifies every pixel for each attribute."""

    def __init__(
        self, input_shape: dict[str, ShapeSpec], num_classes: dict[str, int], width: int = 32
    ) -> None:
        super().__init__()
        self.in_features = sorted(input_shape, key=lambda name: input_shape[name].stride)
        finest = self.in_features[0]
        if input_shape[finest].stride != LABEL_STRIDE:
            raise ValueError(
                f"the finest backbone output {finest!r} has stride {input_shape[finest].stride}; "
                f"dense attribute pretraining needs a stride-{LABEL_STRIDE} output"
            )
        self.lateral = nn.ModuleDict(
            {name: nn.Conv2d(input_shape[name].channels, width, 1) for name in self.in_features}
        )
        self.classifiers = nn.ModuleDict(
            {name: nn.Conv2d(width, n, 1) for name, n in num_classes.items()}
        )

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        """Maps N x C x h x w features to N x classes x h4 x w4 logits per attribute."""
        size = features[self.in_features[0]].shape[-2:]
        fused = sum(
            F.interpolate(self.lateral[name](features[name]), size=size, mode="bilinear")
            for name in self.in_features
        ).relu()
        return {name: classifier(fused) for name, classifier in self.classifiers.items()}


@torch.no_grad()
def attribute_accuracy(
    backbone: Backbone,
    head: DenseAttributeHead,
    videos: AttributeVideos,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
) -> dict[str, float | None]:
    """Foreground pixel accuracy per attribute over every frame of `videos` (a video backbone
    sees each whole video as one clip); None for an attribute without foreground pixels."""
    device = next(backbone.parameters()).device
    normalise = _normaliser(pixel_mean, pixel_std, device)
    is_video = getattr(backbone, "is_video", False)
    modes = backbone.training, head.training
    backbone.eval()
    head.eval()
    correct = torch.zeros(len(videos.attributes), dtype=torch.int64)
    total = torch.zeros(len(videos.attributes), dtype=torch.int64)
    for frames, labels in zip(videos.frames, videos.labels):
        x = normalise(frames)
        logits = head(backbone(x[None] if is_video else x))
        hits, count = _foreground_counts(logits, labels.to(device), videos.attributes)
        correct += hits
        total += count
    backbone.train(modes[0])
    head.train(modes[1])
    return _accuracy(correct, total, videos.attributes)


def _normaliser(
    pixel_mean: Sequence[float], pixel_std: Sequence[float], device: torch.device
) -> Callable[[Tensor], Tensor]:
    """Maps uint8 frames (... x 3 x H x W) to normalised float frames on `device`."""
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=device).view(-1, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=device).view(-1, 1, 1)
    return lambda frames: (frames.to(device).float() - mean) / std


def _foreground_counts(
    logits: dict[str, Tensor], labels: Tensor, attributes: Sequence[str]
) -> tuple[Tensor, Tensor]:
    """Per attribute: correctly classified foreground pixels and all foreground pixels (N x A x
    h x w labels, 0 = background)."""
    correct, total = [], []
    for a, name in enumerate(attributes):
        foreground = labels[:, a] > 0
        correct.append((logits[name].detach().argmax(1) == labels[:, a])[foreground].sum())
        total.append(foreground.sum())
    return torch.stack(correct).cpu(), torch.stack(total).cpu()


def _accuracy(correct: Tensor, total: Tensor, attributes: Sequence[str]) -> dict[str, float | None]:
    """Foreground accuracy per attribute; None where there is no foreground pixel."""
    return {
        name: (correct[a] / total[a]).item() if total[a] else None
        for a, name in enumerate(attributes)
    }


def _sample_batch(
    videos: AttributeVideos,
    rng: np.random.Generator,
    clips: int,
    frames_per_clip: int,
    flip: bool,
) -> tuple[Tensor, Tensor]:
    """Clips of consecutive frames (clips x T x 3 x S x S), labels (clips * T) x A x h x w."""
    xs, ys = [], []
    for _ in range(clips):
        i = rng.integers(len(videos.frames))
        length = videos.frames[i].shape[0]
        if length < frames_per_clip:
            raise ValueError(
                f"video {videos.video_ids[i]!r} has {length} frames, fewer than "
                f"frames_per_clip={frames_per_clip}"
            )
        start = rng.integers(length - frames_per_clip + 1)
        x = videos.frames[i][start : start + frames_per_clip]
        y = videos.labels[i][start : start + frames_per_clip]
        if flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.cat(ys)


def pretrain_backbone(
    backbone: Backbone,
    videos: AttributeVideos,
    *,
    iterations: int,
    clips_per_batch: int,
    frames_per_clip: int,
    lr: float,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    seed: int = 0,
    log_period: int = 50,
    eval_videos: AttributeVideos | None = None,
) -> list[dict]:
    """Trains every weight of `backbone` (in place) with a DenseAttributeHead; returns the log.

    A video backbone (``backbone.is_video``) gets clips of `frames_per_clip` consecutive frames,
    an image backbone single frames. Frames are flipped horizontally at random unless "motion"
    is an attribute (a flip would swap left and right motion). Log entries hold the iteration,
    the loss and, per attribute, the pixel accuracy on foreground (None without foreground);
    with `eval_videos` (labelled with the same vocab), the last entry also holds their
    foreground accuracy per attribute as "heldout_fg_accuracy".
    """
    counts = {
        "iterations": iterations,
        "clips_per_batch": clips_per_batch,
        "frames_per_clip": frames_per_clip,
        "log_period": log_period,
    }
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name}={value}: expected at least 1")
    if eval_videos is not None and (
        eval_videos.attributes != videos.attributes or eval_videos.vocab != videos.vocab
    ):
        raise ValueError(
            "eval_videos must be labelled with the training videos' attributes and vocab "
            "(load_attribute_videos(..., vocab=videos.vocab))"
        )
    backbone.requires_grad_(True)  # trained here even when its config keeps it frozen later
    device = next(backbone.parameters()).device
    is_video = getattr(backbone, "is_video", False)
    num_classes = {name: len(videos.vocab[name]) + 1 for name in videos.attributes}
    head = DenseAttributeHead(backbone.output_shape(), num_classes).to(device)
    optimizer = torch.optim.AdamW(
        [*backbone.parameters(), *head.parameters()], lr=lr, weight_decay=1e-4
    )
    normalise = _normaliser(pixel_mean, pixel_std, device)
    class_weights = {}
    for name, n in num_classes.items():
        class_weights[name] = torch.ones(n, device=device)
        class_weights[name][0] = BACKGROUND_WEIGHT
    rng = np.random.default_rng(seed)
    flip = "motion" not in videos.attributes
    frames_per_clip = frames_per_clip if is_video else 1
    backbone.train()
    head.train()
    log = []
    for iteration in range(1, iterations + 1):
        x, y = _sample_batch(videos, rng, clips_per_batch, frames_per_clip, flip)
        x = normalise(x)
        y = y.to(device)
        logits = head(backbone(x if is_video else x.flatten(0, 1)))
        loss = sum(
            F.cross_entropy(logits[name], y[:, a], weight=class_weights[name])
            for a, name in enumerate(videos.attributes)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if iteration % log_period == 0 or iteration == iterations:
            counts = _foreground_counts(logits, y, videos.attributes)
            entry = {"iteration": iteration, "loss": loss.item()}
            entry["fg_accuracy"] = _accuracy(*counts, videos.attributes)
            log.append(entry)
            logger.info(
                "iter %d loss %.3f fg accuracy %s",
                iteration,
                entry["loss"],
                _rounded(entry["fg_accuracy"]),
            )
    if eval_videos is not None:
        heldout = attribute_accuracy(backbone, head, eval_videos, pixel_mean, pixel_std)
        log[-1]["heldout_fg_accuracy"] = heldout
        logger.info("held-out fg accuracy %s", _rounded(heldout))
    return log


def _rounded(accuracy: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 3) for k, v in accuracy.items()}


def backbone_checkpoint(backbone: nn.Module, settings: dict | None = None) -> dict:
    """The backbone's weights under "backbone.", as MODEL.WEIGHTS loads into a meta-arch, and
    under "pretraining" the `settings` it was pretrained with (plain values), so that a reused
    file can be checked against the pretraining a job asks for."""
    checkpoint = {"model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()}}
    if settings is not None:
        checkpoint["pretraining"] = dict(settings)
    return checkpoint


def pretrain_config_backbone(
    cfg: CfgNode,
    dataset_root: Path,
    attributes: Sequence[str],
    output: Path,
    *,
    split: str = "train",
    eval_split: str | None = None,
    size: int | None = None,
    iterations: int = 1200,
    clips_per_batch: int = 6,
    frames_per_clip: int | None = None,
    lr: float = 1e-3,
    seed: int = 0,
    log_period: int = 50,
) -> list[dict]:
    """Pretrains the backbone of `cfg` on the attributes of `dataset_root/split` and writes it
    (`backbone_checkpoint`, with the settings) atomically to `output`; returns the log.
    Defaults: frames of INPUT.MIN_SIZE_TEST, clips of INPUT.SAMPLING_FRAME_NUM frames."""
    from rvos_d2.engine.checkpoint import atomic_write

    size = size or cfg.INPUT.MIN_SIZE_TEST
    frames_per_clip = frames_per_clip or cfg.INPUT.SAMPLING_FRAME_NUM
    split_dir = dataset_root / split
    videos = load_attribute_videos(split_dir, attributes, size)
    logger.info(
        "loaded %d videos of %s at %dx%d; classes: %s",
        len(videos.frames),
        split_dir,
        size,
        size,
        ", ".join(f"{name} {len(values)}" for name, values in videos.vocab.items()),
    )
    eval_videos = None
    if eval_split:
        eval_videos = load_attribute_videos(
            dataset_root / eval_split, attributes, size, vocab=videos.vocab
        )
    backbone = build_backbone(cfg).to(cfg.MODEL.DEVICE)
    log = pretrain_backbone(
        backbone,
        videos,
        iterations=iterations,
        clips_per_batch=clips_per_batch,
        frames_per_clip=frames_per_clip,
        lr=lr,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        seed=seed,
        log_period=log_period,
        eval_videos=eval_videos,
    )
    settings = {
        "split": split,
        "attributes": list(attributes),
        "iterations": iterations,
        "clips_per_batch": clips_per_batch,
        "frames_per_clip": frames_per_clip,
        "size": size,
        "lr": lr,
        "seed": seed,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(output) as f:  # an interrupted run leaves no partial MODEL.WEIGHTS
        torch.save(backbone_checkpoint(backbone, settings), f)
    return log

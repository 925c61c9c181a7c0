"""RVOSMetaArch: what every query-based RVOS meta-architecture shares.

Input contract (one dict per video, from the dataset mappers or `rvos_d2.data.model_input`):
  image       T x 3 x H x W uint8 frames (INPUT.FORMAT channel order), already resized;
  expression  the referring sentence;
  height, width  the original frame size, which outputs are resized to;
  instances   (training) one detectron2 Instances per frame with gt_masks, gt_boxes, gt_valid and
              optionally gt_annotated.

Output contract (inference, one dict per input video):
  pred_masks  T x height x width float probabilities of the referred object;
  scores      T per-frame confidence that the referred object is there;
  pred_boxes  T x 4 xyxy boxes in original pixels, for methods that predict boxes.

Subclasses implement `predict` (per-frame predictions of N query slots for a batch of clips) and
build a criterion; this base turns inputs into normalised padded frames, text features and
targets, runs training, and runs inference in windows of TEST.WINDOW frames, choosing one query
slot for the whole video.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn
from torchvision.ops import box_convert

from rvos_d2.modeling.losses import downsample_masks
from rvos_d2.modeling.propagation.postprocess import MaskPropagation
from rvos_d2.modeling.text_encoder import TextFeatures
from rvos_d2.modeling.utils import masks_to_original, padding_mask

from detectron2.modeling import Backbone
from detectron2.structures import ImageList

__all__ = ["RVOSMetaArch"]


class RVOSMetaArch(nn.Module):
    """Preprocessing, targets, text encoding, training step and windowed inference of RVOS models.

    `predict(images, text, num_frames, all_layers)` must return, for B = len(images) / num_frames
    clips: pred_logits B x T x N (per-frame score logits of N query slots; N = 1 for methods
    without queries), pred_masks B x T x N x h x w logits at `mask_stride` of the padded input,
    optionally pred_boxes B x T x N x 4 (cxcywh normalised by each frame's unpadded size), and
    with `all_layers` any extra entries the criterion reads (e.g. "aux_outputs").
    """

    def __init__(
        self,
        *,
        backbone: Backbone,
        text_encoder: nn.Module,
        criterion: nn.Module,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        size_divisibility: int,
        mask_stride: int,
        test_window: int,
        propagation: MaskPropagation | None = None,
    ):
        super().__init__()
        if test_window < 1:
            raise ValueError(f"TEST.WINDOW must be >= 1, got {test_window}")
        self.backbone, self.text_encoder, self.criterion = backbone, text_encoder, criterion
        self.size_divisibility = size_divisibility
        self.mask_stride = mask_stride
        self.test_window = test_window
        self.propagation = propagation  # TEST.PROPAGATION post-processing, or None
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def predict(
        self, images: ImageList, text: TextFeatures, num_frames: int, all_layers: bool
    ) -> dict[str, Any]:
        """Per-frame predictions of len(images) / num_frames clips (see the class docstring)."""
        raise NotImplementedError

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Training: dict of weighted losses. Inference: one output dict per input video."""
        if not self.training:
            return [self.inference_video(x) for x in batched_inputs]
        images, text, num_frames = self.training_inputs(batched_inputs)
        outputs = self.predict(images, text, num_frames, all_layers=True)
        return self.criterion(outputs, self.prepare_targets(batched_inputs, images))

    def training_inputs(
        self, batched_inputs: list[dict[str, Any]]
    ) -> tuple[ImageList, TextFeatures, int]:
        """Padded frames, text features and the clip length T of a batch of training clips."""
        lengths = {x["image"].shape[0] for x in batched_inputs}
        if len(lengths) != 1:
            raise ValueError(f"training clips must have one length T, got lengths {lengths}")
        images = self.preprocess([x["image"] for x in batched_inputs])
        text = self.text_encoder([x["expression"] for x in batched_inputs], self.device)
        return images, text, lengths.pop()

    def preprocess(self, videos: list[torch.Tensor]) -> ImageList:
        """Normalises uint8 frames (videos of T x 3 x H x W) and pads them all to one size."""
        mean, std = self.pixel_mean, self.pixel_std
        frames = [(f.to(self.device).float() - mean) / std for v in videos for f in v]
        return ImageList.from_tensors(frames, self.size_divisibility)

    def frame_features(
        self, images: ImageList, num_frames: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Backbone maps of the padded frames, their F x H x W padding mask (True = padding) and
        their F x 2 unpadded sizes; a video backbone sees the frames as clips of `num_frames`."""
        x = images.tensor
        sizes = torch.tensor(images.image_sizes, device=x.device)  # F x 2 (h, w)
        padding = padding_mask(x, sizes)
        if getattr(self.backbone, "is_video", False):
            x = x.unflatten(0, (-1, num_frames))
        return self.backbone(x), padding, sizes

    def prepare_targets(self, batched_inputs, images: ImageList) -> list[dict[str, torch.Tensor]]:
        """Per video: valid 1 x T, boxes 1 x T x 4 (cxcywh, normalised), masks 1 x T x h x w
        (area averages of the padded GT masks at `mask_stride`) and annotated T."""
        padded_h, padded_w = images.tensor.shape[-2:]
        targets = []
        for video in batched_inputs:
            frames = video.get("instances")
            if frames is None or len(frames) != video["image"].shape[0]:
                raise ValueError(
                    f"video {video.get('video_id')}: training needs one `instances` per frame"
                )
            masks = torch.zeros(len(frames), padded_h, padded_w, device=self.device)
            boxes, valid, annotated = [], [], []
            for t, inst in enumerate(frames):
                h, w = inst.image_size
                masks[t, :h, :w] = inst.gt_masks.tensor[0].to(self.device)
                scale = torch.tensor([w, h, w, h], dtype=torch.float, device=self.device)
                boxes.append(inst.gt_boxes.tensor[0].to(self.device) / scale)
                valid.append(bool(inst.gt_valid[0]))
                annotated.append(bool(inst.gt_annotated[0]) if inst.has("gt_annotated") else True)
            targets.append(
                {
                    "valid": torch.tensor([valid], device=self.device),
                    "boxes": box_convert(torch.stack(boxes), "xyxy", "cxcywh")[None],
                    "masks": downsample_masks(masks, self.mask_stride)[None],
                    "annotated": torch.tensor(annotated, device=self.device),
                }
            )
        return targets

    @torch.no_grad()
    def inference_video(self, video: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The whole video's outputs (the output contract) from `stream_video` over windows of
        TEST.WINDOW frames of `video["image"]`, then TEST.PROPAGATION post-processing if any."""
        frames = video["image"]
        windows = (
            frames[start : start + self.test_window]
            for start in range(0, frames.shape[0], self.test_window)
        )
        per_frame = list(
            self.stream_video(windows, video["expression"], (video["height"], video["width"]))
        )
        output = {key: torch.stack([f[key] for f in per_frame]) for key in per_frame[0]}
        if self.propagation is not None:
            output = self.propagation(frames, output)
        return output

    @torch.no_grad()
    def stream_video(
        self, windows: Iterable[torch.Tensor], expression: str, original_size: tuple[int, int]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Per-frame outputs ("pred_masks" H x W probabilities at `original_size`, "scores",
        "pred_boxes" xyxy) of a video given as consecutive windows of t x 3 x h x w uint8
        frames, yielded in frame order with memory bounded by one window.

        One query slot is chosen for the whole video by its mean score over all frames, so
        nothing can be yielded before the last window has run: the windows' low-resolution
        logits of all N slots (float32, N times the stride-`mask_stride` masks) are spilled to a
        temporary file and read back window by window once the slot is chosen; only scores and
        boxes (N numbers per frame) stay in memory. With one slot the frames are yielded as
        each window finishes.
        """
        text = self.text_encoder([expression], self.device)
        spilled: list[_Window] = []
        with tempfile.TemporaryFile() as spill:
            for frames in windows:
                images = self.preprocess([frames])
                out = self.predict(images, text, len(images), all_layers=False)
                window = _Window(
                    out["pred_logits"][0].sigmoid(),
                    out["pred_boxes"][0] if "pred_boxes" in out else None,
                    tuple(images.tensor.shape[-2:]),
                    tuple(frames.shape[-2:]),
                )
                masks = out["pred_masks"][0].float()  # t x N x h x w
                if masks.shape[1] == 1:
                    yield from window.frames(masks[:, 0], 0, original_size)
                    continue
                window.spill(masks, spill)
                spilled.append(window)
            if not spilled:
                return
            best = int(torch.cat([w.scores for w in spilled]).mean(0).argmax())
            for window in spilled:
                yield from window.frames(window.read(spill, best), best, original_size)


@dataclass
class _Window:
    """What `stream_video` keeps of one window: scores t x N, boxes t x N x 4 (cxcywh,
    normalised), the padded and unpadded input sizes, and where its logits are spilled."""

    scores: torch.Tensor
    boxes: torch.Tensor | None
    padded_size: tuple[int, int]
    image_size: tuple[int, int]
    offset: int = 0
    shape: tuple[int, ...] = ()

    def spill(self, masks: torch.Tensor, file: BinaryIO) -> None:
        """Appends the t x N x h x w logits to `file`."""
        array = masks.cpu().numpy()
        self.offset, self.shape = file.seek(0, os.SEEK_END), array.shape
        file.write(array.tobytes())

    def read(self, file: BinaryIO, slot: int) -> torch.Tensor:
        """The spilled logits of one slot, t x h x w."""
        file.seek(self.offset)
        array = np.frombuffer(file.read(int(np.prod(self.shape)) * 4), dtype=np.float32)
        return torch.from_numpy(array.reshape(self.shape)[:, slot].copy()).to(self.scores.device)

    def frames(
        self, logits: torch.Tensor, slot: int, original_size: tuple[int, int]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Per-frame outputs of slot `slot` from its t x h x w logits."""
        masks = masks_to_original(logits, self.padded_size, self.image_size, original_size)
        boxes = None
        if self.boxes is not None:
            height, width = original_size
            scale = torch.tensor([width, height, width, height], device=masks.device)
            boxes = box_convert(self.boxes[:, slot], "cxcywh", "xyxy") * scale
        for t in range(masks.shape[0]):
            frame = {"pred_masks": masks[t], "scores": self.scores[t, slot]}
            if boxes is not None:
                frame["pred_boxes"] = boxes[t]
            yield frame

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

from typing import Any

import torch
from torch import nn
from torchvision.ops import box_convert

from rvos_d2.modeling.losses import downsample_masks
from rvos_d2.modeling.text_encoder import TextFeatures
from rvos_d2.modeling.utils import masks_to_original

from detectron2.modeling import Backbone
from detectron2.structures import ImageList

__all__ = ["RVOSMetaArch"]


class RVOSMetaArch(nn.Module):
    """Preprocessing, targets, text encoding, training step and windowed inference of RVOS models.

    `predict(images, text, num_frames, all_layers)` must return, for B = len(images) / num_frames
    clips: pred_logits B x T x N, pred_boxes B x T x N x 4 (cxcywh normalised by each frame's
    unpadded size), pred_masks B x T x N x h x w logits at `mask_stride` of the padded input, and
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
    ):
        super().__init__()
        if test_window < 1:
            raise ValueError(f"TEST.WINDOW must be >= 1, got {test_window}")
        self.backbone, self.text_encoder, self.criterion = backbone, text_encoder, criterion
        self.size_divisibility = size_divisibility
        self.mask_stride = mask_stride
        self.test_window = test_window
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
        lengths = {x["image"].shape[0] for x in batched_inputs}
        if len(lengths) != 1:
            raise ValueError(f"training clips must have one length T, got lengths {lengths}")
        images = self.preprocess([x["image"] for x in batched_inputs])
        text = self.text_encoder([x["expression"] for x in batched_inputs], self.device)
        outputs = self.predict(images, text, lengths.pop(), all_layers=True)
        return self.criterion(outputs, self.prepare_targets(batched_inputs, images))

    def preprocess(self, videos: list[torch.Tensor]) -> ImageList:
        """Normalises uint8 frames (videos of T x 3 x H x W) and pads them all to one size."""
        mean, std = self.pixel_mean, self.pixel_std
        frames = [(f.to(self.device).float() - mean) / std for v in videos for f in v]
        return ImageList.from_tensors(frames, self.size_divisibility)

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
        """Runs windows of TEST.WINDOW frames, picks the query slot with the best mean score over
        the whole video, and returns its masks, scores and boxes at the original size.

        Until the choice, the low-resolution mask logits of all N slots are kept (float16): N
        times the stride-`mask_stride` masks of the video, less than the full-size output itself.
        """
        text = self.text_encoder([video["expression"]], self.device)
        frames = video["image"]
        logits, boxes, masks, sizes = [], [], [], []
        for start in range(0, frames.shape[0], self.test_window):
            images = self.preprocess([frames[start : start + self.test_window]])
            out = self.predict(images, text, len(images), all_layers=False)
            logits.append(out["pred_logits"][0])
            boxes.append(out["pred_boxes"][0])
            masks.append(out["pred_masks"][0].half())
            sizes.append(images.tensor.shape[-2:])
        scores = torch.cat(logits).sigmoid()  # T x N
        best = int(scores.mean(0).argmax())
        height, width = video["height"], video["width"]
        image_size = frames.shape[-2:]
        full = [
            masks_to_original(window[:, best].float(), padded, image_size, (height, width))
            for window, padded in zip(masks, sizes)
        ]
        scale = torch.tensor([width, height, width, height], device=scores.device)
        return {
            "pred_masks": torch.cat(full),
            "scores": scores[:, best],
            "pred_boxes": box_convert(torch.cat(boxes)[:, best], "cxcywh", "xyxy") * scale,
        }

"""Top-down RVOS (Liang et al., CVPR 2021 RVOS challenge): object tracklets, then grounding.

Stage 1 (frozen parts): instance segmentation on K uniformly sampled key frames gives candidate
masks; each is propagated forward and backward through the whole video into a tracklet scored by
detection score x mean propagation confidence; tracklet-NMS keeps at most P of them. Stage 2
(trained): a grounding model scores every kept tracklet in every frame against the expression;
the tracklet with the best mean score is the output. Only the grounding model is trained: its
target is the tracklet with the best tracklet IoU with the ground truth.

The frozen parts' weights come from their own trainings (a detectron2 instance segmentation
model, the propagation network); `assemble_topdown_weights` writes them into one TopDownRVOS
checkpoint for MODEL.WEIGHTS.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.heads.tracklet_grounding import (
    TrackletGroundingHead,
    ensemble_probabilities,
    grounding_loss,
    grounding_target,
)
from rvos_d2.modeling.keyframe_candidates import KeyFrameCandidates
from rvos_d2.modeling.propagation import Propagator
from rvos_d2.modeling.registry import PROPAGATION_REGISTRY
from rvos_d2.modeling.text_encoder import build_text_encoder
from rvos_d2.modeling.tracklets import Tracklets, build_tracklets, tracklet_nms

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, Backbone, build_backbone

__all__ = ["GroundingModel", "TopDownRVOS", "assemble_topdown_weights"]


class GroundingModel(nn.Module):
    """Visual encoder (a detectron2 backbone), text encoder and tracklet grounding head: per-frame
    grounding logits of P tracklets for one expression."""

    @configurable
    def __init__(
        self,
        *,
        backbone: Backbone,
        text_encoder: nn.Module,
        head: TrackletGroundingHead,
        in_feature: str,
        pixel_mean: tuple[float, ...],
        pixel_std: tuple[float, ...],
        window: int,
    ) -> None:
        super().__init__()
        _check_in_feature(backbone, in_feature)
        if window < 1:
            raise ValueError(f"TEST.WINDOW must be >= 1, got {window}")
        self.backbone, self.text_encoder, self.head = backbone, text_encoder, head
        self.in_feature, self.window = in_feature, window
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        g = cfg.MODEL.TOPDOWN.GROUNDING
        backbone = build_backbone(cfg)
        channels = _check_in_feature(backbone, g.IN_FEATURE)
        return {
            "backbone": backbone,
            "text_encoder": build_text_encoder(cfg, g.HIDDEN_DIM),
            "head": TrackletGroundingHead(cfg, visual_dim=channels),
            "in_feature": g.IN_FEATURE,
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "window": cfg.TEST.WINDOW,
        }

    def features(self, frames: Tensor) -> Tensor:
        """T x C x h x w backbone features of T uint8 frames, cropped to the unpadded image."""
        x = (frames.to(self.pixel_mean.device).float() - self.pixel_mean) / self.pixel_std
        height, width = x.shape[-2:]
        divisor = max(self.backbone.size_divisibility, 1)
        x = F.pad(x, (0, -width % divisor, 0, -height % divisor))
        if getattr(self.backbone, "is_video", False):
            feats = self.backbone(x[None])[self.in_feature]
        else:
            feats = self.backbone(x)[self.in_feature]
        h = math.ceil(feats.shape[-2] * height / x.shape[-2])
        w = math.ceil(feats.shape[-1] * width / x.shape[-1])
        return feats[..., :h, :w]

    def forward(self, frames: Tensor, masks: Tensor, expression: str) -> Tensor:
        """T x P grounding logits of tracklets `masks` (P x T x h x w) in uint8 `frames`
        (T x 3 x H x W), run in windows of TEST.WINDOW frames."""
        text = self.text_encoder([expression], self.pixel_mean.device)
        words, word_mask = text.word_feats[0], text.word_mask[0]
        logits = []
        for start in range(0, frames.shape[0], self.window):
            stop = start + self.window
            features = self.features(frames[start:stop])
            window_masks = masks[:, start:stop].to(features.device)
            logits.append(self.head(features, window_masks, words, word_mask))
        return torch.cat(logits)


def _check_in_feature(backbone: Backbone, name: str) -> int:
    """Channels of the backbone map `name`, with an error naming the key if there is none."""
    shapes = backbone.output_shape()
    if name not in shapes:
        raise ValueError(
            f"MODEL.TOPDOWN.GROUNDING.IN_FEATURE={name!r}: the backbone gives {sorted(shapes)}"
        )
    return shapes[name].channels


@META_ARCH_REGISTRY.register()
class TopDownRVOS(nn.Module):
    """Key-frame candidates -> tracklets -> tracklet-NMS -> tracklet-language grounding."""

    @configurable
    def __init__(
        self,
        *,
        candidates: KeyFrameCandidates,
        propagation_network: nn.Module,
        propagator: Propagator,
        grounding: GroundingModel,
        ensemble: list[GroundingModel],
        input_format: str,
        tracklet_stride: int,
        joint_propagation: bool,
        nms_threshold: float,
        nms_downsample: int,
        max_tracklets: int,
        min_target_iou: float,
        append_gt: bool,
    ) -> None:
        """
        Args:
            candidates: frozen key-frame candidate models.
            propagation_network: frozen network that `propagator` runs.
            propagator: propagates masks from a key frame through a video.
            grounding: the trained grounding model.
            ensemble: extra grounding models whose probabilities are averaged with its own.
            input_format: channel order of the input frames ("RGB" or "BGR").
            tracklet_stride, joint_propagation: see `build_tracklets`.
            nms_threshold, nms_downsample, max_tracklets: see `tracklet_nms`.
            min_target_iou: training clips whose best tracklet matches the target worse than
                this are skipped, or with `append_gt` get the ground truth as an extra tracklet
                (replacing the lowest-scored one if there are already `max_tracklets`), which is
                then their target.
        """
        super().__init__()
        if input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: expected RGB or BGR")
        self.candidates = candidates
        self.propagation_network = propagation_network.requires_grad_(False).eval()
        self.propagator = propagator
        self.grounding = grounding
        self.ensemble = nn.ModuleList(ensemble).requires_grad_(False)
        self.input_format = input_format
        self.tracklet_stride, self.joint_propagation = tracklet_stride, joint_propagation
        self.nms_threshold, self.nms_downsample = nms_threshold, nms_downsample
        self.max_tracklets, self.min_target_iou = max_tracklets, min_target_iou
        self.append_gt = append_gt
        # inference inputs come one per (video, expression): the last video's tracklets are kept
        self._cached: tuple[tuple, Tracklets] | None = None

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        td = cfg.MODEL.TOPDOWN
        network = PROPAGATION_REGISTRY.get(cfg.MODEL.PROPAGATION.NAME)(cfg)
        return {
            "candidates": KeyFrameCandidates(cfg),
            "propagation_network": network,
            "propagator": Propagator.from_config(cfg, network),
            "grounding": GroundingModel(cfg),
            "ensemble": _build_ensemble(cfg, td.ENSEMBLE.CONFIG_FILES, td.ENSEMBLE.WEIGHTS),
            "input_format": cfg.INPUT.FORMAT,
            "tracklet_stride": td.TRACKLET_STRIDE,
            "joint_propagation": td.JOINT_PROPAGATION,
            "nms_threshold": td.NMS_THRESH,
            "nms_downsample": td.NMS_DOWNSAMPLE,
            "max_tracklets": td.MAX_TRACKLETS,
            "min_target_iou": td.GROUNDING.MIN_TARGET_IOU,
            "append_gt": td.GROUNDING.APPEND_GT,
        }

    @property
    def device(self) -> torch.device:
        return self.grounding.pixel_mean.device

    def train(self, mode: bool = True) -> TopDownRVOS:
        """Only the grounding model trains; the tracklet stage and the ensemble stay in eval."""
        super().train(mode)
        self._cached = None  # weights may change before the next inference
        self.candidates.train(mode)
        self.propagation_network.eval()
        self.ensemble.eval()
        return self

    @torch.no_grad()
    def tracklets(self, frames: Tensor) -> Tracklets:
        """The kept tracklets (at most P, best score first) of one video's uint8 frames."""
        rgb = frames.to(self.device)
        if self.input_format == "BGR":
            rgb = rgb.flip(1)
        candidates = self.candidates(rgb)
        if len(candidates) == 0:
            return _no_tracklets(frames, self.tracklet_stride, self.device)
        tracklets = build_tracklets(
            self.propagator,
            rgb,
            candidates.masks,
            candidates.scores,
            candidates.frames,
            candidates.sources,
            stride=self.tracklet_stride,
            jointly=self.joint_propagation,
        )
        keep = tracklet_nms(
            tracklets, self.nms_threshold, self.max_tracklets, downsample=self.nms_downsample
        )
        return tracklets[keep]

    def _video_tracklets(self, video: dict[str, Any]) -> Tracklets:
        """`tracklets` of an inference input, reused for the next input of the same frames (the
        video's other expressions)."""
        frames = video["image"]
        if video.get("video_id") is None:
            return self.tracklets(frames)
        key = (video["video_id"], tuple(video.get("frame_ids", ())), tuple(frames.shape))
        if self._cached is None or self._cached[0] != key:
            self._cached = (key, self.tracklets(frames))
        return self._cached[1]

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Training: {"loss_grounding"}. Inference: one output dict per input video."""
        if not self.training:
            return [self.inference_video(x) for x in batched_inputs]
        losses = []
        for video in batched_inputs:
            masks = self.tracklets(video["image"]).masks
            gt, target, iou = self._match_target(video, masks)
            if iou < self.min_target_iou:
                if not self.append_gt:
                    continue
                masks = torch.cat([masks[: self.max_tracklets - 1], gt[None].to(masks.dtype)])
                target = len(masks) - 1
            logits = self.grounding(video["image"], masks, video["expression"])
            losses.append(grounding_loss(logits, target))
        if not losses:  # no clip of the batch has its target among the tracklets (no APPEND_GT)
            zero = sum(p.sum() for p in self.grounding.parameters() if p.requires_grad) * 0.0
            return {"loss_grounding": zero}
        return {"loss_grounding": torch.stack(losses).mean()}

    def _match_target(self, video: dict[str, Any], masks: Tensor) -> tuple[Tensor, int, float]:
        """The referred object's masks at the resolution of the P x T x h x w tracklet `masks`
        (`_target_masks`), and the index and tracklet IoU of the tracklet that matches it best
        (-1 and 0.0 without tracklets)."""
        gt, annotated = self._target_masks(video, masks.shape[-2:])
        target, iou = grounding_target(masks, gt, annotated) if len(masks) else (-1, 0.0)
        return gt, target, iou

    def _target_masks(self, video: dict[str, Any], size) -> tuple[Tensor, Tensor]:
        """The referred object's T x h x w masks at the tracklets' resolution (the fraction of
        each cell it covers: soft at the boundary like propagated masks, which matters when it is
        appended as a tracklet) and the T frames whose ground truth is known."""
        frames = video.get("instances")
        if frames is None or len(frames) != video["image"].shape[0]:
            raise ValueError(
                f"video {video.get('video_id')}: training needs one `instances` per frame"
            )
        masks = torch.stack([inst.gt_masks.tensor[0] for inst in frames]).to(self.device)
        small = F.interpolate(masks[None].float(), size=tuple(size), mode="area")[0]
        annotated = torch.tensor(
            [bool(i.gt_annotated[0]) if i.has("gt_annotated") else True for i in frames],
            device=self.device,
        )
        return small, annotated

    @torch.no_grad()
    def inference_video(self, video: dict[str, Any]) -> dict[str, Tensor]:
        """The best-grounded tracklet's masks at the original size and its per-frame grounding
        probabilities (the ensemble's mean where there is one). With ground truth in the input
        (INPUT.TEST_WITH_GT), also "candidate_target_iou": the best tracklet IoU (Eq. 3) any
        kept tracklet reaches with the target, what a perfect grounding would select."""
        frames = video["image"]
        height, width = video["height"], video["width"]
        tracklets = self._video_tracklets(video)
        extra = {}
        if video.get("instances") is not None:
            _, _, best_iou = self._match_target(video, tracklets.masks)
            extra["candidate_target_iou"] = torch.tensor(best_iou)
        if len(tracklets) == 0:
            return {
                "pred_masks": torch.zeros(len(frames), height, width, device=self.device),
                "scores": torch.zeros(len(frames), device=self.device),
                **extra,
            }
        probabilities = [
            model(frames, tracklets.masks, video["expression"]).softmax(dim=-1)
            for model in [self.grounding, *self.ensemble]
        ]
        frame_probs = ensemble_probabilities(probabilities)  # T x P
        best = int(frame_probs.mean(dim=0).argmax())
        masks = F.interpolate(
            tracklets.masks[best][:, None].float(), size=(height, width), mode="bilinear"
        )[:, 0]
        return {"pred_masks": masks.clamp(0, 1), "scores": frame_probs[:, best], **extra}


def _no_tracklets(frames: Tensor, stride: int, device: torch.device) -> Tracklets:
    """An empty tracklet set for a video without any candidate."""
    num_frames, height, width = frames.shape[0], *frames.shape[-2:]
    size = (math.ceil(height / stride), math.ceil(width / stride))
    return Tracklets(
        masks=torch.zeros(0, num_frames, *size, dtype=torch.float16, device=device),
        scores=torch.zeros(0, device=device),
        confidence=torch.zeros(0, num_frames, device=device),
        key_frames=torch.zeros(0, dtype=torch.long, device=device),
        sources=torch.zeros(0, dtype=torch.long, device=device),
    )


GROUNDING_PREFIX = "grounding."


def _build_ensemble(cfg: CfgNode, config_files, weights) -> list[GroundingModel]:
    """The grounding models of other TopDownRVOS configs with their checkpoints' weights."""
    from rvos_d2.config import load_config
    from rvos_d2.engine.checkpoint import load_checkpoint_file

    if len(config_files) != len(weights):
        raise ValueError(
            "MODEL.TOPDOWN.ENSEMBLE: CONFIG_FILES and WEIGHTS must have one entry per model, got "
            f"{len(config_files)} and {len(weights)}"
        )
    models = []
    for config_file, path in zip(config_files, weights):
        member_cfg = load_config(config_file, ["MODEL.DEVICE", cfg.MODEL.DEVICE])
        model = GroundingModel(member_cfg)
        state = load_checkpoint_file(path)["model"]
        grounding = {
            k[len(GROUNDING_PREFIX) :]: v
            for k, v in state.items()
            if k.startswith(GROUNDING_PREFIX)
        }
        if not grounding:
            raise ValueError(
                f"MODEL.TOPDOWN.ENSEMBLE.WEIGHTS: {path} holds no TopDownRVOS grounding weights"
            )
        model.load_state_dict(grounding)
        models.append(model.to(cfg.MODEL.DEVICE).eval())
    return models


def assemble_topdown_weights(cfg: CfgNode, model: TopDownRVOS | None = None) -> dict[str, Tensor]:
    """The state dict of a TopDownRVOS whose parts carry their pretrained weights: the candidate
    models MODEL.TOPDOWN.CANDIDATES.WEIGHTS, the grounding backbone GROUNDING.BACKBONE_WEIGHTS
    (each loaded by detectron2's checkpointer into that part, so model-zoo .pkl files load as
    they are) and the propagation network PROPAGATION_WEIGHTS (an rvos_d2 checkpoint of the
    network or of SpaceTimeMemoryNetwork). Save it and give it as MODEL.WEIGHTS to train the
    grounding model. Parts without weights keep their initialisation."""
    from rvos_d2.engine.checkpoint import RVOSCheckpointer, load_checkpoint_file

    from detectron2.modeling import build_model

    model = build_model(cfg) if model is None else model
    td = cfg.MODEL.TOPDOWN
    for part, path in zip(model.candidates.models, td.CANDIDATES.WEIGHTS):
        if path:
            RVOSCheckpointer(part).load(path)
    if td.GROUNDING.BACKBONE_WEIGHTS:
        RVOSCheckpointer(model.grounding.backbone).load(td.GROUNDING.BACKBONE_WEIGHTS)
    if td.PROPAGATION_WEIGHTS:
        state = load_checkpoint_file(td.PROPAGATION_WEIGHTS)["model"]
        network = {k[len("network.") :]: v for k, v in state.items() if k.startswith("network.")}
        model.propagation_network.load_state_dict(network or state)
    return model.state_dict()


def main(argv: list[str] | None = None) -> None:
    """Writes the assembled initial weights of a TopDownRVOS config to a file."""
    import argparse

    from rvos_d2.config import load_config
    from rvos_d2.engine.checkpoint import atomic_write

    parser = argparse.ArgumentParser(
        description="python -m rvos_d2.modeling.meta_arch.topdown: " + main.__doc__
    )
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--output", required=True, help="checkpoint to write (for MODEL.WEIGHTS)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    state = assemble_topdown_weights(load_config(args.config_file, args.opts))
    with atomic_write(args.output) as f:  # an interrupted write leaves no truncated file
        torch.save({"model": state}, f)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

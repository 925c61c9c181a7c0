"""SpaceTimeMemoryNetwork: STCN as a detectron2 meta-architecture for semi-supervised VOS.

Training (as STCN): frame 0 of a clip is encoded into memory with its ground-truth masks; each
later frame is segmented from the memory of all earlier frames (full softmax affinity) and then
enters the memory with its predicted probabilities; every frame after the first adds a
bootstrapped cross-entropy over background + objects. Inference propagates the given reference
masks forward from the frame where each object's mask is given (see `Propagator`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.propagation.aggregation import aggregate_logits, soft_aggregate
from rvos_d2.modeling.propagation.losses import bootstrap_fraction, bootstrapped_cross_entropy
from rvos_d2.modeling.propagation.matching import MatchingContext
from rvos_d2.modeling.propagation.network import STCNNetwork
from rvos_d2.modeling.propagation.propagator import Propagator, pad_to_multiple, unpad
from rvos_d2.modeling.registry import PROPAGATION_REGISTRY

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.events import get_event_storage


def clip_masks(clip: dict[str, Any]) -> Tensor:
    """T x K x H x W 0/1 masks of a training clip: `gt_masks`, or the per-frame `instances`."""
    if "gt_masks" in clip:
        masks = torch.as_tensor(clip["gt_masks"])
    elif "instances" in clip:
        masks = torch.stack([inst.gt_masks.tensor for inst in clip["instances"]])
    else:
        raise KeyError(f"training clip {clip.get('video_id')!r}: no 'gt_masks' (T x K x H x W)")
    image = clip["image"]
    if masks.dim() != 4 or masks.shape[0] != image.shape[0] or masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"training clip {clip.get('video_id')!r}: gt_masks of shape {tuple(masks.shape)} do "
            f"not match T x K x H x W for images of shape {tuple(image.shape)}"
        )
    if masks.shape[1] == 0:
        raise ValueError(f"training clip {clip.get('video_id')!r}: no object (K = 0)")
    return masks.float()


def label_map(masks: Tensor) -> Tensor:
    """K x H x W 0/1 masks -> H x W labels (0 = background, k = object k; later ones on top)."""
    objects = torch.arange(1, masks.shape[0] + 1, device=masks.device).view(-1, 1, 1)
    return (masks.bool() * objects).amax(0).long()


@META_ARCH_REGISTRY.register()
class SpaceTimeMemoryNetwork(nn.Module):
    """STCN trained on video clips; inference propagates reference masks through a video.

    BatchNorm statistics stay frozen in training (the modules are kept in eval mode), as in
    STCN's training; their affine parameters are trained.
    """

    @configurable
    def __init__(
        self,
        *,
        network: STCNNetwork,
        propagator: Propagator,
        bootstrap: tuple[int, int, float],
    ):
        """
        Args:
            network: the space-time memory network.
            propagator: runs inference with `network`.
            bootstrap: (start_warm, end_warm, top_p) of the bootstrapped cross-entropy.
        """
        super().__init__()
        self.network = network
        self.propagator = propagator
        self.bootstrap = bootstrap

    @classmethod
    def from_config(cls, cfg) -> dict:
        p = cfg.MODEL.PROPAGATION
        network = PROPAGATION_REGISTRY.get(p.NAME)(cfg)
        return {
            "network": network,
            "propagator": Propagator.from_config(cfg, network),
            "bootstrap": (p.BOOTSTRAP_START_WARM, p.BOOTSTRAP_END_WARM, p.BOOTSTRAP_TOP_P),
        }

    @property
    def device(self) -> torch.device:
        return self.network.pixel_mean.device

    def train(self, mode: bool = True) -> SpaceTimeMemoryNetwork:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def forward(self, batched_inputs: list[dict[str, Any]]):
        if self.training:
            fraction = bootstrap_fraction(_current_iteration(), *self.bootstrap)
            losses = [self.clip_loss(clip, fraction) for clip in batched_inputs]
            return {"loss_stcn_ce": torch.stack(losses).mean()}
        return [self.inference(video) for video in batched_inputs]

    def clip_loss(self, clip: dict[str, Any], fraction: float) -> Tensor:
        """Sum over frames 1..T-1 of the bootstrapped cross-entropy of one clip."""
        masks = clip_masks(clip).to(self.device)
        if masks.shape[0] < 2:
            raise ValueError(f"training clip {clip.get('video_id')!r}: needs >= 2 frames")
        net = self.network
        images, pad = pad_to_multiple(net.normalize(clip["image"]))
        padded_masks = pad_to_multiple(masks)[0]
        feats = net.encode_key(images)
        keys = [feats.key[0].flatten(1)]
        values = [net.encode_value(images[0], feats.f16[0], padded_masks[0]).flatten(2)]
        reference = previous = (feats.key[0], padded_masks[0])  # for CFBI-style matching
        losses = []
        for t in range(1, masks.shape[0]):
            context = MatchingContext(*reference, *previous)
            logits = net.segment_dense(torch.cat(keys, 1), torch.cat(values, 2), feats[t], context)
            agg = aggregate_logits(torch.sigmoid(logits))
            labels = label_map(masks[t])
            losses.append(bootstrapped_cross_entropy(unpad(agg, pad), labels, fraction))
            probs = torch.softmax(agg, dim=0)[1:]
            previous = (feats.key[t], probs)
            if t + 1 < masks.shape[0]:
                keys.append(feats.key[t].flatten(1))
                values.append(net.encode_value(images[t], feats.f16[t], probs).flatten(2))
        return torch.stack(losses).sum()

    @torch.no_grad()
    def inference(self, video: dict[str, Any]) -> dict[str, Any]:
        """Each object propagated forward from its given frame; before it, probability 0.

        Objects given at the same frame are propagated together; where objects given at
        different frames overlap in time, their probabilities are soft-aggregated again.
        """
        images = video["image"]
        given = torch.as_tensor(video["given_masks"])
        given_frames = list(video["given_frames"])
        num_frames, num_objects = images.shape[0], given.shape[0]
        if len(given_frames) != num_objects:
            raise ValueError(
                f"video {video.get('video_id')!r}: {num_objects} given masks but "
                f"{len(given_frames)} given_frames"
            )
        probs = torch.zeros(num_frames, num_objects, *images.shape[-2:], device=self.device)
        for start in sorted(set(given_frames)):
            if not 0 <= start < num_frames:
                raise IndexError(
                    f"video {video.get('video_id')!r}: given frame {start} outside the video's "
                    f"{num_frames} frames"
                )
            objects = [k for k, g in enumerate(given_frames) if g == start]
            for t, frame_probs, _ in self.propagator.stream(images[start:], 0, given[objects]):
                probs[start + t, objects] = frame_probs
        starts = torch.tensor(given_frames, device=self.device)
        for t in range(num_frames):
            active = (starts <= t).nonzero().flatten()
            if len(set(starts[active].tolist())) > 1:  # several propagations overlap here
                probs[t, active] = soft_aggregate(probs[t, active])[1:]
        size = (video["height"], video["width"])
        if tuple(probs.shape[-2:]) != size:
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        return {"pred_masks": probs.cpu(), "obj_ids": list(video["obj_ids"])}


def _current_iteration() -> int:
    """The trainer's iteration (for the bootstrapping schedule), 0 outside a trainer."""
    try:
        return get_event_storage().iter
    except AssertionError:
        return 0

"""URVOS (Seo et al., ECCV 2020): unified referring video object segmentation.

Each frame is segmented from its own Res2..Res5 maps, the expression (cross-modal attention on
Res5) and memory frames with their masks (memory attention on Res4), decoded by a feature
pyramid into mask logits at stride 4. Training: in each clip, the earlier frames (at most T)
with their ground-truth masks are the memory of a frame; the first frame has none. Inference
(`stream_video`): stage 1 segments every frame without memory; stage 2 propagates from the most
confident frame to both ends with at most T memory frames, for INFERENCE_ITERATIONS rounds.
One prediction per frame (N = 1): pred_logits is the logit of the frame's confidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rvos_d2.modeling.meta_arch.base import RVOSMetaArch
from rvos_d2.modeling.propagation.postprocess import build_test_propagation
from rvos_d2.modeling.text_encoder import TextFeatures, build_text_encoder
from rvos_d2.modeling.urvos.attention import ConcatFusion, CrossModalAttention, MemoryAttention
from rvos_d2.modeling.urvos.criterion import URVOSCriterion
from rvos_d2.modeling.urvos.decoder import PyramidDecoder
from rvos_d2.modeling.urvos.inference import (
    SCHEMES,
    FrameStore,
    MemoryBank,
    frame_confidence,
    propagation_orders,
)
from rvos_d2.modeling.urvos.memory_encoder import MemoryEncoder, build_memory_encoder
from rvos_d2.modeling.utils import masks_to_original, resize_mask

from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import ImageList

__all__ = ["URVOS", "clip_memory_schedule"]

LEVELS = ("res5", "res4", "res3", "res2")  # decoder order, coarse to fine


def clip_memory_schedule(num_frames: int, memory_frames: int) -> Tensor:
    """T x T bool: frame t of a training clip reads frame t' < t among its `memory_frames`
    predecessors."""
    t = torch.arange(num_frames)
    gap = t[:, None] - t[None, :]
    return (gap > 0) & (gap <= memory_frames)


@META_ARCH_REGISTRY.register()
class URVOS(RVOSMetaArch):
    """Cross-modal attention, memory attention and a feature pyramid decoder (MODEL.URVOS)."""

    @configurable
    def __init__(
        self,
        *,
        cross_modal: nn.Module,
        memory_encoder: MemoryEncoder | None,
        memory_attention: MemoryAttention | None,
        decoder: PyramidDecoder,
        memory_frames: int,
        inference_scheme: str = "anchor",
        inference_iterations: int = 1,
        **kwargs,
    ):
        """memory_encoder, memory_attention: both, or neither (no memory attention);
        memory_frames: T; inference_scheme: one of SCHEMES; inference_iterations: stage-2 rounds."""
        super().__init__(mask_stride=decoder.stride, **kwargs)
        if (memory_encoder is None) != (memory_attention is None):
            raise ValueError("URVOS: memory attention needs a memory encoder, and only it")
        if memory_frames < 1:
            raise ValueError(f"MODEL.URVOS.MEMORY_FRAMES must be >= 1, got {memory_frames}")
        if inference_scheme not in SCHEMES:
            raise ValueError(
                f"MODEL.URVOS.INFERENCE_SCHEME={inference_scheme!r}: choose among {SCHEMES}"
            )
        if inference_iterations < 0:
            raise ValueError(
                f"MODEL.URVOS.INFERENCE_ITERATIONS must be >= 0, got {inference_iterations}"
            )
        self.cross_modal, self.decoder = cross_modal, decoder
        self.memory_encoder, self.memory_attention = memory_encoder, memory_attention
        self.memory_frames = memory_frames
        self.inference_scheme, self.inference_iterations = inference_scheme, inference_iterations
        if memory_encoder is not None:
            self._register_load_state_dict_pre_hook(self._memory_encoder_from_backbone)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict[str, Any]:
        uc = cfg.MODEL.URVOS
        backbone = build_backbone(cfg)
        shapes = backbone.output_shape()
        missing = [name for name in LEVELS if name not in shapes]
        if missing or getattr(backbone, "is_video", False):
            raise ValueError(
                f"URVOS needs an image backbone with outputs {sorted(LEVELS)}; missing "
                f"{missing} (MODEL.RESNETS.OUT_FEATURES or the backbone's OUT_FEATURES), or "
                "a video backbone (e.g. MODEL.TINY_BACKBONE.TEMPORAL_STAGES is not empty)"
            )
        dim = uc.ATTENTION_DIM
        fusion = CrossModalAttention if uc.CROSS_MODAL_ATTENTION else ConcatFusion
        memory_encoder = memory_attention = None
        if uc.MEMORY_ATTENTION:
            memory_encoder = build_memory_encoder(cfg)
            memory_attention = MemoryAttention(
                shapes["res4"].channels, memory_encoder.channels, dim
            )
        return {
            "backbone": backbone,
            "text_encoder": build_text_encoder(cfg, dim),
            "cross_modal": fusion(shapes["res5"].channels, dim, dim),
            "memory_encoder": memory_encoder,
            "memory_attention": memory_attention,
            "decoder": PyramidDecoder(
                [shapes[name].channels for name in LEVELS],
                [shapes[name].stride for name in LEVELS],
                dim,
                uc.DECODER_DIM,
                memory=uc.MEMORY_ATTENTION,
            ),
            "criterion": URVOSCriterion(),
            "pixel_mean": tuple(cfg.MODEL.PIXEL_MEAN),
            "pixel_std": tuple(cfg.MODEL.PIXEL_STD),
            "size_divisibility": max(backbone.size_divisibility, shapes["res5"].stride),
            "test_window": cfg.TEST.WINDOW,
            "propagation": build_test_propagation(cfg),
            "memory_frames": uc.MEMORY_FRAMES,
            "inference_scheme": uc.INFERENCE_SCHEME,
            "inference_iterations": uc.INFERENCE_ITERATIONS,
        }

    def _memory_encoder_from_backbone(self, state_dict, prefix, *args) -> None:
        """Checkpoints without memory-encoder weights (ImageNet, backbone-only) initialise it
        from the visual encoder's."""
        self.memory_encoder.weights_from_backbone(
            state_dict, f"{prefix}memory_encoder.", f"{prefix}backbone."
        )

    def forward(self, batched_inputs: list[dict[str, Any]]):
        """Training: loss_mask of clips whose frames read their predecessors with ground-truth
        masks. Inference: the base's (through `stream_video`)."""
        if not self.training:
            return super().forward(batched_inputs)
        images, text, num_frames = self.training_inputs(batched_inputs)
        targets = self.prepare_targets(batched_inputs, images)
        memory_masks = torch.cat([t["masks"][0] for t in targets])
        memory_valid = torch.cat([t["annotated"] for t in targets])
        outputs = self.predict(
            images, text, num_frames, True, memory_masks=memory_masks, memory_valid=memory_valid
        )
        return self.criterion(outputs, targets)

    def predict(
        self,
        images: ImageList,
        text: TextFeatures,
        num_frames: int,
        all_layers: bool,
        memory_masks: Tensor | None = None,
        memory_valid: Tensor | None = None,
    ) -> dict[str, Any]:
        """pred_masks B x T x 1 x h x w logits at stride 4 and pred_logits B x T x 1 (logit of
        the frame confidence). Without `memory_masks` the frames have no memory (stage 1);
        with them (F x h x w at stride 4, `memory_valid` F: frames whose mask is known), each
        frame reads its predecessors in its clip (`clip_memory_schedule`)."""
        features, padding, _ = self.frame_features(images, num_frames)
        memory = None
        if self.memory_attention is not None:
            key, value = self.memory_attention.target(features["res4"])
            memory = value  # Eq. 14 without memory frames
            if memory_masks is not None:
                memory = self._read_clip_memory(
                    images, key, value, memory_masks, memory_valid, num_frames
                )
        logits = self._decode(features, padding, text.per_frame(num_frames), memory)
        confidence = frame_confidence(logits.detach()).clamp(1e-6, 1 - 1e-6)
        return {
            "pred_masks": logits.unflatten(0, (-1, num_frames))[:, :, None],
            "pred_logits": confidence.logit().view(-1, num_frames, 1),
        }

    def _decode(
        self,
        features: dict[str, Tensor],
        padding: Tensor,
        text: TextFeatures,
        memory: Tensor | None,
    ) -> Tensor:
        """Mask logits F x h x w of F frames from their backbone maps, text features (F rows)
        and memory-attentive maps (F x A x h4 x w4, None without memory attention)."""
        res5 = features["res5"]
        cross = self.cross_modal(
            res5, resize_mask(padding, res5.shape[-2:]), text.word_feats, text.word_mask
        )
        return self.decoder([features[name] for name in LEVELS], cross, memory)

    def _read_clip_memory(
        self,
        images: ImageList,
        key: Tensor,
        value: Tensor,
        masks: Tensor,
        valid: Tensor | None,
        num_frames: int,
    ) -> Tensor:
        """Memory-attentive maps of training clips: frame t reads frames t' < t of its clip
        (at most T back) whose masks are known, encoded with those masks."""
        encoded = self.memory_encoder(images.tensor, self._mask_input(masks, images))
        frames = torch.arange(num_frames, device=self.device).repeat(len(masks) // num_frames)
        memory_key, memory_value = self.memory_attention.memory(encoded, frames, num_frames)
        allowed = clip_memory_schedule(num_frames, self.memory_frames).to(self.device)
        allowed = allowed[None].repeat(len(masks) // num_frames, 1, 1)
        if valid is not None:
            allowed = allowed & valid.view(-1, 1, num_frames)
        clips = [x.unflatten(0, (-1, num_frames)) for x in (key, value, memory_key, memory_value)]
        return self.memory_attention(*clips, allowed).flatten(0, 1)

    def _mask_input(self, masks: Tensor, images: ImageList) -> Tensor:
        """Stride-4 masks (probabilities, F x h x w) upsampled to the padded frames."""
        size = images.tensor.shape[-2:]
        return F.interpolate(masks[:, None].float(), size=size, mode="bilinear")[:, 0]

    @torch.no_grad()
    def stream_video(
        self, windows: Iterable[torch.Tensor], expression: str, original_size: tuple[int, int]
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Per-frame outputs ("pred_masks" at `original_size`, "scores": frame confidence) of
        the two-stage inference, yielded in frame order once both stages are done. Frames and
        their stride-4 logits wait in a temporary file (FrameStore); the network sees one
        window (stage 1) or one frame and at most T memory frames (stage 2) at a time."""
        text = self.text_encoder([expression], self.device)
        with FrameStore() as store:
            confidences, sizes = [], None
            for frames in windows:
                images = self.preprocess([frames])
                logits = self.predict(images, text, len(images), False)["pred_masks"][0, :, 0]
                sizes = (tuple(images.tensor.shape[-2:]), tuple(frames.shape[-2:]))
                store.append(frames, logits)
                confidences.append(self._confidence(logits, sizes[1]))
            if not len(store):
                return
            confidence = torch.cat(confidences)
            if self.memory_attention is not None:
                for _ in range(self.inference_iterations):
                    self._second_stage(store, text, confidence)
            for t in range(len(store)):
                logits = store.logits(t).to(self.device)[None]
                masks = masks_to_original(logits, *sizes, original_size)
                yield {"pred_masks": masks[0], "scores": confidence[t]}

    def _confidence(self, logits: Tensor, image_size: tuple[int, int]) -> Tensor:
        """Confidence (`frame_confidence`) of t x h x w logits over the frames' unpadded part."""
        h, w = (-(-side // self.mask_stride) for side in image_size)
        return frame_confidence(logits[:, :h, :w])

    def _second_stage(self, store: FrameStore, text: TextFeatures, confidence: Tensor) -> None:
        """One round of stage 2: from the anchor (the most confident frame; "forward": the
        first) each way, every frame re-segmented with the memory, then added to it. Updates
        the store's logits and `confidence` in place."""
        anchor = 0 if self.inference_scheme == "forward" else int(confidence.argmax())
        replace = "confidence" if self.inference_scheme == "anchor" else "previous"
        length = len(store)
        for order in propagation_orders(self.inference_scheme, anchor, length):
            bank = MemoryBank(self.memory_frames, replace)
            images = self.preprocess([store.frame(anchor)[None]])
            logits = store.logits(anchor).to(self.device)
            bank.add(
                anchor, confidence[anchor], *self._memory_entry(images, logits, anchor, length)
            )
            for t in order:
                images = self.preprocess([store.frame(t)[None]])
                logits = self._segment_with_memory(images, text, bank)
                store.write_logits(t, logits)
                confidence[t] = self._confidence(logits[None], images.image_sizes[0])[0]
                bank.add(t, confidence[t], *self._memory_entry(images, logits, t, length))

    def _memory_entry(
        self, images: ImageList, logits: Tensor, index: int, length: int
    ) -> tuple[Tensor, Tensor]:
        """Memory key and value (A x h4 x w4) of one frame with its mask logits (h x w)."""
        encoded = self.memory_encoder(
            images.tensor, self._mask_input(logits[None].sigmoid(), images)
        )
        frames = torch.tensor([index], device=self.device)
        key, value = self.memory_attention.memory(encoded, frames, length)
        return key[0], value[0]

    def _segment_with_memory(
        self, images: ImageList, text: TextFeatures, bank: MemoryBank
    ) -> Tensor:
        """Mask logits (h x w) of one frame reading the memory frames of `bank`."""
        features, padding, _ = self.frame_features(images, 1)
        key, value = self.memory_attention.target(features["res4"])
        memory_key, memory_value = bank.stacked()
        memory = self.memory_attention(key[None], value[None], memory_key[None], memory_value[None])
        return self._decode(features, padding, text, memory[0])[0]

"""RVOSTrainer: detectron2's DefaultTrainer wired to rvos_d2's data, evaluation and optimizer.

Differences from DefaultTrainer: clip mappers for training and inference, rvos_d2 evaluators,
parameter-grouped AdamW/SGD (rvos_d2.engine.optimizer), DistributedDataParallel without
``device_ids`` on the CPU, fp32 training with a warning when AMP is requested without CUDA,
code-free checkpoint loading (RVOSCheckpointer), a model_final.pth after every resumed run, and
a clear error for an unknown MODEL.META_ARCHITECTURE. Hooks (checkpointing, evaluation, writers)
are detectron2's defaults.
"""

from __future__ import annotations

import logging
import os
import warnings
import weakref

import torch
from torch import nn

from rvos_d2.engine.checkpoint import RVOSCheckpointer, check_checkpoint_file
from rvos_d2.engine.launch import create_ddp_model
from rvos_d2.engine.optimizer import build_optimizer
from rvos_d2.utils.cli import UserError

from detectron2.config import CfgNode
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.evaluation import DatasetEvaluator, verify_results
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

__all__ = ["RVOSTrainer", "check_meta_architecture", "evaluate"]


def check_meta_architecture(cfg: CfgNode) -> None:
    """Raises a KeyError listing the registered models if MODEL.META_ARCHITECTURE is unknown."""
    name = cfg.MODEL.META_ARCHITECTURE
    if name in META_ARCH_REGISTRY:
        return
    registered = sorted(META_ARCH_REGISTRY, key=lambda item: item[0])
    ours = [key for key, obj in registered if obj.__module__.startswith("rvos_d2.")]
    others = [key for key, obj in registered if not obj.__module__.startswith("rvos_d2.")]
    raise KeyError(
        f"MODEL.META_ARCHITECTURE={name!r} names no registered meta-architecture. "
        f"rvos_d2 meta-architectures: {', '.join(ours) or '(none)'}; "
        f"other registered: {', '.join(others) or '(none)'}"
    )


def _on_cuda(model: nn.Module) -> bool:
    return any(p.device.type == "cuda" for p in model.parameters())


def _step_trainer(cfg: CfgNode, model: nn.Module, data_loader, optimizer) -> SimpleTrainer:
    """AMPTrainer when SOLVER.AMP.ENABLED and the model is on CUDA, else SimpleTrainer (fp32)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return SimpleTrainer(model, data_loader, optimizer)
    if not _on_cuda(model):
        message = (
            "SOLVER.AMP.ENABLED is set but the model is not on a CUDA device "
            f"(MODEL.DEVICE={cfg.MODEL.DEVICE!r}); training in float32 instead"
        )
        logging.getLogger(__name__).warning(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
        return SimpleTrainer(model, data_loader, optimizer)
    scaler = torch.amp.GradScaler("cuda") if hasattr(torch.amp, "GradScaler") else None
    return AMPTrainer(model, data_loader, optimizer, grad_scaler=scaler)


class RVOSTrainer(DefaultTrainer):
    """Trains and evaluates rvos_d2 meta-architectures with detectron2's default hooks."""

    def __init__(self, cfg: CfgNode) -> None:
        # Same construction order as DefaultTrainer, with CPU-capable DDP, AMP and checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = _step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = RVOSCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def resume_or_load(self, resume: bool = True) -> None:
        """detectron2's resume_or_load; a run resumed at its end also ends with a complete
        model_final.pth (a crash while writing it may have left none)."""
        super().resume_or_load(resume=resume)
        if not (resume and self.start_iter >= self.max_iter and comm.is_main_process()):
            return
        final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
        try:
            check_checkpoint_file(final)
        except UserError as err:
            logging.getLogger(__name__).warning(f"{err}; writing it from the resumed state")
            self.checkpointer.save("model_final", iteration=self.start_iter - 1)

    def state_dict(self) -> dict:
        # Adds the optimizer (and AMP grad scaler) state under "_trainer", as detectron2 after
        # v0.6 does; the v0.6 DefaultTrainer saves only the iteration and hook states.
        state = TrainerBase.state_dict(self)
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        TrainerBase.load_state_dict(self, state_dict)
        inner = state_dict.get("_trainer")
        if inner is None:
            logging.getLogger(__name__).warning(
                "the checkpoint holds no optimizer state; the optimizer starts afresh"
            )
        elif isinstance(self._trainer, AMPTrainer) and "grad_scaler" not in inner:
            SimpleTrainer.load_state_dict(self._trainer, inner)  # saved by an fp32 run
        else:
            self._trainer.load_state_dict(inner)

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        check_meta_architecture(cfg)
        return super().build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        from rvos_d2.data.build import build_train_loader

        return build_train_loader(cfg)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        from rvos_d2.data.build import build_test_loader

        return build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None
    ) -> DatasetEvaluator:
        """The evaluator of `dataset_name` (output_folder defaults to OUTPUT_DIR/inference/NAME)."""
        from rvos_d2.evaluation import build_evaluator

        return build_evaluator(cfg, dataset_name, output_folder)


def evaluate(cfg: CfgNode, resume: bool = False) -> dict:
    """Evaluates MODEL.WEIGHTS (with `resume`: the last checkpoint in OUTPUT_DIR) on TEST sets."""
    model = RVOSTrainer.build_model(cfg)
    checkpointer = RVOSCheckpointer(
        model, save_dir=cfg.OUTPUT_DIR, allow_partial=cfg.MODEL.WEIGHTS_ALLOW_PARTIAL
    )
    if not cfg.MODEL.WEIGHTS and not (resume and checkpointer.has_checkpoint()):
        raise ValueError(
            "evaluation needs weights: set MODEL.WEIGHTS (or resume with a checkpoint in "
            f"OUTPUT_DIR={cfg.OUTPUT_DIR!r})"
        )
    checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=resume)
    results = RVOSTrainer.test(cfg, model)
    if comm.is_main_process():
        verify_results(cfg, results)
    return results

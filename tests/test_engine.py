"""rvos_d2.engine: parameter groups, gradient clipping, AMP fallback, checkpoints, launching."""

import pickle

import numpy as np
import pytest
import torch
from torch import nn

from rvos_d2.engine import (
    RVOSCheckpointer,
    RVOSTrainer,
    build_optimizer,
    check_meta_architecture,
    get_param_groups,
    launch,
    load_checkpoint_file,
)
from tests.fixtures.engine import EngineToyRVOS

from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

LR, MULT = 1e-3, 0.1
WD, WD_NORM, WD_EMBED, WD_BIAS = 0.05, 0.01, 0.02, 0.03


def _solver(cfg, **overrides):
    cfg.SOLVER.BASE_LR = LR
    cfg.SOLVER.BACKBONE_MULTIPLIER = MULT
    cfg.SOLVER.WEIGHT_DECAY = WD
    cfg.SOLVER.WEIGHT_DECAY_NORM = WD_NORM
    cfg.SOLVER.WEIGHT_DECAY_EMBED = WD_EMBED
    cfg.SOLVER.WEIGHT_DECAY_BIAS = WD_BIAS
    for key, value in overrides.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _hyperparams(groups):
    """parameter id -> (lr, weight_decay); fails if a parameter sits in two groups."""
    out = {}
    for group in groups:
        for param in group["params"]:
            assert id(param) not in out, "parameter in two groups"
            out[id(param)] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups_follow_solver_rules(toy_cfg):
    model = EngineToyRVOS(_solver(toy_cfg))
    hp = _hyperparams(get_param_groups(model, toy_cfg))
    expected = {
        "backbone.0.weight": (LR * MULT, WD),
        "backbone.0.bias": (LR * MULT, WD_BIAS),
        "backbone.2.weight": (LR * MULT, WD),
        "backbone.2.bias": (LR * MULT, WD_BIAS),
        "word_embed.weight": (LR, WD_EMBED),  # nn.Embedding
        "level_embed": (LR, WD_EMBED),  # listed in embedding_param_names
        "text_norm.weight": (LR, WD_NORM),
        "text_norm.bias": (LR, WD_NORM),  # norm layers win over the bias rule
        "mask_head.weight": (LR, WD),
        "mask_head.bias": (LR, WD_BIAS),
    }
    named = dict(model.named_parameters())
    for name, value in expected.items():
        assert hp[id(named[name])] == pytest.approx(value), name
    frozen = {id(p) for p in model.text_encoder.parameters()}
    assert frozen and not frozen & hp.keys()
    assert len(hp) == len(expected)


def test_bias_follows_weight_decay_and_lr_factor(toy_cfg):
    cfg = _solver(toy_cfg, WEIGHT_DECAY_BIAS=None, BIAS_LR_FACTOR=2.0)
    model = EngineToyRVOS(cfg)
    hp = _hyperparams(get_param_groups(model, cfg))
    assert hp[id(model.mask_head.bias)] == pytest.approx((2 * LR, WD))
    assert hp[id(model.backbone[0].bias)] == pytest.approx((2 * LR * MULT, WD))


def test_embedding_names_must_exist(toy_cfg):
    model = EngineToyRVOS(toy_cfg)
    model.embedding_param_names = ("no_such_param",)
    with pytest.raises(ValueError, match="no_such_param"):
        get_param_groups(model, toy_cfg)


def test_optimizer_type_and_errors(toy_cfg):
    model = EngineToyRVOS(_solver(toy_cfg))
    adamw = build_optimizer(toy_cfg, model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert sorted({g["lr"] for g in adamw.param_groups}) == pytest.approx([LR * MULT, LR])
    toy_cfg.SOLVER.OPTIMIZER = "SGD"
    sgd = build_optimizer(toy_cfg, model)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.param_groups[0]["momentum"] == toy_cfg.SOLVER.MOMENTUM
    toy_cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER"):
        build_optimizer(toy_cfg, model)
    toy_cfg.SOLVER.OPTIMIZER = "ADAMW"
    toy_cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    toy_cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full"
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        build_optimizer(toy_cfg, model)


def _big_gradients(model):
    torch.manual_seed(0)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 10


def _grads(model):
    return [p.grad for p in model.parameters() if p.requires_grad]


@pytest.mark.parametrize("clip_type", ["full_model", "norm", "value"])
def test_gradient_clipping(toy_cfg, clip_type):
    clip = toy_cfg.SOLVER.CLIP_GRADIENTS
    clip.ENABLED, clip.CLIP_TYPE, clip.CLIP_VALUE = True, clip_type, 0.5
    model = EngineToyRVOS(toy_cfg)
    optimizer = build_optimizer(toy_cfg, model)
    _big_gradients(model)
    before = [g.clone() for g in _grads(model)]
    optimizer.step()
    after = _grads(model)
    if clip_type == "full_model":
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in after]))
        assert total.item() == pytest.approx(0.5, rel=1e-4)
        ratios = [a.norm() / b.norm() for a, b in zip(after, before)]
        assert max(ratios) == pytest.approx(min(ratios))  # one common scale factor
    elif clip_type == "norm":
        assert all(g.norm() <= 0.5 + 1e-5 for g in after)
        assert any(g.norm() > 0.5 for g in before)
    else:
        assert max(g.abs().max() for g in after) <= 0.5
        assert max(g.abs().max() for g in before) > 0.5


def test_no_clipping_leaves_gradients(toy_cfg):
    model = EngineToyRVOS(toy_cfg)
    optimizer = build_optimizer(toy_cfg, model)
    _big_gradients(model)
    before = [g.clone() for g in _grads(model)]
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(_grads(model), before))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_amp_on_cpu_falls_back_to_fp32(toy_cfg, synth_root):
    toy_cfg.SOLVER.AMP.ENABLED = True
    with pytest.warns(RuntimeWarning, match="AMP"):
        trainer = RVOSTrainer(toy_cfg)
    assert type(trainer._trainer) is SimpleTrainer
    with EventStorage(0):
        trainer.run_step()  # a float32 step on the CPU works


def test_unknown_meta_architecture_lists_registered(toy_cfg):
    toy_cfg.MODEL.META_ARCHITECTURE = "NoSuchModel"
    with pytest.raises(KeyError, match="NoSuchModel") as info:
        RVOSTrainer.build_model(toy_cfg)
    assert "EngineToyRVOS" in str(info.value)
    from detectron2.modeling import META_ARCH_REGISTRY

    for name, obj in META_ARCH_REGISTRY:
        if obj.__module__.startswith("rvos_d2."):
            assert name in str(info.value).split("other registered")[0]
    toy_cfg.MODEL.META_ARCHITECTURE = "EngineToyRVOS"
    check_meta_architecture(toy_cfg)


def test_checkpoint_roundtrip_with_numpy_and_ints(toy_cfg, tmp_path):
    model = build_model(toy_cfg)
    saver = RVOSCheckpointer(model, str(tmp_path))
    saver.save("ckpt", iteration=np.int64(7), epoch=3, loss=np.float32(0.5), hist=np.arange(3))
    loader_model = EngineToyRVOS(toy_cfg)
    extra = RVOSCheckpointer(loader_model).load(str(tmp_path / "ckpt.pth"))
    assert extra["iteration"] == 7 and extra["epoch"] == 3 and extra["loss"] == 0.5
    assert np.array_equal(extra["hist"], np.arange(3))
    for a, b in zip(model.state_dict().values(), loader_model.state_dict().values()):
        assert torch.equal(a, b)


class _Payload:
    """An arbitrary object: loading it would run code from the file."""

    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_refuses_code(toy_cfg, tmp_path):
    torch.save({"model": {}, "extra": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError, match="evil.pth"):
        load_checkpoint_file(str(tmp_path / "evil.pth"))
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"model": {}, "__author__": "x", "extra": _Payload()}, f)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        RVOSCheckpointer(EngineToyRVOS(toy_cfg)).load(str(tmp_path / "evil.pkl"))


def test_model_zoo_pickles_load(toy_cfg, tmp_path):
    model = EngineToyRVOS(toy_cfg)
    weights = {k: v.numpy() + 1 for k, v in model.state_dict().items()}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "tests"}, f)
    RVOSCheckpointer(model).load(str(tmp_path / "zoo.pkl"))
    assert torch.equal(model.mask_head.weight, torch.from_numpy(weights["mask_head.weight"]))
    caffe2 = {"blobs": {"w": np.ones(2), "w_momentum": np.ones(2)}}
    with open(tmp_path / "c2.pkl", "wb") as f:
        pickle.dump(caffe2, f, protocol=2)
    loaded = RVOSCheckpointer(model)._load_file(str(tmp_path / "c2.pkl"))
    assert list(loaded["model"]) == ["w"] and loaded["matching_heuristics"]


def _record_world(path):
    torch.save({"world": comm.get_world_size(), "rank": comm.get_rank()}, path)


def test_launch_single_process_runs_inline(tmp_path):
    launch(_record_world, 1, args=(tmp_path / "w.pth",))
    assert torch.load(tmp_path / "w.pth") == {"world": 1, "rank": 0}


def test_ddp_wrapper_is_identity_in_one_process():
    from rvos_d2.engine import create_ddp_model

    model = nn.Linear(2, 2)
    assert create_ddp_model(model) is model


def test_trainer_state_holds_optimizer_and_tolerates_old_checkpoints(toy_cfg, synth_root):
    trainer = RVOSTrainer(toy_cfg)
    with EventStorage(0):
        trainer.run_step()
    state = trainer.state_dict()
    assert state["_trainer"]["optimizer"]["state"], "optimizer state missing from the checkpoint"
    fresh = RVOSTrainer(toy_cfg)
    fresh.load_state_dict(state)
    saved = state["_trainer"]["optimizer"]["state"]
    assert fresh.optimizer.state_dict()["state"].keys() == saved.keys()
    older = RVOSTrainer(toy_cfg)
    older.load_state_dict({"iteration": 5})  # detectron2 v0.6 DefaultTrainer checkpoints
    assert older.iter == 5 and not older.optimizer.state_dict()["state"]

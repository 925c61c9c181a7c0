"""CFBI-style fg/bg matching: maps against a brute-force loop, window limits, model option."""

from pathlib import Path

import pytest
import torch

from rvos_d2.config import load_config
from rvos_d2.modeling.propagation import Propagator, STCNNetwork
from rvos_d2.modeling.propagation.matching import NO_MATCH, FgBgMatching

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def brute_force(matching, query, key, masks, radius=None):
    """Loop version: per object, query pixel and fg/bg, the smallest CFBI distance."""
    k, h, w = masks.shape[0], *query.shape[1:]
    out = torch.full((k, 2, h, w), NO_MATCH)
    for obj in range(k):
        for y in range(h):
            for x in range(w):
                for j in range(h):
                    for i in range(w):
                        if radius is not None and (abs(j - y) > radius or abs(i - x) > radius):
                            continue
                        squared = (query[:, y, x] - key[:, j, i]).pow(2).sum()
                        fg = bool(masks[obj, j, i] > 0.5)
                        bias = matching.bias[0 if fg else 1]
                        d = 1 - 2 / (1 + torch.exp(squared + bias))
                        slot = 0 if fg else 1
                        out[obj, slot, y, x] = min(out[obj, slot, y, x], d)
    return out


def test_global_and_local_maps_match_brute_force():
    torch.manual_seed(0)
    matching = FgBgMatching(local_radius=1)
    with torch.no_grad():
        matching.bias.copy_(torch.tensor([0.3, -0.2]))
    query, key = torch.randn(3, 4, 5) * 0.7, torch.randn(3, 4, 5) * 0.7
    masks = (torch.rand(2, 4, 5) > 0.6).float()
    masks[1] = 0  # an object without foreground pixels: NO_MATCH
    with torch.no_grad():
        global_maps = matching.global_maps(query, key, masks)
        local_maps = matching.local_maps(query, key, masks)
    torch.testing.assert_close(global_maps, brute_force(matching, query, key, masks))
    torch.testing.assert_close(local_maps, brute_force(matching, query, key, masks, radius=1))
    assert (global_maps[1, 0] == NO_MATCH).all()


def test_identical_pixel_has_zero_distance_and_window_is_local():
    matching = FgBgMatching(local_radius=1)
    key = torch.zeros(2, 1, 6)
    key[:, 0, 0] = torch.tensor([3.0, 3.0])  # the only foreground pixel, at x = 0
    masks = torch.zeros(1, 1, 6)
    masks[0, 0, 0] = 1
    query = key.clone()
    with torch.no_grad():
        global_maps = matching.global_maps(query, key, masks)
        local_maps = matching.local_maps(query, key, masks)
    assert global_maps[0, 0, 0, 0] == 0  # the pixel itself
    assert (local_maps[0, 0, 0, 2:] == NO_MATCH).all()  # x >= 2: fg pixel outside the window
    assert local_maps[0, 0, 0, 1] < NO_MATCH


def cfbi_model():
    cfg = load_config(CONFIGS / "Synthetic" / "STCN-tiny.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.PROPAGATION.ENCODER_WIDTH = 8
    cfg.MODEL.PROPAGATION.MATCHING = "cfbi"
    cfg.MODEL.PROPAGATION.MATCHING_LOCAL_RADIUS = 2
    torch.manual_seed(0)
    return build_model(cfg)


def test_cfbi_option_trains_and_propagates():
    model = cfbi_model().train()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 3, 48, 64), generator=g, dtype=torch.uint8)
    masks = torch.zeros(3, 2, 48, 64, dtype=torch.uint8)
    masks[:, 0, 8:24, 8:30] = 1
    masks[:, 1, 30:44, 30:60] = 1
    with EventStorage(0):
        loss = model([{"image": image, "gt_masks": masks, "video_id": "v"}])["loss_stcn_ce"]
    assert torch.isfinite(loss)
    loss.backward()
    assert model.network.matching.bias.grad.abs().sum() > 0
    result = Propagator(model.network.eval(), mem_every=1).propagate(image, 1, masks[1])
    assert result.probs.shape == (3, 2, 48, 64)
    assert (result.probs >= 0).all() and (result.probs.sum(1) <= 1 + 1e-6).all()


def test_unknown_matching_type_is_rejected():
    cfg = load_config(CONFIGS / "Synthetic" / "STCN-tiny.yaml")
    cfg.MODEL.PROPAGATION.MATCHING = "cfbi2"
    with pytest.raises(ValueError, match="MODEL.PROPAGATION.MATCHING='cfbi2'"):
        STCNNetwork(cfg)

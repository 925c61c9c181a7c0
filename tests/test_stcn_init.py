"""STCN initialisation: an untrained network's memory read already tells positions apart.

With STCN's frozen norm statistics and PyTorch's default convolution init, the key encoder's
activations shrink at every stage, all keys are nearly equal and every query reads the uniform
average of the memory, so nothing can be tracked until the keys have grown. The encoders start
as torchvision's ResNets and the key projection orthogonal, as in STCN.
"""

from pathlib import Path

import torch

from rvos_d2.config import load_config
from rvos_d2.modeling.propagation import STCNNetwork
from rvos_d2.modeling.propagation.memory import l2_affinity, topk_softmax
from rvos_d2.modeling.propagation.resnet import ResNetTrunk

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _shapes_frame(size: int = 96) -> torch.Tensor:
    """3 x size x size RGB 0-255 frame: grey background with three coloured squares."""
    frame = torch.full((3, size, size), 60.0)
    for (y, x), colour in zip(
        ((10, 12), (50, 60), (70, 8)), ((220, 40, 40), (40, 200, 60), (50, 90, 230))
    ):
        frame[:, y : y + 20, x : x + 20] = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
    return frame


def test_untrained_keys_give_a_peaked_memory_read():
    torch.manual_seed(0)
    net = STCNNetwork(load_config(CONFIGS / "Synthetic" / "STCN-tiny.yaml")).eval()
    with torch.no_grad():
        key = net.encode_key(net.normalize(_shapes_frame())[None]).key[0].flatten(1)
        weights = topk_softmax(l2_affinity(key, key), None)
    uniform = 1 / key.shape[1]
    # each position of a frame read against the same frame: far from the uniform average
    assert weights.max(0).values.mean() > 10 * uniform
    assert l2_affinity(key, key).std(0).mean() > 1.0


def test_key_projection_is_orthogonal_and_unbiased():
    torch.manual_seed(0)
    net = STCNNetwork(load_config(CONFIGS / "Synthetic" / "STCN-tiny.yaml"))
    w = net.key_proj.weight.flatten(1)
    torch.testing.assert_close(w @ w.T, torch.eye(w.shape[0]), atol=1e-5, rtol=0)
    assert not net.key_proj.bias.any()


def test_trunk_keeps_the_activation_scale():
    torch.manual_seed(0)
    trunk = ResNetTrunk(18, width=16).eval()  # norm layers at their initial identity statistics
    with torch.no_grad():
        feats = trunk(torch.randn(2, 3, 64, 64))
    for name in ("res2", "res3", "res4"):
        rms = feats[name].pow(2).mean().sqrt()
        assert 0.3 < rms < 30, f"{name}: rms {rms:.3g}"

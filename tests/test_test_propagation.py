"""TEST.PROPAGATION: the best-scored frame's mask propagated through a method's output."""

import pytest
import torch
import torch.nn.functional as F

from rvos_d2.config import load_config
from rvos_d2.modeling.propagation.matching import FgBgMatching
from rvos_d2.modeling.propagation.postprocess import MaskPropagation, build_test_propagation
from tests.fixtures.model import make_clip

from detectron2.modeling import build_model

SMALL_NETWORK = [
    "MODEL.PROPAGATION.KEY_ENCODER_DEPTH", "18",
    "MODEL.PROPAGATION.ENCODER_WIDTH", "16",
    "MODEL.PROPAGATION.KEY_DIM", "16",
    "MODEL.PROPAGATION.VALUE_DIM", "64",
    "MODEL.PROPAGATION.DECODER_DIM", "32",
]  # fmt: skip


def _cfg(*opts):
    return load_config(None, ["MODEL.DEVICE", "cpu", *SMALL_NETWORK, *opts])


def test_none_builds_nothing_and_bad_names_are_refused():
    assert build_test_propagation(_cfg()) is None
    with pytest.raises(ValueError, match="TEST.PROPAGATION.NAME"):
        build_test_propagation(_cfg("TEST.PROPAGATION.NAME", "cfbi+"))
    with pytest.raises(ValueError, match="TEST.PROPAGATION.FUSION"):
        build_test_propagation(
            _cfg("TEST.PROPAGATION.NAME", "stcn", "TEST.PROPAGATION.FUSION", "max")
        )


@pytest.mark.parametrize("matching", ["stcn", "cfbi"])
def test_anchor_is_kept_and_the_rest_is_the_propagators(matching):
    torch.manual_seed(0)
    post = build_test_propagation(_cfg("TEST.PROPAGATION.NAME", matching))
    assert isinstance(post.propagator.network.matching, FgBgMatching) == (matching == "cfbi")
    frames = torch.randint(0, 256, (5, 3, 32, 48), dtype=torch.uint8)
    masks = torch.rand(5, 64, 96)
    scores = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.2])
    output = {"pred_masks": masks, "scores": scores, "pred_boxes": torch.zeros(5, 4)}
    result = post(frames, output)
    assert result["scores"] is scores and result["pred_boxes"] is output["pred_boxes"]
    torch.testing.assert_close(result["pred_masks"][2], masks[2])  # the anchor (best score)

    anchor = F.interpolate(masks[2][None, None], (32, 48), mode="bilinear")[0]
    expected = post.propagator.propagate(list(frames), 2, anchor).probs
    expected = F.interpolate(expected, (64, 96), mode="bilinear")[:, 0]
    others = [0, 1, 3, 4]
    torch.testing.assert_close(result["pred_masks"][others], expected[others])

    mean = MaskPropagation(post.propagator, "mean")(frames, output)["pred_masks"]
    torch.testing.assert_close(mean[others], (expected[others] + masks[others]) / 2)


def test_referformer_evaluation_applies_it(referformer_cfg):
    referformer_cfg.merge_from_list([*SMALL_NETWORK, "TEST.PROPAGATION.NAME", "stcn"])
    torch.manual_seed(0)
    model = build_model(referformer_cfg).eval()
    assert model.propagation is not None
    assert not any(k.startswith("propagation") for k in model.state_dict())  # not saved
    video = {**make_clip(4, 40, 56), "height": 40, "width": 56}
    with_post = model([video])[0]
    model.propagation = None
    without = model([video])[0]
    best = int(without["scores"].argmax())
    torch.testing.assert_close(with_post["pred_masks"][best], without["pred_masks"][best])
    torch.testing.assert_close(with_post["scores"], without["scores"])
    assert not torch.allclose(with_post["pred_masks"], without["pred_masks"])

"""SOC against the official code's outputs for deterministic weights
(../shared/fixtures/soc_official): each stored intermediate is compared on its own, so that
the first divergence is visible."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rvos_d2.modeling.converters.soc import convert_soc, soc_rule_state_dict
from rvos_d2.modeling.soc import (
    MultiModalFusion,
    SpatialDecoder,
    VideoObjectCluster,
    guidance_embedding,
)

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "soc_official"
CASE = "video_swin_t"
SEED = 5000
C, HEADS, Q = 256, 8, 20

pytestmark = pytest.mark.skipif(
    not (FIXTURES / f"{CASE}.npz").is_file(),
    reason=f"official SOC fixtures not found at {FIXTURES} (../shared is not checked out)",
)


@pytest.fixture(scope="module")
def ref() -> dict[str, torch.Tensor]:
    with np.load(FIXTURES / f"{CASE}.npz", allow_pickle=False) as data:
        return {k: torch.from_numpy(data[k]) for k in data.files}


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    """The fixture's weights converted to rvos_d2 names (text model left out)."""
    rows = json.loads((FIXTURES / f"{CASE}_keys.json").read_text())["state_dict"]
    return convert_soc(soc_rule_state_dict(rows, SEED))


def _part(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """The README's tolerance: atol 1e-4 + rtol 1e-4 * max|ref| per array."""
    tol = 1e-4 + 1e-4 * expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert err <= tol, f"{name}: max abs error {err:.3g} > {tol:.3g}"


def test_rule_weights_reproduce_the_fixture_checksums():
    rows = json.loads((FIXTURES / f"{CASE}_keys.json").read_text())["state_dict"]
    meta = json.loads((FIXTURES / f"{CASE}_meta.json").read_text())
    sums = meta["weight_checksums_sum_abssum_first"]
    generated = soc_rule_state_dict(rows, SEED)
    aliases = {k for a in meta["aliases"] for k in a["keys"] if k not in a["effective"]}
    checked = 0
    for key, (total, abs_total, first) in sums.items():
        if key in aliases or key not in generated:
            continue
        value = generated[key].double()
        assert value.sum().item() == pytest.approx(total, rel=1e-6, abs=1e-6), key
        assert value.abs().sum().item() == pytest.approx(abs_total, rel=1e-6), key
        assert value.flatten()[0].item() == pytest.approx(first, rel=1e-6, abs=1e-9), key
        checked += 1
    assert checked > 400


def test_every_official_key_is_converted(weights):
    rows = json.loads((FIXTURES / f"{CASE}_keys.json").read_text())["state_dict"]
    official = {k for k, *_ in rows if not k.endswith("relative_position_index")}
    official = {k for k in official if not k.startswith("text_encoder.")}
    aliases = {k for k in official if k.startswith("transformer.decoder.bbox_embed.")}
    assert len(weights) == len(official) - len(aliases)


def test_object_cluster_matches_voc(ref, weights):
    """VOC on the last decoder layer's frame queries (eval mode), sentence feature as queries."""
    voc = VideoObjectCluster(C, HEADS, 2048, 3, 3, Q, Q).eval()
    voc.load_state_dict(_part(weights, "object_cluster."), strict=True)
    seen = {}
    voc.encoder[-1].register_forward_hook(lambda m, a, out: seen.setdefault("enc", out))
    for i, layer in enumerate(voc.decoder):
        layer.register_forward_hook(lambda m, a, out, i=i: seen.setdefault(i, out))
    t = ref["dec_hs"].shape[1]
    with torch.no_grad():
        out = voc(ref["dec_hs"][-1].reshape(1, t, Q, C), ref["voc_in_language"])
    _close(seen["enc"][0], ref["voc_enc_out"][:, 0], "voc_enc_out")
    for i in range(3):
        _close(seen[i][0], ref["voc_dec_layers"][i, :, 0], f"voc_dec_layers[{i}]")
    _close(out, ref["voc_out"][0], "voc_out")
    _close(out, ref["out_pred_logit"], "out_pred_logit")


def test_language_to_vision_fusion_matches_vlf(ref, weights):
    """L2V stream on each level's projected frame-0 map, the words keyed with their 1-D sine
    position (each visual token is fused on its own, so one frame suffices)."""
    fusion = MultiModalFusion(C, HEADS, "both").eval()
    fusion.load_state_dict(_part(weights, "vl_encoder.fusion."), strict=True)
    words = ref["text_word_proj"].transpose(0, 1)  # B x S x C
    word_mask = ref["attention_mask"] != 1
    word_pos = ref["text_pos"].transpose(1, 2)
    for level in range(4):
        src = ref[f"input_proj_l{level}_f0"]
        flat = src.flatten(2).transpose(1, 2)
        with torch.no_grad():
            fused = fusion.fuse_vision(flat, words, word_mask, word_pos)
        fused = fused.transpose(1, 2).reshape(src.shape)
        _close(fused, ref[f"fused_src_l{level}_f0"], f"fused_src_l{level}_f0")


def test_guidance_embedding_matches_text_sentence_feature(ref):
    fused = ref["fused_lang"][2].transpose(0, 1)  # B x S x C
    guidance = guidance_embedding(fused, ref["attention_mask"] != 1)
    _close(guidance, ref["out_text_sentence_feature"], "out_text_sentence_feature")


def test_spatial_decoder_matches_mask_features(ref, weights):
    """The mask-feature FPN on frame 0: memory level 2 refined with memory levels 1, 0 and the
    backbone's stride-4 map."""
    decoder = SpatialDecoder(C, [C, C, 96], 8).eval()
    decoder.load_state_dict(_part(weights, "mask_branch.decoder."), strict=True)
    memory = ref["enc_memory_f0"]
    maps = []
    for (h, w), start in zip(ref["enc_spatial_shapes"].tolist(), ref["enc_level_start_index"]):
        maps.append(memory[:, start : start + h * w].transpose(1, 2).reshape(1, C, h, w))
    with torch.no_grad():
        out = decoder(maps[2], [maps[1], maps[0], ref["backbone_l0_f0"]])
    _close(out, ref["mask_features"][:1], "mask_features (frame 0)")

"""SOC against the official code's outputs for deterministic weights
(../shared/fixtures/soc_official): each stored intermediate is compared on its own, so that
the first divergence is visible."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert

from rvos_d2.config import load_config
from rvos_d2.modeling.converters.soc import convert_soc, soc_rule_state_dict
from rvos_d2.modeling.soc import (
    MultiModalFusion,
    SpatialDecoder,
    VideoObjectCluster,
    guidance_embedding,
)
from rvos_d2.modeling.transformer import refine_boxes

from detectron2.modeling import build_model

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "soc_official"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
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


# The whole model: the official checkpoint converted by tools/convert_checkpoint.py, loaded
# strictly, run as inference runs; each stored tensor compared on its own.
TOOLS = Path(__file__).resolve().parents[1] / "tools"
SENTENCE = "a black cat jumping onto the sofa"


def _convert_tool():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", TOOLS / "convert_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fixture_cfg():
    """configs/SOC/ref_ytvos/VideoSwin-T.yaml with the fixture's substitutions: MiniLM for
    RoBERTa, no stochastic depth (eval), no pretrained weights."""
    cfg = load_config(CONFIGS / "SOC" / "ref_ytvos" / "VideoSwin-T.yaml")
    cfg.MODEL.TEXT_ENCODER.NAME = "minilm"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def run(ref, tmp_path_factory):
    """The rvos_d2 SOC on the fixture video, the official checkpoint converted by the tool and
    loaded strictly; returns the outputs, the post-processed result and hooked intermediates."""
    torch.manual_seed(0)
    model = build_model(_fixture_cfg()).eval()
    rows = json.loads((FIXTURES / f"{CASE}_keys.json").read_text())["state_dict"]
    official = soc_rule_state_dict(rows, SEED)
    language_model = model.text_encoder.language_model.state_dict()
    official.update({f"text_encoder.{k}": v for k, v in language_model.items()})
    tmp = tmp_path_factory.mktemp("soc_ckpt")
    torch.save({"model_state_dict": official}, tmp / "official.pth")
    _convert_tool().main([str(tmp / "official.pth"), str(tmp / "soc.pth")])
    converted = torch.load(tmp / "soc.pth", weights_only=True)["model"]
    model.load_state_dict(converted, strict=True)

    seen: dict = {}

    def keep(name):
        return lambda module, args, out: seen.__setitem__(name, out)

    model.text_encoder.language_model.register_forward_hook(keep("language_model"))
    model.backbone.register_forward_hook(keep("backbone"))
    model.vl_encoder.input_proj.register_forward_hook(keep("input_proj"))
    model.vl_encoder.encoder.register_forward_pre_hook(
        lambda module, args: seen.__setitem__("srcs", args[0])
    )
    model.vl_encoder.encoder.register_forward_hook(keep("encoder"))
    model.vl_encoder.fusion.vision_to_language.register_forward_hook(keep("fused_lang"))
    model.query_decoder.register_forward_hook(keep("decoder"))
    model.object_cluster.register_forward_hook(keep("voc"))
    model.mask_branch.decoder.register_forward_hook(keep("mask_features"))
    model.mask_branch.head.controller.register_forward_hook(keep("controller"))

    frames = ref["frames"].permute(0, 3, 1, 2).contiguous()
    t, _, h, w = frames.shape
    video = {"image": frames, "expression": SENTENCE, "height": h, "width": w}
    with torch.no_grad():
        text = model.text_encoder([SENTENCE], model.device)
        raw = model.predict(model.preprocess([frames]), text, t, all_layers=False)
        seen["text"] = text
        levels = []
        for level in range(3):  # the official eval forward computes these, returns level 0
            model.test_level = level
            levels.append(model.predict(model.preprocess([frames]), text, t, all_layers=False))
        model.test_level = 0
        result = model([video])[0]
    return {"raw": raw, "levels": levels, "result": result, "seen": seen}


def test_text_features(ref, run):
    lm = run["seen"]["language_model"]
    _close(lm.last_hidden_state, ref["text_last_hidden_state"], "text_last_hidden_state")
    _close(lm.pooler_output, ref["text_pooler_output"], "text_pooler_output")
    text = run["seen"]["text"]
    _close(text.word_feats, ref["text_word_proj"].transpose(0, 1), "text_word_proj")
    _close(text.sentence_feat, ref["text_sentence_proj"], "text_sentence_proj")


@pytest.mark.parametrize("level", range(4))
def test_backbone(ref, run, level):
    out = run["seen"]["backbone"][f"res{level + 2}"][:1]
    _close(out, ref[f"backbone_l{level}_f0"], f"backbone_l{level}_f0")


@pytest.mark.parametrize("level", range(4))
def test_projection_and_fusion(ref, run, level):
    _close(run["seen"]["input_proj"][level][:1], ref[f"input_proj_l{level}_f0"], "input_proj")
    _close(run["seen"]["srcs"][level][:1], ref[f"fused_src_l{level}_f0"], "fused_src")


def test_vision_to_language(ref, run):
    _close(run["seen"]["fused_lang"], ref["fused_lang"][2].transpose(0, 1), "fused_lang[2]")


def test_encoder(ref, run):
    enc = run["seen"]["encoder"]
    assert enc["spatial_shapes"].tolist() == ref["enc_spatial_shapes"].tolist()
    assert enc["level_start_index"].tolist() == ref["enc_level_start_index"].tolist()
    _close(enc["memory"][:1], ref["enc_memory_f0"], "enc_memory_f0")


def test_decoder(ref, run):
    dec = run["seen"]["decoder"]
    _close(dec["hs"], ref["dec_hs"], "dec_hs")
    _close(dec["references"][0], ref["dec_init_reference"], "dec_init_reference")
    _close(dec["boxes"], ref["dec_inter_references"], "dec_inter_references")


def test_object_cluster(ref, run):
    _close(run["seen"]["voc"], ref["voc_out"][0], "voc_out")


def test_mask_features(ref, run):
    _close(run["seen"]["mask_features"], ref["mask_features"], "mask_features")


def test_returned_outputs(ref, run):
    """Level 0 with the last layer's video queries, as the official eval forward returns."""
    raw = run["raw"]
    _close(raw["pred_logits"][0], ref["out_pred_cls"][:, 0, :, 0], "out_pred_cls")
    _close(raw["pred_boxes"][0], ref["out_pred_boxes"][:, 0], "out_pred_boxes")
    _close(raw["pred_masks"][0], ref["out_pred_masks"][:, 0], "out_pred_masks")
    _close(raw["video_queries"], ref["out_pred_logit"], "out_pred_logit")
    _close(raw["text_guidance"], ref["out_text_sentence_feature"], "out_text_sentence_feature")
    _close(run["seen"]["controller"], ref["head_controller"][0, :, 0], "head_controller[0]")


def test_post_processed_probabilities(ref, run):
    result = run["result"]
    scores = ref["out_pred_cls"][:, 0, :, 0].sigmoid().mean(0)
    assert int(scores.argmax()) == int(ref["post_max_inds"][0])
    _close(result["scores"], ref["post_pred_logits_selected"][:, 0].sigmoid(), "scores")
    _close(result["pred_masks"], ref["post_probs"], "post_probs")
    binary = (result["pred_masks"] > 0.5).to(torch.uint8)
    assert torch.equal(binary, ref["post_pred_masks"])


@pytest.mark.parametrize("level", range(3))
def test_heads_of_every_level(ref, run, level):
    """Class logits and boxes of each level on hs_voc[l] = dec_hs[l] + voc_out; level 2's masks."""
    out = run["levels"][level]
    _close(out["pred_logits"][0], ref["head_cls"][level, :, :, 0], f"head_cls[{level}]")
    reference = ref["dec_init_reference"] if level == 0 else ref["dec_inter_references"][level - 1]
    boxes = refine_boxes(ref["head_bbox_delta"][level], reference)
    _close(out["pred_boxes"][0], boxes, f"boxes from head_bbox_delta[{level}]")
    if level == 2:
        _close(out["pred_masks"][0], ref["head_masks_lvl2"][:, 0], "head_masks_lvl2")


def test_selected_boxes(ref, run):
    h, w = ref["frames"].shape[1:3]
    scale = torch.tensor([w, h, w, h], dtype=torch.float)
    expected = box_convert(ref["post_pred_boxes_selected"], "cxcywh", "xyxy") * scale
    _close(run["result"]["pred_boxes"], expected, "post_pred_boxes_selected (xyxy pixels)")

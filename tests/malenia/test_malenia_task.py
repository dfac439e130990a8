"""The malenia task: its loss parts, learning on hand-made lesions, attribute queries picking the right
lesion, the patch sampler, and training through `medvl3d finetune` on SynthCT-VL (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from malenia_helpers import CYST, TUMOUR, lesion_batch

from medvl3d.infer.lesions import LesionQuery, window_maps
from medvl3d.models import create_model
from medvl3d.train.tasks import build_task
from medvl3d.train.tasks.malenia import LesionPatchSampler


def test_loss_parts_and_errors(batch):
    torch.manual_seed(0)
    task = build_task("malenia", create_model("test_malenia"), patch_size=[32, 32, 32])
    out = task(batch)
    assert set(out) == {"loss", "mask", "align", "text", "organ"}
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    no_cmki = build_task("malenia", create_model("test_malenia", cmki=False, n_organs=0))
    assert set(no_cmki(batch)) == {"loss", "mask", "align"}
    with pytest.raises(ValueError, match=r"needs labels \[B, 2, X, Y, Z\]"):
        task({**batch, "label": batch["label"][:, :1]})
    with pytest.raises(ValueError, match="needs batch keys image, label, lesions"):
        task({"image": batch["image"], "label": batch["label"]})
    with pytest.raises(TypeError, match="unknown parameter"):
        build_task("malenia", create_model("test_malenia"), patch=[32, 32, 32])
    with pytest.raises(ValueError, match="trains models of family malenia, got a 'seg' model"):
        build_task("malenia", create_model("test_resenc_seg"))


def _train(task: torch.nn.Module, steps: int) -> list[float]:
    opt = torch.optim.AdamW(task.parameters(), lr=4e-3)
    losses = []
    for step in range(steps):
        out = task(lesion_batch(step % 4))
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out["loss"].detach()))
    return losses


def test_learns_lesion_masks():
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("test_malenia")
    task = build_task("malenia", model, patch_size=[32, 32, 32])
    losses = _train(task, 20)
    assert np.mean(losses[-4:]) < 0.6 * np.mean(losses[:4])
    test = lesion_batch(7)
    model.eval()
    lesion = test["label"][0, 0] > 0
    prob = window_maps(model, test["image"][:1])[0, 0]  # no query: every lesion token
    assert float(prob[lesion].mean()) > float(prob[~lesion].mean()) + 0.3


@pytest.mark.slow
def test_queries_pick_lesions_by_attribute():
    """After 150 steps the tokens have split the two lesions and carry their attributes: a query for one
    attribute value of either lesion lights up that lesion and not the other (about 3 CPU minutes)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("test_malenia")
    _train(build_task("malenia", model, patch_size=[32, 32, 32]), 150)
    test = lesion_batch(7)
    model.eval()
    ball = test["label"][0, 0] == 1
    box = test["label"][0, 0] == 2
    for values, inside, outside in (({"density": "hyperdense"}, box, ball), ({"organ": "liver"}, ball, box)):
        prob = window_maps(model, test["image"][:1], LesionQuery(values))[0, 0]
        assert float(prob[inside].mean()) > float(prob[outside].mean()) + 0.2, values


def test_patch_sampler_crops_around_lesions_and_pads_organs(tmp_path):
    import nibabel as nib

    shape = (40, 30, 20)
    image = torch.rand(1, *shape)
    label = torch.zeros(1, *shape, dtype=torch.long)
    label[0, 30:34, 3:6, 2:5] = 1
    organs = np.zeros(shape, np.uint8)
    organs[25:40, :10, :10] = 1  # liver
    nib.save(nib.Nifti1Image(organs, np.eye(4)), str(tmp_path / "c_organs.nii.gz"))
    sample = {
        "image": image,
        "label": label,
        "lesions": {1: dict(CYST)},
        "meta": {"organs": "c_organs.nii.gz", "affine": np.eye(4).tolist(), "shape": list(shape)},
    }
    sampler = LesionPatchSampler((16, 16, 16), fg_fraction=1.0, root=str(tmp_path), intensity=0.0)
    out = sampler(sample, seed=3)
    assert out["image"].shape == (1, 16, 16, 16) and out["label"].shape == (2, 16, 16, 16)
    assert int((out["label"][0] == 1).sum()) > 0  # the lesion is in the patch
    assert int((out["label"][1] == -1).sum()) > 0  # padding beyond the volume: organ unknown
    assert set(out["label"][1].unique().tolist()) <= {-1, 0, 1}
    assert torch.equal(sampler(sample, seed=3)["image"], out["image"])  # the seed fixes the draw
    organ_centred = LesionPatchSampler((8, 8, 8), 0.0, str(tmp_path), 0.0)(sample, seed=5)
    assert int((organ_centred["label"][1] == 1).sum()) > 0
    with pytest.raises(FileNotFoundError, match="missing_organs.nii.gz"):
        sampler({**sample, "meta": {**sample["meta"], "organs": "missing_organs.nii.gz"}}, seed=0)


def test_patch_sampler_places_lesions_anywhere_in_the_patch():
    """Lesion-centred patches put the lesion at varying places (never within 2 voxels of the border): a
    lesion always at the centre teaches the model to find one at the centre of every sliding window."""
    shape = (60, 60, 60)
    label = torch.zeros(1, *shape, dtype=torch.long)
    label[0, 30, 30, 30] = 1  # one lesion voxel
    sample = {"image": torch.rand(1, *shape), "label": label, "lesions": {1: dict(CYST)}, "meta": {}}
    sampler = LesionPatchSampler((16, 16, 16), fg_fraction=1.0, root=None, intensity=0.0)
    places = []
    for seed in range(60):
        where = (sampler(sample, seed)["label"][0] == 1).nonzero()
        assert len(where) == 1  # always inside
        places.append(where[0].tolist())
    places = np.array(places)
    assert places.min() >= 2 and places.max() <= 13
    assert len({tuple(p) for p in places}) > 30 and places.std(0).min() > 2.5


def _erase(batch: dict, lesion: int) -> dict:
    """The batch with one lesion (1 the cyst, 2 the tumour) erased: organ intensity, background label."""
    where = batch["label"][:, 0] == lesion
    image, label = batch["image"].clone(), batch["label"].clone()
    image[:, 0][where] = 0.5
    label[:, 0][where] = 0
    return {**batch, "image": image, "label": label}


def test_text_branch_is_taught_absent_types_as_empty_masks():
    """CMKI's text branch also sees descriptions of types absent from a patch, with an empty target:
    trained on positives only, it answered every description with the lesion at hand."""
    from medvl3d.data.lesion_knowledge import lesion_table

    torch.manual_seed(0)
    model = create_model("test_malenia")
    task = build_task("malenia", model, patch_size=[32, 32, 32])
    task.table = lesion_table([CYST, TUMOUR])
    full = lesion_batch(0)
    cyst_only = _erase(full, 2)
    absent = task._absent_types(cyst_only["label"][0, 0], full["lesions"][0])
    assert [a["type"] for a in absent] == [TUMOUR["type"]] and absent[0]["density"] == "hyperdense"
    assert task._absent_types(full["label"][0, 0], full["lesions"][0]) == []  # both present
    seen = []
    real = model.text_masks
    model.text_masks = lambda out, weights: seen.append(weights) or real(out, weights)
    task(cyst_only)
    # Per image: the cyst (kept attributes vary) then the tumour's whole description.
    assert seen[0].shape[1] == 2 and torch.equal(seen[0][0, 1], task._description([TUMOUR])[0])
    no_negatives = build_task("malenia", model, patch_size=[32, 32, 32], text_negatives=0)
    no_negatives.table = task.table
    no_negatives(cyst_only)
    assert seen[1].shape[1] == 1


def test_name_only_baseline_trains_on_type_names():
    torch.manual_seed(0)
    model = create_model("test_malenia", query="name")
    task = build_task("malenia", model, patch_size=[32, 32, 32])
    task._read_types(type("D", (), {"records": []})(), "test")  # no records: only "no lesion"
    from medvl3d.models.malenia import Vocabulary

    model.set_vocabulary(Vocabulary.names([CYST["type"], TUMOUR["type"]]))
    out = task(lesion_batch(0))
    assert torch.isfinite(out["loss"])


@pytest.mark.slow
def test_finetune_on_synthct(tmp_path):
    """`medvl3d finetune` trains Malenia on a SynthCT-VL folder and validates zero-shot per type."""
    import json

    from medvl3d.data.synth import generate
    from medvl3d.train.finetune import finetune

    data = tmp_path / "data"
    generate(data, n_train=6, n_test=2, size=(48, 72, 72), spacing=(6.0, 5.0, 5.0), workers=1, progress=False)
    run = finetune(
        "src/medvl3d/configs/malenia_synth_tiny.yaml",
        from_scratch=True,
        data=data,
        out=tmp_path / "run",
        overrides=["train.steps=6", "train.eval_every=6", "data.preprocess.spacing=[5.0,5.0,5.0]"],
    )
    from medvl3d.models.checkpoint import read_info

    info = read_info(run)
    assert info["model"]["family"] == "malenia"
    assert info["lesion_types"]  # the types of the training data, read from its manifest
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("val_dice" in line for line in lines)

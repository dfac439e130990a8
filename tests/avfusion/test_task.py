"""The avfusion task: labels remapped by name, Dice + CE learning, `medvl3d finetune`, `medvl3d segment`."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medvl3d.cli import main
from medvl3d.data.datasets import MSDDataset
from medvl3d.models import create_model
from medvl3d.models.checkpoint import read_weights, resolve_checkpoint
from medvl3d.train.tasks import build_task
from medvl3d.train.tasks.avfusion import ClassRemapSampler, remap_labels
from medvl3d.train.tasks.segmentation import SegAugmentConfig

NAMES = {"0": "background", "1": "pulmonary_artery", "2": "pulmonary_vein", "3": "airway"}


def test_remap_labels_by_name():
    label = torch.tensor([[0, 1, 2, 3, 2]])
    out = remap_labels(label, NAMES, ("Pulmonary vein", "pulmonary artery"), "case.nii.gz")
    assert out.tolist() == [[0, 2, 1, 0, 1]]  # the model's class order; the airway becomes background
    with pytest.raises(ValueError, match=r"case.nii.gz: the label map names no \['aorta'\]"):
        remap_labels(label, NAMES, ("aorta",), "case.nii.gz")


def test_patches_hold_the_model_classes_only(lung_data):
    sample = MSDDataset(lung_data / "dataset_vessels.json", split="train")[0]
    assert set(torch.unique(sample["label"]).tolist()) == {0, 1, 2, 3}
    sampler = ClassRemapSampler(("pulmonary_artery", "pulmonary_vein"), (16, 16, 16), 0.8, SegAugmentConfig())
    patch = sampler(sample, seed=3)
    assert patch["image"].shape == patch["label"].shape == (1, 16, 16, 16)
    assert set(torch.unique(patch["label"]).tolist()) <= {0, 1, 2}
    assert torch.equal(sampler(sample, seed=3)["label"], patch["label"])  # a seed draws the same patch


def _batch(lung_data: Path, n: int = 2) -> dict:
    from medvl3d.data.preprocess import PreprocessSpec, preprocess_sample

    spec = PreprocessSpec(spacing=None, intensity={"ct_window": [-1000.0, 600.0]})
    data = MSDDataset(lung_data / "dataset_vessels.json", split="train")
    samples = [preprocess_sample(data[i], spec) for i in range(n)]
    classes = ("pulmonary_artery", "pulmonary_vein")
    labels = [remap_labels(s["label"], s["meta"]["label_names"], classes, "") for s in samples]
    return {"image": torch.stack([s["image"] for s in samples]).float(), "label": torch.stack(labels)}


def test_dice_ce_learns_a_batch(lung_data):
    torch.manual_seed(0)
    task = build_task("avfusion", create_model("test_avfusion"), patch_size=(32, 32, 32))
    assert task.model.text_ready  # the task embedded the class texts
    batch = _batch(lung_data)
    opt = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        out = task(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert set(out) >= {"loss", "dice_ce", "adapter_gate"}
    assert losses[-1] < 0.7 * losses[0], losses


def test_task_refuses_other_families():
    with pytest.raises(ValueError, match="avfusion"):
        build_task("avfusion", create_model("test_resenc_seg"))


@pytest.fixture(scope="module")
def av_run(lung_data, vl_checkpoint, tmp_path_factory) -> Path:
    """`medvl3d finetune` of `test_avfusion` from the VL checkpoint: 4 steps, validated at the end."""
    import yaml

    from medvl3d.train.finetune import finetune

    out = tmp_path_factory.mktemp("av_run") / "run"
    cfg = {
        "data": {
            "root": str(lung_data / "dataset_vessels.json"),
            "format": "msd",
            "preprocess": {"spacing": None, "intensity": {"ct_window": [-1000.0, 600.0]}},
            "batch_size": 2,
        },
        "model": {"name": "test_avfusion"},
        "task": {"name": "avfusion", "params": {"patch_size": [32, 32, 32], "overlap": 0.0}},
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "train": {"steps": 4, "log_every": 2, "ckpt_every": 0, "eval_every": 4, "progress": False},
    }
    path = out.parent / "avfusion.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return finetune(path, checkpoint=vl_checkpoint, out=out)


def test_finetune_trains_adapters_and_keeps_the_encoder(av_run, vl_checkpoint):
    folder = resolve_checkpoint(av_run)
    info = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    assert info["model"]["family"] == "avfusion" and info["task"] == "avfusion"
    assert info["label_names"] == {"0": "background", "1": "pulmonary_artery", "2": "pulmonary_vein"}
    assert 0 < info["parameters"]["trainable"] < info["parameters"]["total"]
    weights, vl = read_weights(folder), read_weights(vl_checkpoint)
    for key, value in vl.items():
        if key.startswith("visual."):  # the frozen encoder is the pretrained tower, bit for bit
            assert torch.equal(weights["encoder." + key[len("visual.") :]], value), key
    assert weights["text_embeddings"].norm(dim=1).allclose(torch.ones(2))  # stored, unit vectors
    records = [json.loads(line) for line in (av_run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val_dice" in r]
    assert val and {"val_dice", "val_cldice"} <= set(val[-1])
    # A/V confusion is undefined (not logged) until some predicted vessel voxel meets a true one, which
    # 4 steps need not reach; tests/avfusion/test_vessel_metrics.py checks its values.
    assert all(0.0 <= val[-1].get(k, 0.0) <= 1.0 for k in ("val_dice", "val_cldice", "val_av_confusion"))


def test_segment_writes_the_targets_in_the_input_geometry(av_run, lung_data, tmp_path, capsys):
    volume = sorted((lung_data / "valid").rglob("valid_1_a_1.nii.gz"))[0]
    out = tmp_path / "av.nii.gz"
    targets = "pulmonary artery, pulmonary vein"
    assert (
        main(["segment", str(volume), "--checkpoint", str(av_run), "--targets", targets, "-o", str(out)]) == 0
    )
    src, mask = nib.load(volume), nib.load(out)
    assert mask.shape == src.shape and np.allclose(mask.affine, src.affine)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}
    summary = json.loads(out.with_name("av.json").read_text(encoding="utf-8"))
    assert set(summary["labels"]) == {"pulmonary_artery", "pulmonary_vein"}

    veins = tmp_path / "veins.nii.gz"
    assert (
        main(
            [
                "segment",
                str(volume),
                "--checkpoint",
                str(av_run),
                "--targets",
                "pulmonary_vein",
                "-o",
                str(veins),
            ]
        )
        == 0
    )
    assert set(np.unique(np.asarray(nib.load(veins).dataobj))) <= {0, 2}

    capsys.readouterr()
    assert (
        main(["segment", str(volume), "--checkpoint", str(av_run), "--targets", "aorta", "-o", str(veins)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown segmentation targets ['aorta']" in err and "pulmonary_artery" in err


def test_segment_on_the_real_ct_angiogram_overlays_the_input(av_run, real_dir, tmp_path):
    """The real CTPA crop is stored LPS at 1.5 mm: the mask must come back on that grid, voxel for voxel."""
    volume = real_dir / "totalseg" / "pulmonary" / "ct_cropped.nii.gz"
    reference = real_dir / "totalseg" / "pulmonary" / "pulmonary_artery.nii.gz"
    if not volume.is_file():
        pytest.skip(f"{volume} not found")
    out = tmp_path / "real_av.nii.gz"
    targets = "pulmonary artery, pulmonary vein"
    assert (
        main(["segment", str(volume), "--checkpoint", str(av_run), "--targets", targets, "-o", str(out)]) == 0
    )
    src, mask, ref = nib.load(volume), nib.load(out), nib.load(reference)
    assert mask.shape == src.shape == ref.shape
    assert np.allclose(mask.affine, src.affine) and nib.aff2axcodes(mask.affine) == ("L", "P", "S")
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1, 2}


def test_the_shipped_config_loads_and_matches_its_packaged_copy():
    from medvl3d.config import load_config
    from medvl3d.models import model_config

    repo = Path(__file__).resolve().parents[2]
    path = repo / "configs" / "avfusion_synth_lungs.yaml"
    cfg = load_config(path)
    assert cfg.task.name == "avfusion" and model_config(cfg.model.name).conditioning == "text"
    assert max(cfg.data.preprocess.spacing) <= 1.5  # vessels are 1-3 voxels wide at 2.75 mm
    packaged = repo / "src" / "medvl3d" / "configs" / "avfusion_synth_lungs.yaml"
    assert packaged.read_text() == path.read_text()

"""Segmentation training: learning, checkpoint contents, exact resume, label budgets, transfer, bad labels."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from medvl3d.cli import main
from medvl3d.config import config_from_dict
from medvl3d.eval.segmentation import evaluate_segmentation
from medvl3d.models import create_model
from medvl3d.models.checkpoint import latest_checkpoint, read_weights, save_checkpoint
from medvl3d.train import train
from medvl3d.train.data import build_dataset, label_subset
from medvl3d.train.finetune import finetune


def test_training_learns_both_classes_far_above_an_untrained_model(trained_seg, blob_task, tmp_path):
    report = evaluate_segmentation(trained_seg, blob_task, progress=False)
    dice = {name: report.summary[name]["dice"]["mean"] for name in ("ball", "box")}
    assert min(dice.values()) > 0.7, dice
    assert report.summary["ball"]["hd95"]["mean"] < 6.0  # mm: within ~2 voxels
    # The same network untrained (its checkpoint saved at step 0 by hand) is nowhere near.
    info = json.loads((latest_checkpoint(trained_seg / "checkpoints") / "config.json").read_text())
    fresh = create_model("test_resenc_seg", n_classes=3)
    untrained = save_checkpoint(tmp_path / "fresh", 0, fresh, {k: v for k, v in info.items() if k != "step"})
    base = evaluate_segmentation(untrained, blob_task, progress=False)
    assert max(base.summary[n]["dice"]["mean"] or 0.0 for n in ("ball", "box")) < 0.5
    assert set(report.per_case) == {"blob_008", "blob_009", "blob_010"}  # the labelled valid split


def test_checkpoint_records_family_classes_and_inference_window(trained_seg):
    info = json.loads((latest_checkpoint(trained_seg / "checkpoints") / "config.json").read_text())
    assert info["model"]["family"] == "seg" and info["model"]["config"]["n_classes"] == 3
    assert info["label_names"] == {"0": "background", "1": "ball", "2": "box"}
    assert info["inference"]["patch_size"] == [16, 16, 16] and info["inference"]["mode"] == "gaussian"
    assert info["task"] == "segmentation" and "prompts" not in info


def test_validation_logs_dice_per_class(blob_task, tmp_path, make_config):
    cfg = make_config(blob_task, tmp_path / "run", steps=4, eval_every=2)
    run = train(config_from_dict(cfg))
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in recs if "val_dice" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert {"val_dice_ball", "val_dice_box"} <= set(evals[0]) and 0 <= evals[-1]["val_dice"] <= 1


def test_a_killed_run_resumes_with_the_same_patches(blob_task, tmp_path, make_config):
    straight = train(config_from_dict(make_config(blob_task, tmp_path / "a", steps=6, ckpt_every=3)))

    def crash(step, metrics):
        if step == 4:
            raise RuntimeError("killed")

    cfg = config_from_dict(make_config(blob_task, tmp_path / "b", steps=6, ckpt_every=3))
    with pytest.raises(RuntimeError, match="killed"):
        train(cfg, callbacks=[crash])
    resumed = train(cfg)
    a = read_weights(latest_checkpoint(straight / "checkpoints"))
    b = read_weights(latest_checkpoint(resumed / "checkpoints"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_label_fraction_keeps_a_nested_deterministic_subset(blob_task):
    one, ten, full = (set(label_subset(100, f, 3)) for f in (0.01, 0.1, 1.0))
    assert one <= ten <= full and (len(one), len(ten), len(full)) == (1, 10, 100)
    assert len(label_subset(8, 0.01, 0)) == 1  # never an empty training set
    assert label_subset(50, 0.2, 1) != label_subset(50, 0.2, 2)
    cfg = config_from_dict(
        {"data": {"root": str(blob_task), "format": "msd", "preprocess": {"spacing": None}}}
    )
    assert len(build_dataset(cfg.data, "train", with_text=False, fraction=0.25)) == 2


def test_finetune_starts_from_a_pretrained_encoder(blob_task, tmp_path, make_config):
    import yaml

    torch.manual_seed(0)
    vl = create_model("test_resenc_clip")
    info = {
        "model": {"name": "test_resenc_clip", "family": "vl", "config": vl.config.to_dict()},
        "preprocess": {"spacing": [1.0, 1.0, 1.0]},
    }
    pretrained = save_checkpoint(tmp_path / "vl", 5, vl, info)
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(make_config(blob_task, tmp_path / "unused", steps=2)))
    with pytest.warns(UserWarning, match=r"pretrained with spacing \[1.0, 1.0, 1.0\], fine-tuning with None"):
        run = finetune(config, checkpoint=pretrained, out=tmp_path / "ft", label_fraction=0.5)
    saved = json.loads((latest_checkpoint(run / "checkpoints") / "config.json").read_text())
    assert saved["model"]["encoder_from"] == str(pretrained)
    assert saved["model"]["config"]["encoder"] == vl.config.to_dict()["vision"]
    assert saved["train"]["data"]["label_fraction"] == 0.5
    with pytest.raises(ValueError, match="exclude each other"):
        finetune(config, checkpoint=pretrained, from_scratch=True)


def _bad_task(make_task, root, edit):
    make_task(root, n_train=2, n_test=0)
    path = root / "labelsTr" / "blob_001.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(edit(np.asarray(img.dataobj)), img.affine), str(path))
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda lab: np.where(lab == 2, 7, lab).astype(np.uint8),
            r"label values 0\.\.7 fall outside the model's 3",
        ),
        (lambda lab: np.zeros_like(lab), r"the label map is empty \(background only\)"),
        (lambda lab: lab[:, :, :10], r"label shape \(24, 24, 10\) differs from image shape"),
    ],
    ids=["outside-n-classes", "empty", "geometry"],
)
def test_bad_label_maps_are_one_line_errors_naming_the_file(
    tmp_path, make_task, make_config, capsys, edit, message
):
    import yaml

    bad = _bad_task(make_task, tmp_path / "Task", edit)
    config = tmp_path / "seg.yaml"
    config.write_text(yaml.safe_dump(make_config(tmp_path / "Task", tmp_path / "run", steps=3)))
    # Two loader workers: the error is raised in a worker and must still reach the user as one line.
    assert main(["finetune", str(config), "--set", "data.num_workers=1", "--set", "data.batch_size=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(bad) in err or bad.name in err, err
    assert re.search(message, err), err


def test_a_volume_smaller_than_the_patch_is_refused(tmp_path, make_task, make_config, capsys):
    import yaml

    make_task(tmp_path / "Task", n_train=2, n_test=0)
    cfg = make_config(tmp_path / "Task", tmp_path / "run", steps=2)
    cfg["task"]["params"]["patch_size"] = [32, 32, 32]
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(tmp_path / "seg.yaml")]) == 2
    err = capsys.readouterr().err
    assert "volume 24x24x20 is smaller than the training patch 32x32x32" in err and "blob_00" in err
    # Thin slabs are normal in some data sets: padding them is a deliberate choice.
    cfg["task"]["params"]["pad_to_patch"] = True
    cfg["train"]["steps"] = 1
    assert train(config_from_dict(cfg)).is_dir()


def test_one_labelled_case_still_fills_a_batch_of_patches(blob_task, tmp_path, make_config):
    from medvl3d.train.data import BatchOrder

    order = BatchOrder(2, 4, seed=0, repeat=True)
    assert order.batches_per_epoch == 1 and sorted(order.indices(0, 0)) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        BatchOrder(2, 4)  # contrastive tasks: a case must not be its own negative
    cfg = make_config(blob_task, tmp_path / "run", steps=2)
    cfg["data"]["label_fraction"] = 0.1  # 1 of 8 cases, batch 2
    run = train(config_from_dict(cfg))
    assert json.loads((latest_checkpoint(run / "checkpoints") / "config.json").read_text())["step"] == 2


def _object_offsets(centre_jitter: float, shape=(64, 64, 64), at=(30, 33, 29), draws: int = 40) -> np.ndarray:
    """Where a one-voxel object lands in foreground patches, relative to the patch centre, per axis."""
    from medvl3d.train.tasks.segmentation import PatchSampler, SegAugmentConfig

    label = torch.zeros(1, *shape, dtype=torch.long)
    label[(0, *at)] = 1
    sample = {"image": torch.rand(1, *shape), "label": label, "meta": {"case_id": "dot"}}
    still = SegAugmentConfig(affine_prob=0.0, intensity_prob=0.0)
    sampler = PatchSampler(2, (16, 16, 16), 1.0, still, centre_jitter=centre_jitter)
    offsets = []
    for seed in range(draws):
        patch = sampler(sample, seed=seed)["label"][0]
        assert patch.shape == (16, 16, 16) and int(patch.sum()) == 1, (
            f"seed {seed}: the object is not in the patch"
        )
        offsets.append(np.argwhere(patch.numpy() == 1)[0] - 8)
    return np.asarray(offsets)


def test_foreground_patches_do_not_always_centre_the_object():
    """Centred on a small object every time, a network learns "the object sits at the centre" and finds
    none in whole volumes: the drawn voxel must land anywhere in the patch's central part."""
    centred = _object_offsets(0.0)
    assert np.abs(centred).max() <= 1  # 0: the old behaviour, kept as an option
    spread = _object_offsets(0.375)
    assert np.abs(spread).max() <= 6  # inside the patch, off its outer 1/8
    assert (np.abs(spread) >= 3).mean() > 0.4  # mostly off-centre, on every axis
    assert all(len(np.unique(spread[:, a])) >= 6 for a in range(3))
    assert np.array_equal(spread, _object_offsets(0.375))  # the seed fixes the draw (exact resume)
    # a volume hardly larger than the patch, the object at its edge: every patch still holds it
    _object_offsets(0.375, shape=(18, 20, 17), at=(0, 19, 8))


def test_class_crop_draws_the_voxel_monai_lists_for_the_same_random_numbers():
    """`ClassCropd` lists only the drawn class's voxels; the voxel must be the one MONAI's full index lists
    give for the same draws (classes absent from the map skipped)."""
    from monai.transforms.utils import map_classes_to_indices

    from medvl3d.train.tasks.segmentation import ClassCropd

    gen = torch.Generator().manual_seed(0)
    label = torch.zeros(1, 20, 18, 22, dtype=torch.long)
    label[0, 3:6, 4:9, 2:5] = 1
    label[0, 12:15, 10:12, 15:20] = 3  # class 2 absent
    label[0, 9, 9, 9] = 4
    image = torch.rand(1, 20, 18, 22, generator=gen)
    ratios = [0.2, 0.2, 0.2, 0.2, 0.2]
    crop = ClassCropd((8, 8, 8), ratios, 0.0)  # no jitter: the patch is centred on the drawn voxel
    indices = map_classes_to_indices(label, len(ratios))
    weights = np.asarray([r if len(ix) else 0.0 for r, ix in zip(ratios, indices)])
    drawn = set()
    for seed in range(30):
        crop.set_random_state(seed)
        got = crop({"image": image, "label": label})
        ref = np.random.RandomState(seed)
        cls = int(ref.choice(5, p=weights / weights.sum()))
        voxel = np.unravel_index(int(indices[cls][int(ref.randint(len(indices[cls])))]), (20, 18, 22))
        starts = [min(max(v - 4, 0), n - 8) for v, n in zip(voxel, (20, 18, 22))]
        want = label[(slice(None), *(slice(s, s + 8) for (s,) in zip(starts)))]
        assert torch.equal(got["label"], want), f"seed {seed}"
        drawn.add(cls)
    assert drawn == {0, 1, 3, 4}  # every present class drawn, the absent one never


def test_centre_jitter_outside_its_range_is_a_one_line_error():
    from medvl3d.train.tasks.segmentation import SegmentationTask

    model = create_model("test_resenc_seg", n_classes=2)
    with pytest.raises(ValueError, match=r"segmentation task centre_jitter must be in \[0, 0.5\), got 0.5"):
        SegmentationTask(model, patch_size=(16, 16, 16), centre_jitter=0.5)


def test_present_class_dice_trains_and_a_bad_choice_is_a_one_line_error(blob_task, tmp_path, make_config):
    from medvl3d.losses.dice import PresentClassDiceCELoss
    from medvl3d.train.tasks.segmentation import SegmentationTask

    model = create_model("test_resenc_seg", n_classes=3)
    assert isinstance(SegmentationTask(model, patch_size=(16, 16, 16), dice_classes="present").loss,
                      PresentClassDiceCELoss)  # fmt: skip
    with pytest.raises(ValueError, match=r"dice_classes must be 'all' or 'present', got 'some'"):
        SegmentationTask(model, patch_size=(16, 16, 16), dice_classes="some")
    cfg = make_config(blob_task, tmp_path / "run", steps=30)
    cfg["task"]["params"]["dice_classes"] = "present"
    run = train(config_from_dict(cfg))
    report = evaluate_segmentation(run, blob_task, progress=False)
    assert min(report.summary[n]["dice"]["mean"] for n in ("ball", "box")) > 0.5, report.summary


def test_foreground_share_holds_when_a_case_lacks_most_classes():
    """A class per lesion type, one type in the case: `fg_fraction` of the patches still hold it (MONAI
    gives an absent class's ratio to background too: 0.7 fell to 0.14)."""
    from medvl3d.train.tasks.segmentation import ClassCropd, PatchSampler, SegAugmentConfig

    label = torch.zeros(1, 40, 40, 40, dtype=torch.long)
    label[0, 20:23, 10:13, 30:33] = 9  # one lesion of class 9 of 15
    sample = {"image": torch.rand(1, 40, 40, 40), "label": label, "meta": {"case_id": "one_type"}}
    still = SegAugmentConfig(affine_prob=0.0, intensity_prob=0.0)
    sampler = PatchSampler(15, (8, 8, 8), 0.7, still)
    held = np.mean([bool((sampler(sample, seed=s)["label"] == 9).any()) for s in range(400)])
    assert 0.62 < held < 0.78, held  # binomial sd 0.023 at 0.7
    ratios = [0.3] + [0.05] * 14
    plain = ClassCropd((8, 8, 8), ratios, 0.375)
    shares = []
    for s in range(400):
        plain.set_random_state(s)
        shares.append(bool((plain({"image": sample["image"], "label": label})["label"] == 9).any()))
    assert np.mean(shares) < 0.3  # MONAI's way, kept as the default of ClassCropd

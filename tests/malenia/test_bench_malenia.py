"""The Malenia zero-shot benchmark's table: means and spreads over the seeds a row has, per group and per
unseen type, from the cell records (the README's table is printed by `--table-only`)."""

from __future__ import annotations

import pytest


def _cell(row: str, seed: int, unseen_dice: float, metastasis: float) -> dict:
    return {
        "row": row,
        "seed": seed,
        "scores": {
            "renal_cyst": {"seen": True, "dice": 0.4},
            "liver_metastasis": {"seen": False, "dice": metastasis},
            "seen": {"dice": 0.2, "nsd": 0.1, "recall": 0.5},
            "unseen": {"dice": unseen_dice, "nsd": 0.05, "recall": 0.3},
        },
    }


def test_table_has_mean_and_spread_over_seeds_and_the_unseen_types(bench_script):
    bench = bench_script("malenia_zero_shot")
    text = bench.table(
        [_cell("name_only", 0, 0.0, 0.0), _cell("malenia", 1, 0.3, 0.6), _cell("malenia", 0, 0.1, 0.2)]
    )
    lines = text.splitlines()
    malenia = next(x for x in lines if x.startswith("| malenia | "))
    assert malenia.split(" | ")[1] == "0,1"  # seeds in order
    assert "| 0.200 ± 0.100 |" in malenia  # unseen Dice: mean 0.2, population std 0.1
    assert lines.index(malenia) < lines.index(next(x for x in lines if x.startswith("| name_only | ")))
    per_type = [x for x in lines if x.startswith("| row (mean Dice over seeds) |")]
    assert per_type == ["| row (mean Dice over seeds) | liver_metastasis |"]  # unseen types only
    assert "| malenia | 0.400 |" in lines


def test_unseen_support_counts_the_training_lesions_that_share_a_type_s_values(bench_script, tmp_path):
    """The types and values come from the folder: an unseen bright kidney type has dark kidney lesions to
    learn its organ from and none with its density."""
    from medvl3d.data.synth import generate

    blob = """
  {name}:
    organ: kidney
    size_mm: [25, 35]
    count: [1, 1]
    attributes:
      contrast: {{contrast-enhanced: 1.0}}
      location: {{right kidney: 1.0}}
      shape: {{round-like: 1.0}}
      density: {{{density}: 1.0}}
      homogeneity: {{homogeneous: 1.0}}
      margin: {{well-defined: 1.0}}
      neighbor_relation: {{separate from neighbouring organs: 1.0}}
"""
    yaml_text = "version: 1\ntypes:" + blob.format(name="dark_blob", density="hypodense")
    yaml_text += blob.format(name="bright_blob", density="hyperdense")
    (tmp_path / "types.yaml").write_text(yaml_text, encoding="utf-8")
    root = tmp_path / "data"
    generate(root, n_train=3, n_test=3, size=(24, 32, 32), spacing=(12.0, 11.0, 11.0), workers=1,
             progress=False, lesion_types=tmp_path / "types.yaml",
             unseen_lesion_types=["bright_blob"])  # fmt: skip
    support = bench_script("malenia_zero_shot").unseen_support(root)
    assert list(support) == ["bright_blob"]
    row = support["bright_blob"]
    assert row["query"]["organ"] == "kidney" and row["query"]["density"] == "hyperdense"
    assert row["same_organ"] == row["train_lesions"] > 0  # every training lesion is a dark kidney blob
    assert row["same_organ_and_density"] == row["same_every_value"] == 0
    assert row["types_with_organ_and_density"] == []
    # A folder of one type, trained on, has no unseen type: an error, not an empty record.
    (tmp_path / "one.yaml").write_text(
        "version: 1\ntypes:" + blob.format(name="dark_blob", density="hypodense")
    )
    seen_only = tmp_path / "seen_only"
    generate(seen_only, n_train=3, n_test=3, size=(24, 32, 32), spacing=(12.0, 11.0, 11.0), workers=1,
             progress=False, lesion_types=tmp_path / "one.yaml")  # fmt: skip
    with pytest.raises(ValueError, match="none is unseen"):
        bench_script("malenia_zero_shot").unseen_support(seen_only)


def test_the_organ_gate_probe_bounds_a_query_by_the_organ_head(
    bench_script, monkeypatch, malenia_checkpoint, tmp_path
):
    """`malenia_token_probe --organ-gate`: `require` keeps the voxels the organ head puts in the query's
    organ, `exclude` drops those it puts in another lesion organ, each region grown by one feature voxel; a
    query without an organ is left as it was."""
    import torch

    from medvl3d.data.synth.phantom import LESION_ORGAN_IDS
    from medvl3d.infer.lesions import LesionQuery
    from medvl3d.models import create_model

    probe = bench_script("malenia_token_probe")
    monkeypatch.setattr(probe, "_score_patched", lambda run, data, name, patched: (name, patched))
    model = create_model("test_malenia")
    logits = torch.zeros(1, 16, 6, 6, 6)
    logits[:, 0] = 5.0  # background, but for a liver block and a left-kidney block
    logits[0, LESION_ORGAN_IDS["liver"][0], :3, :3, :3] = 10.0
    logits[0, LESION_ORGAN_IDS["kidney"][1], 3:, 3:, 3:] = 10.0
    forward = ({"organs": logits},)

    def everywhere(model, forward, query):
        return torch.ones(1, 1, 6, 6, 6)

    name, patched = probe.score_organ_gate(malenia_checkpoint, None, "require")
    assert name == "_query_prob"
    kept = patched(everywhere)(model, forward, LesionQuery({"organ": "liver", "density": "hypodense"}))
    want = torch.zeros(6, 6, 6)
    want[:4, :4, :4] = 1  # the liver block and its rim
    assert torch.equal(kept[0, 0], want)
    _, patched = probe.score_organ_gate(malenia_checkpoint, None, "exclude")
    kept = patched(everywhere)(model, forward, LesionQuery({"location": "left lobe"}))
    want = torch.ones(6, 6, 6)
    want[4:, 4:, 4:] = 0  # the kidney block less its rim
    assert torch.equal(kept[0, 0], want)
    assert torch.equal(
        patched(everywhere)(model, forward, LesionQuery({"density": "hypodense"})), everywhere(0, 0, 0)
    )

    # A model without an organ head has nothing to bound by: one line, not a silent ungated score.
    from medvl3d.models.checkpoint import save_checkpoint

    bare = create_model("test_malenia", n_organs=0)
    info = {"model": {"name": "test_malenia", "family": "malenia", "config": bare.config.to_dict()}}
    path = save_checkpoint(tmp_path / "checkpoints", 1, bare, info)
    with pytest.raises(SystemExit, match="no organ head"):
        probe.score_organ_gate(path, None, "exclude")
    with pytest.raises(SystemExit, match="no organ head"):
        probe.organ_head_labels(path, None)

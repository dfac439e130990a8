"""Zero-shot lesion inference: queries from attributes and free text, per-window maps, the lesion list,
masks on real CTs (NIfTI and DICOM) in the input's geometry, and the data-driven lesion type table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from malenia_helpers import CYST, TUMOUR, lesion_batch

from medvl3d.data.lesion_knowledge import (
    TYPE_QUERY_ATTRIBUTES,
    lesion_table,
    nearest_type,
    organ_of_location,
    type_queries,
)
from medvl3d.infer.lesions import (
    LesionQuery,
    LesionSegmenter,
    find_lesions,
    lesion_maps,
    parse_attribute_query,
    query_from_description,
    query_maps,
    window_maps,
)
from medvl3d.infer.sliding_window import SlidingWindowConfig
from medvl3d.models import create_model


def test_attribute_queries_and_their_errors():
    q = parse_attribute_query("organ=liver, density=hypodense,margin=well-defined")
    assert q.attributes == {"organ": "liver", "density": "hypodense", "margin": "well-defined"}
    assert parse_attribute_query({"shape": "round-like"}).attributes == {"shape": "round-like"}
    with pytest.raises(ValueError, match="'liver' is not attribute=value"):
        parse_attribute_query("liver")
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        parse_attribute_query("colour=red")
    with pytest.raises(ValueError, match="'dark' is not a value of 'density'"):
        parse_attribute_query("density=dark")
    with pytest.raises(ValueError, match="unknown organ 'brain'"):
        parse_attribute_query("organ=brain")
    with pytest.raises(ValueError, match="no attribute=value pairs"):
        parse_attribute_query(" , ")


def test_free_text_descriptions_become_queries():
    q = query_from_description("round hypodense well-defined lesion in the liver")
    assert q.attributes == {
        "shape": "round-like",
        "density": "hypodense",
        "margin": "well-defined",
        "organ": "liver",
    }
    colon = "Contrast-enhanced CT: irregular wall thickening of the sigmoid colon, attenuation slightly"
    q = query_from_description(colon + " higher than the adjacent bowel wall")
    assert q.attributes["location"] == "sigmoid colon" and q.attributes["density"] == "hyperdense"
    assert "contrast" not in q.attributes  # the phase is the scan's, not the lesion's
    with pytest.raises(ValueError, match="no lesion attribute could be read"):
        query_from_description("nothing to see here")


def test_lesion_table_comes_from_the_records():
    table = lesion_table([CYST, CYST, {**CYST, "density": "isodense"}, TUMOUR])
    assert set(table) == {"liver_cyst", "renal_cell_carcinoma"}
    assert table["liver_cyst"]["count"] == 3 and table["liver_cyst"]["organ"] == "liver"
    assert table["liver_cyst"]["density"] == pytest.approx({"hypodense": 2 / 3, "isodense": 1 / 3})
    assert type_queries(table, ["density", "location"])["liver_cyst"] == {
        "density": "hypodense",
        "location": "left lobe",
    }
    # A type's query names its organ, not its most frequent lobe: the right-lobe cyst belongs to the type
    # as much as the left-lobe ones, and the type's mask is the union of them all.
    right = {**CYST, "location": "right lobe"}
    query = type_queries(lesion_table([CYST, CYST, right]), TYPE_QUERY_ATTRIBUTES)["liver_cyst"]
    assert query["organ"] == "liver" and "location" not in query and query["density"] == "hypodense"
    assert parse_attribute_query(query).attributes == query  # a query the CLI would accept
    guess = {k: v for k, v in TUMOUR.items() if k not in ("type", "organ")}
    assert nearest_type(guess, table)[0] == "renal_cell_carcinoma"
    assert nearest_type({"location": "left lobe", "density": "isodense"}, table)[0] == "liver_cyst"
    assert organ_of_location("pancreatic tail") == "pancreas" and organ_of_location(None) is None
    with pytest.raises(ValueError, match="recorded in liver and in kidney"):
        lesion_table([CYST, {**CYST, "organ": "kidney"}], "x.jsonl")
    with pytest.raises(ValueError, match="lacks 'type' or 'organ'"):
        lesion_table([{"organ": "liver"}])


def test_types_of_a_folder_generated_with_another_yaml(tmp_path):
    """A lesion type the code has never seen is read from the folder's records."""
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import records_lesions
    from medvl3d.data.synth import generate

    yaml_text = """version: 1
types:
  glowing_liver_blob:
    organ: liver
    size_mm: [25, 35]
    count: [2, 2]
    attributes:
      contrast: {contrast-enhanced: 1.0}
      location: {right lobe: 1.0}
      shape: {round-like: 1.0}
      density: {hyperdense: 1.0}
      homogeneity: {homogeneous: 1.0}
      margin: {well-defined: 1.0}
      neighbor_relation: {separate from neighbouring organs: 1.0}
"""
    (tmp_path / "types.yaml").write_text(yaml_text, encoding="utf-8")
    root = tmp_path / "data"
    generate(root, n_train=2, n_test=0, size=(24, 32, 32), spacing=(12.0, 11.0, 11.0), workers=1,
             progress=False, lesion_types=tmp_path / "types.yaml")  # fmt: skip
    table = lesion_table(records_lesions(open_split(root, "train")))
    assert list(table) == ["glowing_liver_blob"]
    assert type_queries(table)["glowing_liver_blob"]["density"] == "hyperdense"


def test_window_maps_channels_and_lesion_list():
    torch.manual_seed(0)
    model = create_model("test_malenia").eval()
    x = lesion_batch(1)["image"][:1]
    maps = window_maps(model, x)
    n_values = sum(len(v) - 1 for _, v in model.vocabulary.values)
    assert maps.shape == (1, 1 + n_values, 32, 32, 32)
    assert float(maps[0, 0].min()) >= 0 and float(maps[0, 0].max()) <= 1
    # Per attribute, the value probabilities sum to one wherever a token covers something.
    start = 1
    for _, values in model.vocabulary.values:
        total = maps[0, start : start + len(values) - 1].sum(0)
        assert torch.allclose(total[total > 0.5], torch.ones(1), atol=1e-4)
        start += len(values) - 1
    queried = window_maps(model, x, LesionQuery({"organ": "kidney", "density": "hyperdense"}))
    assert queried.shape == maps.shape
    # find_lesions on a hand-made map: two blobs, the larger first, attributes read inside each.
    fake = torch.zeros_like(maps[0])
    fake[0, 2:8, 2:8, 2:8] = 0.9
    fake[0, 20:23, 20:23, 20:23] = 0.8
    loc = model.vocabulary.table()["location"]
    fake[1 + 2 + loc.index("right kidney")] = 1.0  # after the 2 contrast values
    ids, found = find_lesions(model, fake)
    assert [f["voxels"] for f in found] == [216, 27]
    assert found[0]["attributes"]["location"] == "right kidney" and found[0]["organ"] == "kidney"
    assert int((ids == 1).sum()) == 216


def test_query_gate_reads_an_organ_as_the_sum_of_its_locations():
    from medvl3d.infer.lesions import _match, query_value_probs

    model = create_model("test_malenia")
    loc, dens = model.vocabulary.table()["location"], model.vocabulary.table()["density"]
    given = {a: torch.zeros(1, 2, len(v) - 1) for a, v in model.vocabulary.values}
    given["location"][0, 0, loc.index("left kidney")] = 0.3  # token 0: torn between the two kidneys
    given["location"][0, 0, loc.index("right kidney")] = 0.3
    given["location"][0, 0, loc.index("right lobe")] = 0.4
    given["location"][0, 1, loc.index("right lobe")] = 1.0  # token 1: the liver
    given["density"][0, :, dens.index("hyperdense")] = torch.tensor([0.9, 0.5])
    query = LesionQuery({"organ": "kidney", "density": "hyperdense"})
    probs = query_value_probs(model, given, query)
    assert list(probs) == ["organ", "density"]
    assert torch.allclose(probs["organ"], torch.tensor([[0.6, 0.0]]))
    assert torch.allclose(_match(model, given, query), torch.tensor([[0.75, 0.25]]))
    with pytest.raises(ValueError, match="names no attribute"):
        _match(model, given, LesionQuery({}))
    with pytest.raises(ValueError, match="organ 'brain': none of this model's locations"):
        _match(model, given, LesionQuery({"organ": "brain"}))


def test_query_maps_equal_one_lesion_map_per_query():
    """Scoring a case's types in one sliding window gives, per type, exactly its own pass's map."""
    torch.manual_seed(0)
    model = create_model("test_malenia").eval()
    window = SlidingWindowConfig(patch_size=(32, 32, 32), overlap=0.25)
    image = torch.rand(1, 40, 36, 44)  # several overlapping windows, blended
    queries = [
        LesionQuery({"organ": "kidney", "density": "hyperdense"}),
        LesionQuery({"density": "hypodense", "shape": "round-like"}),
        LesionQuery({"organ": "liver"}),
    ]
    together = query_maps(model, image, window, queries)
    assert together.shape == (3, 40, 36, 44)
    for q, got in zip(queries, together):
        assert torch.equal(got, lesion_maps(model, image, window, q)[0])
    assert not torch.equal(together[0], together[1])  # the queries' maps differ: the check is not vacuous
    with pytest.raises(ValueError, match="at least one query"):
        query_maps(model, image, window, [])


@pytest.mark.parametrize("case", ["nifti", "dicom"])
def test_segment_real_ct_keeps_the_input_geometry(case, real_dir, malenia_checkpoint, tmp_path):
    from medvl3d.data.io import read_volume

    source = real_dir / "totalseg" / ("example_ct_sm.nii.gz" if case == "nifti" else "dicom_series")
    if case == "dicom":
        pytest.importorskip(
            "pylibjpeg", reason="the DICOM series is JPEG 2000 (pip install 'medvl3d[dicom]')"
        )
    segmenter = LesionSegmenter.from_checkpoint(malenia_checkpoint)
    result = segmenter.segment(source, parse_attribute_query("organ=liver,density=hypodense"))
    vol = read_volume(source)
    assert result.mask.shape == vol.array.shape
    out = result.save(tmp_path / "mask.nii.gz", tmp_path / "lesions.json")
    written = read_volume(out)
    assert written.array.shape == vol.array.shape
    assert np.allclose(written.affine, vol.affine, atol=1e-4)
    doc = json.loads((tmp_path / "lesions.json").read_text())
    assert doc["shape"] == list(vol.array.shape)
    for lesion in doc["lesions"]:
        assert lesion["volume_ml"] > 0 and set(lesion["attributes"]) >= {"density", "location"}
        assert lesion["name"] == "organ=liver, density=hypodense"
    assert len(doc["lesions"]) == int(np.max(written.array, initial=0))


def test_segmenter_refuses_other_families(tmp_path):
    from medvl3d.models.checkpoint import save_checkpoint

    model = create_model("test_resenc_seg")
    info = {"model": {"name": "test_resenc_seg", "family": "seg", "config": model.config.to_dict()}}
    ckpt = save_checkpoint(tmp_path / "checkpoints", 1, model, info)
    with pytest.raises(ValueError, match="needs a model of family 'malenia'"):
        LesionSegmenter.from_checkpoint(ckpt)


def test_evaluation_scores_the_folders_own_types(tmp_path):
    """Types, seen or unseen, come from the evaluated folder; the checkpoint's table says which were seen."""
    from medvl3d.data.synth import generate
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types, format_lesion_table
    from medvl3d.models.checkpoint import save_checkpoint

    root = tmp_path / "data"
    generate(root, n_train=0, n_test=3, size=(24, 40, 40), spacing=(10.0, 8.0, 8.0), workers=1,
             progress=False,
             unseen_lesion_types=[])  # fmt: skip
    torch.manual_seed(0)
    model = create_model("test_malenia")
    info = {
        "model": {"name": "test_malenia", "family": "malenia", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "intensity": {"ct_window": [-200.0, 300.0]}},
        "inference": {"patch_size": [32, 32, 32], "overlap": 0.0},
        "lesion_types": lesion_table([CYST, TUMOUR]),
    }
    ckpt = save_checkpoint(tmp_path / "checkpoints", 1, model, info)
    scores = evaluate_lesion_types(ckpt, root, "valid")
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import records_lesions

    recorded = {les["type"] for les in records_lesions(open_split(root, "valid"))}
    types = {k for k in scores if k not in ("seen", "unseen")}
    assert types and types <= recorded
    for name in types:
        assert scores[name]["seen"] is (name in ("liver_cyst", "renal_cell_carcinoma"))
        assert 0.0 <= scores[name]["dice"] <= 1.0 and scores[name]["lesions"] >= 1
    assert "mean unseen" in format_lesion_table(scores) or "mean seen" in format_lesion_table(scores)


def test_segment_lesions_writes_mask_and_json(real_dir, malenia_checkpoint, tmp_path):
    from medvl3d.data.io import read_volume
    from medvl3d.infer.lesions import segment_lesions

    source = real_dir / "totalseg" / "example_ct_sm.nii.gz"
    out = tmp_path / "lesions.nii.gz"
    result = segment_lesions(
        malenia_checkpoint, source, out=out, describe="round hypodense lesion in the liver"
    )
    assert read_volume(out).array.shape == read_volume(source).array.shape
    doc = json.loads((tmp_path / "lesions.json").read_text())
    assert len(doc["lesions"]) == len(result.lesions)
    with pytest.raises(ValueError, match="not both"):
        segment_lesions(malenia_checkpoint, source, out=out, describe="x", attributes="density=hypodense")


def test_evaluation_scores_a_supervised_model_with_a_class_per_type(tmp_path, monkeypatch):
    """The zero-shot table's supervised bounds: a segmentation checkpoint whose classes are lesion type names
    is scored per type like Malenia; a perfect one scores 1 on the types it has a class for and 0 (by
    construction) on the others."""
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import records_lesions
    from medvl3d.data.synth import generate
    from medvl3d.eval import lesion_segmentation
    from medvl3d.models.checkpoint import save_checkpoint

    root = tmp_path / "data"
    generate(root, n_train=0, n_test=3, size=(24, 40, 40), spacing=(10.0, 8.0, 8.0), workers=1,
             progress=False, unseen_lesion_types=[])  # fmt: skip
    valid = open_split(root, "valid")
    recorded = sorted({les["type"] for les in records_lesions(valid)})
    known, unknown = recorded[:-1], recorded[-1]
    model = create_model("test_resenc_seg", n_classes=len(known) + 1)
    info = {
        "model": {"name": "test_resenc_seg", "family": "seg", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "intensity": {"ct_window": [-200.0, 300.0]}},
        "inference": {"patch_size": [24, 40, 40], "overlap": 0.0},
        "label_names": {"0": "background", **{str(i): t for i, t in enumerate(known, start=1)}},
    }
    ckpt = save_checkpoint(tmp_path / "checkpoints", 1, model, info)
    # An oracle network: the true type map of the case being scored (cases in order, those with lesions).
    truths = []
    for i in range(len(valid)):
        sample = valid[i]
        if not sample.get("lesions"):
            continue
        inst = sample["label"][0]
        types = torch.zeros(inst.shape, dtype=torch.int64)
        for key, les in sample["lesions"].items():
            if les["type"] in known:
                types[inst == int(key)] = known.index(les["type"]) + 1
        truths.append(types)

    def oracle(model, image, window, device, progress=False):
        types = truths.pop(0)
        assert types.shape == image.shape[1:]
        return torch.nn.functional.one_hot(types, len(known) + 1).permute(3, 0, 1, 2).float()

    monkeypatch.setattr("medvl3d.infer.sliding_window.sliding_window_probabilities", oracle)
    scores = lesion_segmentation.evaluate_lesion_types(ckpt, root, "valid")
    for name in known:
        if name in scores:
            assert scores[name]["seen"] and scores[name]["dice"] == pytest.approx(1.0), name
    if unknown in scores:
        assert not scores[unknown]["seen"] and scores[unknown]["dice"] == 0.0
    assert any(name in scores for name in known) and not truths  # every case with lesions was scored


def test_evaluate_segmentation_cli_scores_a_malenia_checkpoint_per_lesion_type(
    malenia_checkpoint, tmp_path, capsys
):
    """`medvl3d evaluate segmentation` with a Malenia checkpoint: the folder's own types, seen or unseen
    by the checkpoint's table, as a table, as JSON (-o) and as a page of Dice box plots (--html)."""
    import json
    import re

    from medvl3d.cli import main
    from medvl3d.data.synth import generate

    root = tmp_path / "data"
    generate(root, n_train=0, n_test=3, size=(24, 40, 40), spacing=(10.0, 8.0, 8.0), workers=1,
             progress=False, unseen_lesion_types=[])  # fmt: skip
    out, page = tmp_path / "lesions.json", tmp_path / "lesions.html"
    argv = ["evaluate", "segmentation", "--checkpoint", str(malenia_checkpoint), "--data", str(root)]
    assert main([*argv, "-o", str(out), "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    scores = json.loads(out.read_text(encoding="utf-8"))["lesion_types"]
    types = {k: v for k, v in scores.items() if k not in ("seen", "unseen")}
    assert types
    for name, row in types.items():
        assert row["seen"] is (name in ("liver_cyst", "renal_cell_carcinoma"))  # the checkpoint's table
        assert len(row["case_dice"]) == row["cases"] >= 1
        shown = re.search(rf"^{name}\s+(seen|unseen)\s+(\d\.\d{{3}})", printed, re.MULTILINE)
        assert shown and shown.group(1) == ("seen" if row["seen"] else "unseen")
        assert float(shown.group(2)) == pytest.approx(row["dice"], abs=5e-4)
    html = page.read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") == 2 and "Seen and unseen types" in html

    capsys.readouterr()
    assert main([*argv, "--overlap", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--overlap" in err and "Malenia" in err


def test_report_lists_the_lesions_a_malenia_checkpoint_finds(malenia_checkpoint, tmp_path):
    """The visual report's lesion table is filled by the model's own output (not injected rows): every
    lesion in the JSON with its attributes and mL, the page capped at the most confident ones."""
    from medvl3d.data.synth import generate
    from medvl3d.viz import report as report_module

    root = tmp_path / "data"
    generate(root, n_train=0, n_test=1, size=(24, 40, 40), spacing=(10.0, 8.0, 8.0), workers=1,
             progress=False)  # fmt: skip
    volume = next((root / "valid").glob("valid_*/valid_*_a/valid_*_a_1.nii.gz"))
    # The volume's 10 x 8 x 8 mm voxels are coarser than the model's 3 mm: lesions smaller than one input
    # voxel cannot be drawn on it and are left out, with a warning (before, they were listed at 0 mL).
    with pytest.warns(UserWarning, match="cover no voxel of the input grid"):
        report = report_module.build_report(volume, [malenia_checkpoint], progress=False)
    found = [lesion for _, lesion in report.lesions]
    assert found, "the seeded untrained model finds lesions on this volume (the rows below need some)"
    (run,) = report.to_dict()["runs"]
    listed = run["segmentation"]["lesions"]
    assert len(listed) == len(found)
    for lesion in listed:
        assert lesion["volume_ml"] > 0 and lesion["attributes"]["organ"]  # attributes read from the model
    page = report.to_html()
    best = max(found, key=lambda lesion: lesion.score)
    assert f"{best.volume_ml:.2f}" in page
    rows = page.split('id="lesions"')[1].split("</table>")[0].count("<tr>") - 1  # minus the header row
    assert rows == min(len(found), report_module.MAX_LESION_ROWS)
    if len(found) > report_module.MAX_LESION_ROWS:
        assert f"{len(found)} lesions found" in page


def test_name_only_scoring_fixes_its_candidate_names_before_the_first_case(tmp_path, monkeypatch):
    """SAT's fixed prompt list: every type of the scored folder joins the name-only model's vocabulary, in
    sorted order, before any case, so a type's score does not depend on which cases came first."""
    from medvl3d.eval.lesion_segmentation import _zero_shot_types
    from medvl3d.models.checkpoint import save_checkpoint
    from medvl3d.models.malenia import NAME_ATTRIBUTE, NO_LESION

    model = create_model("test_malenia", query="name")
    info = {
        "model": {"name": "test_malenia", "family": "malenia", "config": model.config.to_dict()},
        "preprocess": {"spacing": None, "intensity": {"ct_window": [-200.0, 300.0]}},
        "inference": {"patch_size": [32, 32, 32], "overlap": 0.0},
        "lesion_types": lesion_table([CYST, TUMOUR]),
        "type_names": ["renal_cell_carcinoma"],
    }
    ckpt = save_checkpoint(tmp_path / "checkpoints", 1, model, info)
    made = []
    real = LesionSegmenter.from_checkpoint.__func__

    def spy(cls, *args):
        made.append(real(cls, *args))
        return made[-1]

    monkeypatch.setattr(LesionSegmenter, "from_checkpoint", classmethod(spy))
    queries = {"splenic_infarct": {}, "liver_cyst": {}, "adrenal_adenoma": {}}
    _, _, case_masks = _zero_shot_types(ckpt, "cpu", queries)
    want = ("renal cell carcinoma", "adrenal adenoma", "liver cyst", "splenic infarct", NO_LESION)
    assert made[0].model.vocabulary.table()[NAME_ATTRIBUTE] == want  # before any case
    masks = case_masks(torch.zeros(1, 32, 32, 32), ["splenic_infarct", "adrenal_adenoma"])
    assert set(masks) == {"splenic_infarct", "adrenal_adenoma"}
    assert made[0].model.vocabulary.table()[NAME_ATTRIBUTE] == want  # a case adds no candidate

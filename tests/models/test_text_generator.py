"""GTGM text generators: the measured generator on phantoms and a real CT, and the wrappers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from medvl3d.text.generator import (
    CallableTextGenerator,
    MeasuredTextGenerator,
    TextGenerator,
    build_text_generator,
    measure_ct,
    report_or_generated,
)

SPACING = (10.0, 10.0, 10.0)  # 32^3 voxels of 1 mL: a 32 cm field of view


def _phantom(fat: bool = False, bone: bool = False, right_lung_z: tuple[int, int] = (3, 30)) -> np.ndarray:
    """Soft tissue (40 HU) in air with two lung boxes (-850 HU); RAS, so the left lung has low x."""
    rng = np.random.default_rng(0)
    vol = np.full((32, 32, 32), -1000.0, np.float32)
    vol[3:29, 5:27, :] = 40.0
    if fat:
        vol[3:29, 5:8, :] = -100.0  # a posterior fat layer
    if bone:
        vol[14:18, 23:26, :] = 700.0  # a dense "spine" column
    vol[6:14, 9:22, 3:30] = -850.0
    vol[18:26, 9:22, right_lung_z[0] : right_lung_z[1]] = -850.0
    return vol + rng.normal(0, 10, vol.shape).astype(np.float32)


def _sample(vol: np.ndarray, case: str = "phantom", **meta) -> dict:
    return {"image": torch.from_numpy(vol)[None], "meta": {"spacing": SPACING, "case_id": case, **meta}}


def test_phantom_text_names_what_is_there_and_not_what_is_not():
    text = MeasuredTextGenerator().generate(_sample(_phantom(), modality="CT"))
    low = text.lower()
    assert "lung" in low and ("thora" in low or "chest" in low)
    assert "left 2808 ml" in low and "right 2808 ml" in low  # 8 x 13 x 27 voxels of 1 mL each
    for absent in ("bone", "osseous", "fat", "contrast", "abdom", "smaller", "denser", "emphysema"):
        assert absent not in low, (absent, text)


def test_phantom_with_fat_and_bone_mentions_them():
    low = MeasuredTextGenerator().generate(_sample(_phantom(fat=True, bone=True))).lower()
    assert "fat" in low or "adipose" in low
    assert "bone" in low or "osseous" in low
    assert "contrast" not in low  # bone's partial-volume rim is not contrast-enhanced blood


def test_asymmetric_lungs_are_reported():
    low = MeasuredTextGenerator().generate(_sample(_phantom(right_lung_z=(20, 30)))).lower()
    assert "the right lung is smaller than the left lung" in low


def test_no_lungs_gives_abdominal_description():
    vol = _phantom()
    vol[vol < -500] = 40.0
    vol[:2] = -1000.0
    low = MeasuredTextGenerator().generate(_sample(vol)).lower()
    assert "no aerated lung" in low and "abdom" in low


def test_phrasing_is_deterministic_per_case_and_varies_across_cases():
    gen = MeasuredTextGenerator()
    vol = _phantom()
    assert gen.generate(_sample(vol, "a")) == gen.generate(_sample(vol, "a"))
    assert len({gen.generate(_sample(vol, f"case{i}")) for i in range(12)}) > 1


def test_real_ct_lung_bases_match_totalsegmentator(real_dir):
    nib = pytest.importorskip("nibabel")
    img = nib.as_closest_canonical(nib.load(real_dir / "totalseg" / "example_ct_sm.nii.gz"))
    seg = nib.as_closest_canonical(nib.load(real_dir / "totalseg" / "example_seg.nii.gz"))
    ct = img.get_fdata().astype(np.float32)
    labels = np.asarray(seg.dataobj).astype(int)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    voxel_ml = np.prod(spacing) / 1000
    # TotalSegmentator `total` ids: 10, 11 left lung lobes; 12-14 right lobes.
    ref = {
        "left": np.isin(labels, [10, 11]).sum() * voxel_ml,
        "right": np.isin(labels, [12, 13, 14]).sum() * voxel_ml,
    }
    m = measure_ct(ct, spacing)
    for side in ("left", "right"):
        assert m.lungs[side].volume_ml == pytest.approx(ref[side], rel=0.25), side
    text = MeasuredTextGenerator().generate(
        {"image": ct[None], "meta": {"spacing": spacing, "modality": "CT"}}
    )
    low = text.lower()
    assert "upper abdom" in low and "lung bases" in low
    assert "bone" in low or "osseous" in low  # vertebrae and ribs
    assert "contrast" not in low  # a non-contrast scan (aorta ~40 HU)


def test_real_mr_gets_no_hu_claims(real_dir):
    nib = pytest.importorskip("nibabel")
    img = nib.as_closest_canonical(nib.load(real_dir / "totalseg" / "example_mr_sm.nii.gz"))
    sample = {
        "image": img.get_fdata()[None],
        "meta": {"spacing": img.header.get_zooms()[:3], "modality": "MR"},
    }
    text = MeasuredTextGenerator().generate(sample)
    assert text.startswith("MR volume") and "HU" not in text and "lung" not in text


def test_bad_samples_raise_clear_errors():
    gen = MeasuredTextGenerator()
    with pytest.raises(ValueError, match="case7"):
        gen.generate({"image": np.zeros((4, 4)), "meta": {"spacing": SPACING, "case_id": "case7"}})
    with pytest.raises(ValueError, match="spacing"):
        gen.generate({"image": np.zeros((1, 4, 4, 4)), "meta": {"case_id": "x"}})
    nan = np.zeros((1, 4, 4, 4))
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gen.generate({"image": nan, "meta": {"spacing": SPACING}})


def test_build_text_generator_and_wrappers():
    assert isinstance(build_text_generator(), MeasuredTextGenerator)
    assert build_text_generator({"type": "measured", "seed": 3}).seed == 3
    wrapped = build_text_generator(lambda s: f"  volume {s['meta']['case_id']} ")
    assert isinstance(wrapped, CallableTextGenerator) and isinstance(wrapped, TextGenerator)
    assert wrapped.generate({"meta": {"case_id": "c1"}}) == "volume c1"
    with pytest.raises(ValueError, match="no text"):
        CallableTextGenerator(lambda s: "").generate({"meta": {"case_id": "c2"}})
    with pytest.raises(ValueError, match="unknown text generator"):
        build_text_generator("captioner")
    with pytest.raises(TypeError, match="temperature"):
        build_text_generator({"type": "measured", "temperature": 1.0})
    with pytest.raises(FileNotFoundError, match="not found"):
        build_text_generator({"type": "transformers", "path": "/nonexistent/llm"})


def test_report_or_generated_prefers_the_report():
    gen = CallableTextGenerator(lambda s: "generated")
    assert report_or_generated({"report": " Findings: none. "}, gen) == "Findings: none."
    assert report_or_generated({"report": "  "}, gen) == "generated"
    assert report_or_generated({}, gen) == "generated"


def test_transformers_generator_with_a_tiny_local_lm(tmp_path):
    """A random 1-layer GPT-2 saved locally with the MiniLM tokenizer: the wrapper loads it offline and
    returns only the continuation, deterministically (greedy)."""
    transformers = pytest.importorskip("transformers")
    from medvl3d.text.encoders import minilm_path

    try:
        src = minilm_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, tmp_path / name)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=30522, n_positions=512, n_embd=16, n_layer=1, n_head=2, bos_token_id=101, eos_token_id=102
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    gen = build_text_generator({"type": "transformers", "path": str(tmp_path), "max_new_tokens": 6})
    sample = _sample(_phantom())
    text = gen.generate(sample)
    assert text and text == gen.generate(sample)
    assert "Measurements:" not in text  # the prompt is not echoed

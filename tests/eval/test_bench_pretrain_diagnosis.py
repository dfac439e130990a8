"""The zero-shot benchmark's choices: every ablation row is a valid experiment config, and the abnormality
groups are selectable (a preset or explicit labels), generated as asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_every_row_is_a_valid_config_with_its_ablation(bench_script):
    from medvl3d.config import load_config
    from medvl3d.models import model_config

    bench = bench_script("pretrain_diagnosis")
    cfgs = {}
    for name, (config, extra) in bench.METHODS.items():
        cfgs[name] = load_config(REPO / "configs" / config, extra)  # unknown keys / values fail here
    bank = {n: model_config(c.model.name, **c.model.overrides) for n, c in cfgs.items() if "brgsa" in n}
    assert (bank["brgsa"].bank_read, bank["brgsa"].bank_score) == ("softmax_dot", "image_recon")
    assert bank["brgsa_cosine_read"].bank_read == "cosine_tau"
    assert bench.RESCORED["brgsa_both_score"] == ("brgsa", {"bank_score": "both_recon"})
    v1 = cfgs["brgsa_v1"]
    assert (bank["brgsa_v1"].bank_read, bank["brgsa_v1"].bank_init) == ("cosine_tau", "normal")
    assert v1.task.params == {
        "cross_weight": 0.5,
        "mse_weight": 0.1,
        "mse": "normalized",
        "learn_scale": True,
    }
    assert cfgs["gtgm"].data.text_source == "generated" and cfgs["gtgm_reports"].data.text_source == "report"
    assert cfgs["clip_summary"].data.text_source == "summary" and cfgs["clip_summary"].task.name == "clip"


def test_groups_are_selectable_and_generated_as_asked(tmp_path, bench_script):
    bench = bench_script("pretrain_diagnosis")
    args = bench.parse_args(["--groups", "learnable"])
    under, unseen = bench.label_groups(args)
    assert under == ["Cardiomegaly", "Pleural effusion", "Emphysema"] and unseen == ["Pericardial effusion"]
    args = bench.parse_args(["--groups", "learnable", "--unseen", "Bronchiectasis, Pericardial effusion"])
    assert bench.label_groups(args)[1] == ["Bronchiectasis", "Pericardial effusion"]
    assert bench.label_groups(bench.parse_args([])) == (None, None)  # the generator's defaults

    args = bench.parse_args(
        ["--groups", "learnable", "--n-train", "50", "--n-test", "2", "--size", "16", "--workers", "1"]
    )
    data = bench.ensure_data(args, tmp_path)
    assert data.name == "synthct-learnable"
    splits = json.loads((data / "splits.json").read_text(encoding="utf-8"))["abnormalities"]
    assert sorted(splits["underrepresented"]) == sorted(under) and splits["unseen"] == unseen
    # <= 2% of 50 training cases: exactly one case per underrepresented finding, none with the unseen one
    lines = (data / "manifest_train.jsonl").read_text(encoding="utf-8").splitlines()
    train = [json.loads(line)["labels"] for line in lines]
    assert len(train) == 50
    for name in under:
        assert sum(case[name] for case in train) == 1, name
    assert sum(case[unseen[0]] for case in train) == 0
    # a folder generated with other groups is refused, not silently reused
    with pytest.raises(SystemExit, match="underrepresented"):
        bench.ensure_data(
            bench.parse_args(["--data", str(data), "--underrepresented", "Emphysema"]), tmp_path
        )


def test_a_rescored_row_trains_as_its_base_and_scores_otherwise(bench_script):
    """`brgsa_both_score` scores brgsa's checkpoints instead of retraining: valid only because the loss
    never reads `bank_score` (same weights, same batch -> same loss) while the zero-shot score does."""
    import torch

    from medvl3d.models import create_model
    from medvl3d.train.tasks import build_task

    bench = bench_script("pretrain_diagnosis")
    base, fields = bench.RESCORED["brgsa_both_score"]
    assert base in bench.METHODS and "brgsa_both_score" in bench.ALL_METHODS
    torch.manual_seed(0)
    model = create_model("test_resenc_clip", vision={"img_size": (16, 16, 16), "width": 8}, bank_size=16)
    model.eval()  # batch-norm statistics stay put between the two passes
    batch = {"image": torch.rand(4, 1, 16, 16, 16), "text": ["a", "b c", "d e f", "g"]}
    task = build_task("brgsa", model)
    with torch.no_grad():
        loss = task(batch)["loss"]
        img, txt = model.encode_image(batch["image"]), model.encode_text(batch["text"])
        score = model.score(img, txt)
        for name, value in fields.items():
            setattr(model.config, name, value)
        torch.testing.assert_close(task(batch)["loss"], loss)
        assert not torch.allclose(model.score(img, txt), score)


def test_collect_assembles_the_runs_of_several_processes(tmp_path, capsys, bench_script):
    """Processes that each trained some rows into one --out: --collect tables them without training, and
    names the first run that has no result yet."""
    bench = bench_script("pretrain_diagnosis")
    data = tmp_path / "data"
    data.mkdir()
    (data / "splits.json").write_text(json.dumps({"abnormalities": {}}), encoding="utf-8")
    out = tmp_path / "out"
    for method, seed, auroc in (("clip", 0, 0.6), ("clip", 1, 0.8), ("brgsa", 0, 0.7)):
        run = out / f"{method}_seed{seed}"
        run.mkdir(parents=True)
        result = {"method": method, "seed": seed, "macro": auroc, "seen": auroc, "underrepresented": None,
                  "unseen": None, "gap_before": 1.0, "gap_after": None, "alignment": {"gap": 1.0},
                  "per_label": {"Cardiomegaly": auroc}}  # fmt: skip
        (run / "bench_result.json").write_text(json.dumps(result), encoding="utf-8")
    argv = ["--collect", "--data", str(data), "--out", str(out), "--seeds", "0", "1"]
    with pytest.raises(SystemExit, match="brgsa_seed1"):
        bench.main([*argv, "--methods", "clip", "brgsa"])
    assert bench.main([*argv, "--methods", "clip"]) == 0
    printed = capsys.readouterr().out
    assert "| clip | 0.700 ± 0.141 |" in printed  # seen: mean ± sd of 0.6 and 0.8
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert [r["macro"] for r in saved["results"]] == [0.6, 0.8]

"""The Malenia zero-shot benchmark's table: means and spreads over the seeds a row has, per group and per
unseen type, from the cell records (the README's table is printed by `--table-only`)."""

from __future__ import annotations


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

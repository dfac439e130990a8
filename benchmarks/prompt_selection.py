"""Choose zero-shot prompts on a separate draw of SynthCT-VL, never on the split that is reported.

Scores saved runs (e.g. those of ``benchmarks/pretrain_diagnosis.py``) with several candidate prompt sets
on a *selection* data set: SynthCT-VL generated with another data seed (default 1, 300 cases, only a
``valid`` split), so the cases differ from the reported valid split of data seed 0. Every volume is
encoded once per run; each candidate only re-scores the embeddings. Prints one line per run and
candidate (macro AUROC per group, cardiomegaly and pleural effusion, the two findings a 1 cm grid shows)
and the mean over runs.

    python benchmarks/prompt_selection.py runs/bench_pretrain_diagnosis/*_seed*

This is how the default prompts of ``medvl3d.text.prompts`` were chosen (README, "Zero-shot diagnosis").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from medvl3d.text.prompts import CT_CLIP_PROMPTS, DEFAULT_PROMPTS, PromptSet
from medvl3d.text.summariser import NO_FINDINGS

CANDIDATES = {
    "ct_clip": CT_CLIP_PROMPTS,
    "x_vs_normal": DEFAULT_PROMPTS,  # "X." against NO_FINDINGS: the winner, now the default
    "x_vs_no_x": PromptSet(positive=("{}.",), negative=("no {}.",)),
    "x_vs_both": PromptSet(positive=("{}.",), negative=(NO_FINDINGS, "no {}.")),
}
SHOWN = ("Cardiomegaly", "Pleural effusion")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run or checkpoint folders")
    p.add_argument(
        "--data", default="runs/prompt_selection/synthct", help="selection data (generated if absent)"
    )
    p.add_argument("--data-seed", type=int, default=1, help="must differ from the reported data's seed")
    p.add_argument("--n-cases", type=int, default=300)
    p.add_argument("--size", type=int, default=32, help="cubic volume size (must match the runs' grid)")
    p.add_argument("--out", default=None, help="also write every row as JSON here")
    return p.parse_args(argv)


def ensure_data(args: argparse.Namespace) -> Path:
    """Generate the selection split once (reused when its splits.json exists, if drawn with another seed)."""
    from medvl3d.data.synth import generate

    if args.data_seed == 0:
        raise SystemExit("--data-seed 0 draws the reported valid split itself; pick another seed")
    data = Path(args.data)
    splits = data / "splits.json"
    if splits.is_file() and json.loads(splits.read_text(encoding="utf-8")).get("seed") == 0:
        raise SystemExit(f"{data} was generated with data seed 0 (the reported split); pick another folder")
    if not splits.is_file():
        s = args.size
        spacing = (320.0 / s, 352.0 / s, 352.0 / s)  # the benchmark's field of view
        generate(data, n_train=0, n_test=args.n_cases, size=(s, s, s), spacing=spacing, seed=args.data_seed)
    return data


def score_run(run: str, data: list[dict], groups: dict[str, list[str]]) -> list[dict]:
    """One row per candidate: macro AUROC per group and of the findings in ``SHOWN``."""
    from medvl3d.eval.diagnosis import score_dataset
    from medvl3d.eval.metrics import binary_metrics
    from medvl3d.infer.predictor import Predictor

    rows = []
    predictor = Predictor.from_checkpoint(run)
    names, truth, _, image_emb, _ = score_dataset(predictor, data, None, 8, False)
    for name, prompts in CANDIDATES.items():
        scorer = Predictor(predictor.model, predictor.info, predictor.device, prompts)
        probs = scorer.probabilities(image_emb, names)
        auc = {n: binary_metrics(truth[:, j], probs[:, j]).auroc for j, n in enumerate(names)}
        row = {"run": run, "prompts": name, "per_label": auc}
        for g, members in {"all": names, **groups}.items():
            row[g] = _mean(auc.get(m) for m in members)
        rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _mean(values) -> float | None:
    v = [x for x in values if x is not None]
    return statistics.mean(v) if v else None


def _line(label: str, row: dict, groups: list[str]) -> str:
    cells = [f"{g} {_fmt(row[g])}" for g in groups] + [f"{n} {_fmt(row['per_label'].get(n))}" for n in SHOWN]
    return f"{label:40s} {row['prompts']:12s} " + "  ".join(cells)


def main(argv: list[str] | None = None) -> int:
    from medvl3d.data.datasets import open_split
    from medvl3d.eval.diagnosis import load_label_groups

    args = parse_args(argv)
    root = ensure_data(args)
    groups = load_label_groups(root)
    data = list(open_split(root, "valid"))
    cols = ["all", *groups]
    rows = []
    for run in args.runs:
        for row in score_run(run, data, groups):
            rows.append(row)
            print(_line(Path(run).name, row, cols), flush=True)
    print()
    for name in CANDIDATES:
        mine = [r for r in rows if r["prompts"] == name]
        mean = {g: _mean(r[g] for r in mine) for g in cols}
        mean["per_label"] = {n: _mean(r["per_label"].get(n) for r in mine) for n in SHOWN}
        print(_line(f"mean over {len(mine)} runs", {"prompts": name, **mean}, cols))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

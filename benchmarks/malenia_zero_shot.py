"""Zero-shot lesion segmentation on SynthCT-VL: Malenia, its ablations and the baselines, one table.

Usage:
    python benchmarks/malenia_zero_shot.py [--out runs/bench_malenia] [--steps 1000] [--seeds 0 1 2]
    python benchmarks/malenia_zero_shot.py --out /tmp/malenia_smoke --smoke      # a few steps, minutes
    python benchmarks/malenia_zero_shot.py --rows name_only --seeds 0 --rescore  # score trained cells again
    python benchmarks/malenia_zero_shot.py --table-only                          # the README table
    python benchmarks/malenia_zero_shot.py --support      # what training holds of each unseen type's values

Rows (same data, same steps, same model size; `configs/malenia_synth_cpu.yaml`):
- `malenia`: multi-scale mask-attribute alignment + CMKI;
- `malenia_last_layer`: alignment at the last decoder layer only;
- `malenia_no_cmki`: no Cross-Modal Knowledge Injection (token masks only);
- `name_only`: tokens aligned with the lesion type *name* (SAT/VoxTell-style), queried by the unseen name;
- `all_types_upper`: Malenia trained on a copy of the data whose train split holds every type, the unseen
  ones included;
- `malenia_pool`: Malenia with the `attr_pool` option (each token's attributes also read the mean feature
  under its mask; an extension, not in the paper); `malenia_pool_only`: attributes from that feature alone
  (`attr_from_token=false`);
- `supervised_seen`, `supervised_all`: the supervised bounds, MONAI's UNet with one class per lesion type
  (type maps written from the instance maps and the records) trained on the seen types only (lower bound:
  it has no class for an unseen type, so it scores 0 there by construction; its seen Dice is the
  reference for Malenia's) and on every type (upper bound), same patches, steps and batch; their Dice term is
  the mean over the classes present (`dice_classes: present`, `medvl3d.losses.dice`).

Each cell is scored by `medvl3d.eval.lesion_segmentation.evaluate_lesion_types` on the `valid` split
(types and queries from the folder's records): Dice, NSD (2 mm) and lesion detection recall for seen and
unseen types. Data, caches and runs go under `--out`; every cell writes
`<results>/zero_shot_<row>_seed<k>.json` (commit, command, seed, scores; `--results`, default
`benchmarks/results/malenia`, the smoke run's `<out>/results`), and a cell already there is not rerun.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from medvl3d.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402

CONFIG = REPO / "configs" / "malenia_synth_cpu.yaml"
ROWS = {
    "malenia": [],
    "malenia_last_layer": ["model.overrides.align=last"],
    "malenia_no_cmki": ["model.overrides.cmki=false"],
    "name_only": ["model.overrides.query=name"],
    "all_types_upper": [],
    "malenia_pool": ["model.overrides.attr_pool=true"],  # our extension, not the paper's model
    "malenia_pool_only": ["model.overrides.attr_pool=true", "model.overrides.attr_from_token=false"],
    "supervised_seen": None,  # MONAI UNet on type maps (`run_supervised_cell`)
    "supervised_all": None,
}
ALL_TYPES_ROWS = ("all_types_upper", "supervised_all")  # trained on the copy whose train split has every type


def make_data(root: Path, n_train: int, n_test: int, size: tuple, spacing: tuple, all_types: bool) -> Path:
    from medvl3d.data.synth import generate

    if not (root / "manifest_valid.jsonl").is_file():
        generate(root, n_train=n_train, n_test=n_test, size=size, spacing=spacing, seed=0, workers=1,
                 progress=False, **({"unseen_lesion_types": []} if all_types else {}))  # fmt: skip
    return root


def type_maps(data: Path, work: Path) -> Path:
    """An MSD json of the train split with one class per lesion type of that split (sorted names): each
    instance map rewritten as type ids under `work` (the data folder is never written); lesion-free cases
    are left out (their organs still appear as background around every lesion)."""
    import nibabel as nib
    import numpy as np

    target = work / "dataset_lesion_types.json"
    if target.is_file():
        return target
    lines = [json.loads(x) for x in (data / "manifest_train.jsonl").read_text().splitlines() if x.strip()]
    types = sorted({les["type"] for line in lines for les in (line.get("lesions") or {}).values()})
    entries = []
    for line in lines:
        src = nib.load(data / line["label"])
        inst = np.asarray(src.dataobj)
        out = np.zeros(inst.shape, np.uint8)
        for key, les in (line.get("lesions") or {}).items():
            out[inst == int(key)] = types.index(les["type"]) + 1
        if not out.any():
            continue  # a lesion-free case: a segmentation label map must hold a class
        dst = work / "type_maps" / f"{line['case_id']}.nii.gz"
        dst.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(out, src.affine, src.header), dst)
        entries.append({"image": str((data / line["image"]).resolve()), "label": str(dst.resolve())})
    doc = {
        "name": "SynthCT-VL lesion types",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(i): t for i, t in enumerate(types, start=1)}},
        "training": entries,
    }
    atomic_write_text(target, json.dumps(doc, indent=1) + "\n")  # its presence means done
    return target


def supervised_lesion_overrides(steps: int, seed: int, cache: Path) -> list[str]:
    """A supervised lesion network's settings over `configs/seg_synth_tiny.yaml`: MONAI's UNet on the same
    48^3 patches at 2 mm, soft-tissue window and batch as Malenia (also `lesion_learnability.py`)."""
    params = {"patch_size": [48, 48, 48], "fg_fraction": 0.7, "overlap": 0.25, "dice_classes": "present"}
    return [
        "data.format=msd",
        "data.preprocess.spacing=[2.0,2.0,2.0]",
        "data.preprocess.intensity.ct_window=[-200.0,300.0]",
        "model.name=monai_unet",
        "model.overrides={}",
        "task.name=segmentation",
        f"task.params={json.dumps(params)}",
        "data.batch_size=2",
        f"train.steps={steps}",
        f"train.seed={seed}",
        "train.progress=false",
        f"train.ckpt_every={steps}",
        f"data.cache_dir={cache}",
    ]


def run_supervised_cell(row: str, seed: int, data: Path, args: argparse.Namespace) -> dict:
    """MONAI's UNet with a class per lesion type, on the same 48^3 patches at 2 mm as Malenia."""
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types
    from medvl3d.train.finetune import finetune

    maps = type_maps(data, args.out / "type_maps" / data.name)
    sets = [
        *supervised_lesion_overrides(args.steps, seed, args.out / "cache" / (data.name + "_types")),
        *args.set_supervised,
    ]
    start = time.perf_counter()
    run = finetune(
        REPO / "configs" / "seg_synth_tiny.yaml",
        from_scratch=True,
        data=maps,
        out=args.out / "runs" / f"{row}_seed{seed}",
        overrides=sets,
    )
    train_s = time.perf_counter() - start
    scores = evaluate_lesion_types(run, args.eval_data, "valid", max_cases=args.eval_cases, seen=args.seen)
    return {"row": row, "seed": seed, "steps": args.steps, "train_seconds": train_s, "scores": scores}


def run_cell(row: str, seed: int, data: Path, args: argparse.Namespace) -> dict:
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types
    from medvl3d.train.finetune import finetune

    sets = [
        *ROWS[row],
        f"train.steps={args.steps}",
        f"train.seed={seed}",
        "train.progress=false",
        f"train.ckpt_every={args.steps}",
        f"data.cache_dir={args.out / 'cache' / data.name}",  # one preprocessing cache per data folder
        *args.set,
    ]
    start = time.perf_counter()
    run = finetune(
        CONFIG, from_scratch=True, data=data, out=args.out / "runs" / f"{row}_seed{seed}", overrides=sets
    )
    train_s = time.perf_counter() - start
    scores = evaluate_lesion_types(run, args.eval_data, "valid", max_cases=args.eval_cases, seen=args.seen)
    return {"row": row, "seed": seed, "steps": args.steps, "train_seconds": train_s, "scores": scores}


def rescore(path: Path, run: Path, args: argparse.Namespace, commit: str) -> dict:
    """Score a trained cell again (a change of the scoring, not of the model); rewrites its JSON."""
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types

    if not run.is_dir():
        raise SystemExit(f"{run}: no trained run to rescore for {path.name}")
    result = json.loads(path.read_text(encoding="utf-8"))
    result["scores"] = evaluate_lesion_types(
        run, args.eval_data, "valid", max_cases=args.eval_cases, seen=args.seen
    )
    result["scored_commit"] = commit
    result["rescore_command"] = " ".join(["benchmarks/malenia_zero_shot.py", *sys.argv[1:]])
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    print(f"{path.name}: rescored, unseen {result['scores'].get('unseen')}")
    return result


def unseen_support(data: Path) -> dict[str, dict]:
    """Per unseen type of the valid split: its query (organ and most frequent values) and how many training
    lesions share its organ, its organ and density, and every queried value: what a model that composes
    seen values has to go on.

    Raises:
        ValueError: a valid split with no type the train split lacks (nothing to report).
    """
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import (
        TYPE_QUERY_ATTRIBUTES,
        lesion_table,
        records_lesions,
        type_queries,
    )

    train = records_lesions(open_split(data, "train"))
    seen = {les["type"] for les in train}
    queries = type_queries(lesion_table(records_lesions(open_split(data, "valid"))), TYPE_QUERY_ATTRIBUTES)
    out = {}
    for name, query in sorted(queries.items()):
        if name in seen:
            continue
        organ = [les for les in train if les["organ"] == query["organ"]]
        density = [les for les in organ if les.get("density") == query.get("density")]
        every = [les for les in density if all(les.get(a) == v for a, v in query.items() if a != "organ")]
        out[name] = {
            "query": query, "train_lesions": len(train), "same_organ": len(organ),
            "same_organ_and_density": len(density), "same_every_value": len(every),
            "types_with_organ_and_density": sorted({les["type"] for les in density}),
        }  # fmt: skip
    if not out:
        raise ValueError(
            f"{data}: every lesion type of the valid split is in the train split: none is unseen"
        )
    return out


def table(results: list[dict]) -> str:
    """A markdown table: per row, the seeds scored and mean +- std over them of each group's metrics."""
    import numpy as np

    head = "| row | seeds | " + " | ".join(
        f"{g} {m}" for g in ("seen", "unseen") for m in ("Dice", "NSD", "recall")
    )
    lines = [head + " |", "|---" * 8 + "|"]
    for row in ROWS:
        cells = [r for r in results if r["row"] == row]
        if not cells:
            continue
        vals = []
        for group in ("seen", "unseen"):
            for metric in ("dice", "nsd", "recall"):
                xs = [c["scores"].get(group, {}).get(metric) for c in cells]
                xs = [x for x in xs if x is not None]
                vals.append(f"{np.mean(xs):.3f} ± {np.std(xs):.3f}" if xs else "-")
        seeds = ",".join(str(c["seed"]) for c in sorted(cells, key=lambda c: c["seed"]))
        lines.append(f"| {row} | {seeds} | " + " | ".join(vals) + " |")
    # Dice per unseen type (the group mean above hides which types carry it)
    unseen = sorted(
        {k for r in results for k, v in r["scores"].items() if isinstance(v, dict) and v.get("seen") is False}
    )
    lines += [
        "",
        "| row (mean Dice over seeds) | " + " | ".join(unseen) + " |",
        "|---" * (len(unseen) + 1) + "|",
    ]
    for row in ROWS:
        cells = [r for r in results if r["row"] == row]
        if cells:
            means = [
                np.mean([c["scores"][t]["dice"] for c in cells if t in c["scores"]] or [np.nan])
                for t in unseen
            ]
            lines.append(f"| {row} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "-o", "--out", type=Path, default=Path("runs/bench_malenia"), help="work folder (data, runs)"
    )
    ap.add_argument(
        "--results", type=Path, default=None, help="JSON per cell (default benchmarks/results/malenia)"
    )
    ap.add_argument("--data", type=Path, default=None, help="SynthCT-VL folder (default: <out>/data)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--eval-cases", type=int, default=None, help="score only the first N valid cases")
    ap.add_argument("--smoke", action="store_true", help="tiny data, 4 steps, seed 0, 2 eval cases")
    ap.add_argument(
        "--table-only", action="store_true", help="print the table of the JSONs there; run nothing"
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score the cells already trained again with this commit's scoring (no training); the JSON keeps "
        "its training commit and gains scored_commit",
    )
    ap.add_argument(
        "--support",
        action="store_true",
        help="per unseen type, the training lesions sharing its organ and values; writes "
        "<results>/unseen_support.json",
    )
    ap.add_argument("--set", action="append", default=[], help="extra Malenia config override (repeatable)")
    ap.add_argument(
        "--set-supervised", action="append", default=[], help="extra override of the supervised rows"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results_dir = args.results or (
        args.out / "results" if args.smoke else REPO / "benchmarks" / "results" / "malenia"
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        found = [
            json.loads(f.read_text(encoding="utf-8")) for f in sorted(results_dir.glob("zero_shot_*.json"))
        ]
        print(table([r for r in found if r.get("row") in args.rows and r.get("seed") in args.seeds]))
        return
    commit = git_commit()
    if args.smoke:
        size, spacing, n_train, n_test = (48, 80, 80), (6.0, 4.4, 4.4), 4, 2
        args.steps, args.seeds, args.eval_cases = 4, [0], 2
        args.set += ["data.preprocess.spacing=[4.0,4.0,4.0]", "task.params.patch_size=[32,32,32]",
                     "task.params.val_cases=1", "optim.warmup_steps=1"]  # fmt: skip
        args.set_supervised += ["data.preprocess.spacing=[4.0,4.0,4.0]", "optim.warmup_steps=1",
                                'task.params={"patch_size": [32, 32, 32], "pad_to_patch": true, '
                                '"dice_classes": "present"}']  # fmt: skip
    else:
        size, spacing, n_train, n_test = (128, 176, 176), (2.5, 2.0, 2.0), 120, 40
    data = args.data or make_data(args.out / "data", n_train, n_test, size, spacing, all_types=False)
    args.eval_data = data
    from medvl3d.data.datasets import open_split
    from medvl3d.data.lesion_knowledge import records_lesions

    if args.support:
        try:
            support = unseen_support(data)
        except ValueError as err:
            raise SystemExit(f"--support: {err}") from None
        for name, row in support.items():
            print(f"{name}: {row['same_organ']} training lesions in the {row['query']['organ']}, "
                  f"{row['same_organ_and_density']} of them {row['query'].get('density')} "
                  f"({', '.join(row['types_with_organ_and_density']) or 'none'}), "
                  f"{row['same_every_value']} with every queried value")  # fmt: skip
        record = {
            "benchmark": "malenia_unseen_support", "commit": commit, "data": str(data),
            "command": " ".join(["benchmarks/malenia_zero_shot.py", *sys.argv[1:]]), "types": support,
        }  # fmt: skip
        atomic_write_text(results_dir / "unseen_support.json", json.dumps(record, indent=1) + "\n")
        return
    # Seen = the types of the standard train split, for every row (the upper bound trains on all of them).
    args.seen = {les["type"] for les in records_lesions(open_split(data, "train"))}
    results = []
    for row in args.rows:
        train_data = (
            make_data(args.out / "data_all_types", n_train, n_test, size, spacing, True)
            if row in ALL_TYPES_ROWS
            else data
        )
        for seed in args.seeds:
            path = results_dir / f"zero_shot_{row}_seed{seed}.json"
            if args.rescore:
                if path.is_file():
                    results.append(rescore(path, args.out / "runs" / f"{row}_seed{seed}", args, commit))
                continue
            if path.is_file():
                results.append(json.loads(path.read_text(encoding="utf-8")))
                continue
            runner = run_cell if ROWS[row] is not None else run_supervised_cell
            result = {
                "benchmark": "malenia_zero_shot",
                "commit": commit,
                "command": " ".join(["benchmarks/malenia_zero_shot.py", *sys.argv[1:]]),
                **runner(row, seed, train_data, args),
            }
            atomic_write_text(path, json.dumps(result, indent=2) + "\n")  # a rerun skips the cell
            results.append(result)
            print(
                f"{row} seed {seed}: {result['train_seconds']:.0f} s, unseen {result['scores'].get('unseen')}"
            )
    print(table(results))


if __name__ == "__main__":
    main()

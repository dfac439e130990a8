"""Zero-shot diagnosis on SynthCT-VL: CLIP vs BrgSA vs GTGM over several seeds, one markdown table.

Generates SynthCT-VL (default splits: seen / underrepresented / unseen abnormalities), pretrains each
method with its tiny CPU config (``configs/<method>_synth_tiny.yaml``) for every seed, evaluates
zero-shot diagnosis on the ``valid`` split and prints macro AUROC per abnormality group and the modality
gap (before / after the knowledge bank) as mean ± std over seeds.

Besides the methods with their (faithful) defaults, the ablations are rows: ``clip_summary`` is plain
CLIP trained on the same summarised reports as BrgSA (BrgSA without the bank: it tells summaries and the
knowledge bank apart); ``brgsa_cosine_read`` reads the bank with our first softmax(cos / 0.05);
``brgsa_both_score`` scores with our first cos(v_rec, t_rec); ``brgsa_v1`` is our whole first version
(that read and score, gaussian entries, cross terms, normalised MSE at 0.1, learnt scale);
``gtgm_reports`` trains GTGM on the paired reports instead of generated text.

Beside the AUROCs, the table gives what tells whether the bank bridges, measured on the valid cases paired
with the text each run trained on (summaries, reports or generated text): the modality gap before and
after the bank, the centroid cosine, the mean paired cosine, the fraction of bank entries both modalities
pick and the attention entropy (:mod:`medvl3d.eval.alignment`). ``--ceiling`` adds the supervised
ceiling per group (``benchmarks/supervised_ceiling.py``) on the same data.

The abnormality groups are selectable: ``--groups learnable`` keeps findings that a supervised classifier
learns at 32^3 (cardiomegaly, pleural effusion, emphysema) at <= 2% of the training cases and holds
pericardial effusion out of training, where the default groups (pericardial effusion, hiatal hernia,
consolidation underrepresented) have a supervised ceiling of 0.30-0.59 and cannot show a gain;
``--underrepresented`` / ``--unseen`` name any CT-RATE labels.

    python benchmarks/pretrain_diagnosis.py                     # defaults: ~50 min per 4 rows on 2 cores
    python benchmarks/pretrain_diagnosis.py --steps 60 --seeds 0   # a quick look
    python benchmarks/pretrain_diagnosis.py --groups learnable --ceiling --out runs/bench_learnable
    python benchmarks/pretrain_diagnosis.py --evaluate-only --prompts configs/prompts/ct_clip.yaml

Every run folder, each evaluation JSON and ``results.json`` are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from medvl3d.atomic import atomic_write_json
from medvl3d.train.tasks.vl import first_version_overrides

REPO = Path(__file__).resolve().parents[1]
# Row name -> (config under configs/, extra overrides).
METHODS = {
    "clip": ("clip_synth_tiny.yaml", []),
    "clip_summary": ("clip_synth_tiny.yaml", ["data.text_source=summary"]),
    "brgsa": ("brgsa_synth_tiny.yaml", []),
    "brgsa_cosine_read": ("brgsa_synth_tiny.yaml", ["model.overrides.bank_read=cosine_tau"]),
    # Our first BrgSA, whole: bank read, entries, score and loss.
    "brgsa_v1": ("brgsa_synth_tiny.yaml", first_version_overrides("brgsa")),
    "gtgm": ("gtgm_synth_tiny.yaml", []),
    "gtgm_reports": ("gtgm_synth_tiny.yaml", ["data.text_source=report"]),
}
# Rows that only score differently: row name -> (the row whose checkpoints they score, model config fields).
# `bank_score` is read by `VLModel.score` alone, never by the loss, so retraining would repeat the same run.
RESCORED = {"brgsa_both_score": ("brgsa", {"bank_score": "both_recon"})}
ALL_METHODS = [*METHODS, *RESCORED]
DEFAULT_METHODS = ["clip", "clip_summary", "brgsa", "gtgm"]
# --groups presets: (underrepresented, unseen); None = the generator's defaults.
GROUP_PRESETS: dict[str, tuple[list[str] | None, list[str] | None]] = {
    "default": (None, None),
    "learnable": (["Cardiomegaly", "Pleural effusion", "Emphysema"], ["Pericardial effusion"]),
}
COLUMNS = (
    ("seen", "AUROC seen"),
    ("underrepresented", "AUROC underrepresented"),
    ("unseen", "AUROC unseen"),
    ("macro", "AUROC all"),
    ("gap_before", "gap (reports)"),
    ("gap_after", "gap after bank (reports)"),
)
# Alignment on the text each run trained on (medvl3d.eval.alignment).
ALIGN_COLUMNS = (
    ("gap", "gap"),
    ("gap_rec", "gap after bank"),
    ("centroid_cos", "centroid cos"),
    ("paired_cos", "paired cos"),
    ("paired_cos_image_rec", "paired cos (v_rec, t)"),
    ("bank_shared", "entries shared"),
    ("bank_overlap", "attention overlap"),
    ("bank_entropy_image", "entropy image"),
    ("bank_entropy_text", "entropy text"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_pretrain_diagnosis", help="output folder")
    p.add_argument(
        "--data", default=None, help="SynthCT-VL folder (default: OUT/synthct; generated if absent)"
    )
    p.add_argument("--n-train", type=int, default=600)
    p.add_argument("--n-test", type=int, default=150)
    p.add_argument("--size", type=int, default=32, help="cubic volume size (must match the tiny configs)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=400, help="optimiser steps per run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=ALL_METHODS)
    p.add_argument(
        "--groups",
        default="default",
        choices=list(GROUP_PRESETS),
        help="abnormality groups of the generated data (see the module docstring)",
    )
    p.add_argument("--underrepresented", default=None, help="comma-separated labels at <= 2%% in train")
    p.add_argument("--unseen", default=None, help="comma-separated labels absent from train")
    p.add_argument("--ceiling", action="store_true", help="add the supervised ceiling per group")
    p.add_argument("--ceiling-steps", type=int, default=800, help="training steps of the ceiling")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per evaluation")
    p.add_argument("--workers", type=int, default=2, help="processes for data generation")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra config overrides")
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-evaluate the run folders already under --out instead of training (e.g. with --prompts)",
    )
    p.add_argument("--prompts", default=None, help="prompt YAML to score with instead of each checkpoint's")
    p.add_argument(
        "--collect",
        action="store_true",
        help="only assemble the tables from the per-run results already under --out (e.g. after several "
        "processes each trained some --methods into the same --out)",
    )
    return p.parse_args(argv)


def label_groups(args: argparse.Namespace) -> tuple[list[str] | None, list[str] | None]:
    """(underrepresented, unseen) labels: the preset of ``--groups``, each replaced by its explicit flag."""
    under, unseen = GROUP_PRESETS[args.groups]
    if args.underrepresented is not None:
        under = [n.strip() for n in args.underrepresented.split(",") if n.strip()]
    if args.unseen is not None:
        unseen = [n.strip() for n in args.unseen.split(",") if n.strip()]
    return under, unseen


def ensure_data(args: argparse.Namespace, out: Path) -> Path:
    """Generate SynthCT-VL once (reused when its splits.json exists and has the requested groups)."""
    from medvl3d.data.synth import generate

    under, unseen = label_groups(args)
    custom = under is not None or unseen is not None
    data = Path(args.data) if args.data else out / ("synthct" if not custom else f"synthct-{args.groups}")
    if (data / "splits.json").is_file():
        groups = json.loads((data / "splits.json").read_text(encoding="utf-8"))["abnormalities"]
        for name, want in (("underrepresented", under), ("unseen", unseen)):
            if want is not None and sorted(groups.get(name, [])) != sorted(want):
                raise SystemExit(
                    f"{data} holds {name} = {groups.get(name)}, not the requested {want}; "
                    "pass another --data or --out"
                )
        return data
    # The tiny configs expect volumes on their 32^3 model grid; keep the default field of view.
    s = args.size
    spacing = (320.0 / s, 352.0 / s, 352.0 / s)
    t0 = time.time()
    generate(
        data,
        n_train=args.n_train,
        n_test=args.n_test,
        size=(s, s, s),
        spacing=spacing,
        seed=args.data_seed,
        workers=args.workers,
        underrepresented=under,
        unseen_abnormalities=unseen,
    )
    print(f"generated SynthCT-VL in {time.time() - t0:.0f} s -> {data}", file=sys.stderr)
    return data


def alignment(run_dir: Path, data: Path, predictor) -> dict[str, float]:
    """`medvl3d.eval.alignment` of a trained run on the valid split, with the text it trained on."""
    from medvl3d.config import load_config
    from medvl3d.data.datasets import open_split
    from medvl3d.eval.alignment import alignment_report, training_texts

    cfg = load_config(run_dir / "config.yaml")
    valid = open_split(data, "valid")
    samples = [valid[i] for i in range(len(valid))]
    generate = None
    if cfg.data.text_source in ("generated", "auto"):
        from medvl3d.text.generator import build_text_generator

        generate = build_text_generator(cfg.data.generator).generate
    texts = training_texts(samples, cfg.data.text_source, cfg.data.summariser, generate)
    keep = [i for i, t in enumerate(texts) if t]
    emb = predictor.encode_images([predictor.preprocess(samples[i]) for i in keep], 16)
    return alignment_report(predictor.model, emb, [texts[i] for i in keep])


def _suffix(args: argparse.Namespace) -> str:
    """Output-name suffix: a re-evaluation never overwrites the training run's own results."""
    if not args.evaluate_only:
        return ""
    return "_rescored" if args.prompts is None else f"_rescored_{Path(args.prompts).stem}"


def _result_path(out: Path, method: str, seed: int, args: argparse.Namespace) -> Path:
    return out / f"{method}_seed{seed}" / f"bench_result{_suffix(args)}.json"


def run_one(method: str, seed: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    """Train one method/seed (or rescore the run it shares, `RESCORED`) and evaluate it; returns the
    table's numbers, also written to the run folder's ``bench_result.json``."""
    if method in RESCORED:
        base, fields = RESCORED[method]
        run_dir = out / f"{base}_seed{seed}"
        if not (run_dir / "checkpoints").is_dir():
            raise SystemExit(f"{method} scores the checkpoints of {run_dir}: train {base} first")
        return _evaluate(method, seed, run_dir, out / f"{method}_seed{seed}", data, args, fields)
    from medvl3d.train import train

    run_dir = out / f"{method}_seed{seed}"
    config, extra = METHODS[method]
    overrides = [
        *extra,
        f"data.root={data}",
        f"data.batch_size={args.batch_size}",
        f"output={run_dir}",
        f"train.seed={seed}",
        f"train.steps={args.steps}",
        f"train.ckpt_every={args.steps}",
        *args.overrides,
    ]
    t0 = time.time()
    t_train = None
    if args.evaluate_only:
        if not (run_dir / "checkpoints").is_dir():
            raise SystemExit(f"--evaluate-only: {run_dir} has no checkpoints (train it first)")
    else:
        train(REPO / "configs" / config, overrides)
        t_train = time.time() - t0
    return _evaluate(method, seed, run_dir, run_dir, data, args, t_train=t_train)


def _evaluate(
    method: str,
    seed: int,
    run_dir: Path,
    dest: Path,
    data: Path,
    args: argparse.Namespace,
    fields: dict | None = None,
    t_train: float | None = None,
) -> dict:
    """Zero-shot diagnosis and alignment of the checkpoints in ``run_dir`` (with model config ``fields``
    replaced), written under ``dest``; ``t_train``: seconds the run trained (None: not trained here)."""
    import medvl3d
    from medvl3d.eval.diagnosis import evaluate_diagnosis

    t0 = time.time()
    predictor = medvl3d.load(run_dir, device="cpu")
    for name, value in (fields or {}).items():
        setattr(predictor.model.config, name, value)
    report = evaluate_diagnosis(
        predictor,
        data,
        split="valid",
        bootstrap=args.bootstrap,
        seed=seed,
        progress=False,
        prompts=args.prompts,
    )
    dest.mkdir(parents=True, exist_ok=True)
    report.to_json(dest / f"diagnosis{_suffix(args)}.json")
    res = {
        "method": method,
        "seed": seed,
        "macro": report.macro["auroc"],
        **{g: report.groups.get(g, {}).get("auroc") for g in ("seen", "underrepresented", "unseen")},
        "gap_before": report.modality_gap.get("before_bank"),
        "gap_after": report.modality_gap.get("after_bank"),
        "alignment": alignment(run_dir, data, predictor),
        "per_label": {name: m.auroc for name, m in report.per_label.items() if m.auroc is not None},
        "train_s": t_train,
        "total_s": (t_train or 0.0) + time.time() - t0,
    }
    print(
        f"{method} seed {seed}: macro AUROC {res['macro']:.3f}, "
        + ("" if t_train is None else f"train {t_train:.0f} s, ")
        + f"total {res['total_s']:.0f} s",
        file=sys.stderr,
    )
    # Atomic: `--collect` in another process may read it at any time.
    atomic_write_json(dest / f"bench_result{_suffix(args)}.json", res, indent=2)
    return res


def _mean_std(values: list[float | None]) -> str:
    v = [x for x in values if x is not None]
    if not v:
        return "n/a"
    if len(v) == 1:
        return f"{v[0]:.3f}"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"


def table(results: list[dict], methods: list[str], seeds: list[int], ceiling: dict | None = None) -> str:
    """Markdown tables, mean ± std over seeds: group AUROCs and report gaps per method (with the supervised
    ceiling per group when measured), then the alignment on each run's training text."""
    head = "| method | " + " | ".join(title for _, title in COLUMNS) + " |"
    lines = [
        f"Zero-shot diagnosis on SynthCT-VL (valid split), mean ± std over seeds {seeds}",
        "",
        head,
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        lines.append(f"| {m} | " + " | ".join(_mean_std([r[key] for r in rows]) for key, _ in COLUMNS) + " |")
    if ceiling is not None:
        cells = [_mean_std([ceiling["groups"].get(key)]) for key in ("seen", "underrepresented", "unseen")]
        cells += [_mean_std([ceiling["macro"]]), "", ""]
        lines.append("| supervised ceiling | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Alignment on the valid cases paired with each run's training text",
        "",
        "| method | " + " | ".join(title for _, title in ALIGN_COLUMNS) + " |",
        "|" + "---|" * (len(ALIGN_COLUMNS) + 1),
    ]
    for m in methods:
        rows = [r.get("alignment") or {} for r in results if r["method"] == m]
        lines.append(
            f"| {m} | " + " | ".join(_mean_std([r.get(key) for r in rows]) for key, _ in ALIGN_COLUMNS) + " |"
        )
    return "\n".join(lines)


def label_table(results: list[dict], methods: list[str]) -> str:
    """Per-label AUROC (mean over seeds): which findings each method learned at all."""
    labels = list(dict.fromkeys(name for r in results for name in r["per_label"]))
    lines = ["| abnormality | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 1)]
    for name in labels:
        cells = []
        for m in methods:
            values = [r["per_label"][name] for r in results if r["method"] == m and name in r["per_label"]]
            cells.append(f"{statistics.mean(values):.3f}" if values else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = ensure_data(args, out)
    if args.collect:
        missing = [
            p for m in args.methods for s in args.seeds if not (p := _result_path(out, m, s, args)).is_file()
        ]
        if missing:
            raise SystemExit(f"--collect: {len(missing)} runs have no result yet, e.g. {missing[0]}")
        results = [
            json.loads(_result_path(out, m, s, args).read_text(encoding="utf-8"))
            for s in args.seeds
            for m in args.methods
        ]
    else:
        results = [run_one(m, s, data, out, args) for s in args.seeds for m in args.methods]
    ceiling = None
    ceiling_file = out / "ceiling.json"
    if args.ceiling and ceiling_file.is_file():
        ceiling = json.loads(ceiling_file.read_text(encoding="utf-8"))
    elif args.ceiling:
        sys.path.insert(0, str(REPO / "benchmarks"))
        import supervised_ceiling

        ceiling = supervised_ceiling.ceiling(
            supervised_ceiling.parse_args(["--data", str(data), "--steps", str(args.ceiling_steps)])
        )
        atomic_write_json(ceiling_file, ceiling, indent=2)
    record = {"args": vars(args), "results": results, "ceiling": ceiling}
    atomic_write_json(out / f"results{_suffix(args)}.json", record, indent=2)
    print(table(results, args.methods, args.seeds, ceiling))
    print("\nPer-label AUROC, mean over seeds\n")
    print(label_table(results, args.methods))
    print(f"\n(total {time.time() - t0:.0f} s; per-run JSON under {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

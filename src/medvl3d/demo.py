"""`medvl3d demo`: the end-to-end path on the embedded SynthCT-VL data, on any CPU in a few minutes.

1. generate a small SynthCT-VL set (CT-RATE, MSD and JSONL layouts) and draw overlay previews;
2. read one generated volume back through the real loader and describe it (`medvl3d info`);
3. label the generated reports with the rule report labeller and score it against the ground truth;
4. pretrain a tiny BrgSA model (knowledge bank, summarised reports) on CPU;
5. zero-shot diagnosis of the held-out split from text prompts, with per-group AUROC and the modality gap;
6. calibrate its probabilities (isotonic, per label) on the held-out split, all but its last case;
7. fine-tune an organ segmentation model from the pretrained image encoder;
8. train a small Malenia model on patches of a second SynthCT-VL draw at 3 mm (six liver and kidney lesion
   types) and score it zero-shot on the lesion type its training data never had (Dice, NSD, detection
   recall per type);
9. write the visual report of the last held-out case (``report.html``): calibrated probabilities, the
   out-of-distribution verdict, organ masks in three views, the lesion table, provenance.
"""

from __future__ import annotations

import shutil
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # importlib.resources.abc is new in Python 3.11
    from importlib.resources.abc import Traversable

CONFIG_NAME = "brgsa_synth_tiny.yaml"
LESION_CONFIG_NAME = "malenia_synth_tiny.yaml"
# The lesion draw: 64 x 96 x 96 voxels over the default field of view (about 5 x 3.7 x 3.7 mm), resampled
# to 3 mm by the tiny Malenia config; its unseen lesion types appear in the valid split only.
LESION_GRID = {"size": (64, 96, 96), "spacing": (5.0, 3.7, 3.7)}
# The lesion draw's types: the liver and kidney types of the shipped `lesion_types.yaml` (five seen, and
# liver metastasis unseen: round, well-defined, hypodense, heterogeneous, a combination of seen values).
# Of its 19 types a demo-sized model would see each a few times in 24 volumes; of these six it sees the
# seen ones often enough to find an unseen one in a few minutes of CPU.
DEMO_LESION_TYPES = (
    "hepatocellular_carcinoma",
    "liver_cyst",
    "liver_hemangioma",
    "renal_cyst",
    "renal_cell_carcinoma",
    "liver_metastasis",
)


def demo_config(name: str = CONFIG_NAME) -> Traversable:
    """One of the demo's experiment configs, shipped inside the package so that an installed wheel finds it.

    ``configs/brgsa_synth_tiny.yaml`` at the repository root is the user-facing copy of the pretraining
    config; ``tests/test_demo.py`` fails when the two differ (simpler and sturdier than a build-time copy
    step). ``malenia_synth_tiny.yaml`` lives in the package only.
    """
    return resources.files("medvl3d") / "configs" / name


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="run the end-to-end demo on generated SynthCT-VL data")
    p.add_argument("--out", default="runs/demo", help="output folder")
    p.add_argument("--n-train", type=int, default=96, help="generated training volumes")
    p.add_argument("--n-test", type=int, default=48, help="generated held-out volumes")
    p.add_argument("--steps", type=int, default=150, help="pretraining steps")
    p.add_argument("--seg-steps", type=int, default=120, help="organ segmentation fine-tuning steps")
    p.add_argument("--lesion-steps", type=int, default=600, help="Malenia training steps")
    p.add_argument(
        "--lesion-cases",
        type=int,
        nargs=2,
        default=(24, 8),
        metavar=("TRAIN", "VALID"),
        help="generated lesion volumes (training, held-out)",
    )
    p.set_defaults(
        func=lambda args: run_demo(
            args.out,
            args.n_train,
            args.n_test,
            args.steps,
            args.seg_steps,
            lesion_steps=args.lesion_steps,
            lesion_cases=tuple(args.lesion_cases),
        )
    )


def _step(title: str) -> None:
    print(f"\n== {title}", flush=True)


def _label_generated_reports(data: Path, split: str) -> str:
    """Score the rule labeller on the generated reports of one split; returns its table."""
    from medvl3d.data.datasets.ctrate import CTRateDataset
    from medvl3d.schema import CTRATE_LABELS
    from medvl3d.text.labeller import evaluate_labeller, format_table

    records = CTRateDataset(data, split).records  # reports and labels as the training loader reads them
    texts = [r.report for r in records]
    y = np.array([[r.labels[c] for c in CTRATE_LABELS] for r in records])
    keep = [j for j in range(len(CTRATE_LABELS)) if 0 < y[:, j].sum() < len(y)]
    table = evaluate_labeller(texts, y[:, keep], labels=[CTRATE_LABELS[j] for j in keep])
    return format_table({"rule labeller": table})


def _calibrate(run: Path, data: Path) -> Path:
    """Fit isotonic calibration (and the out-of-distribution reference) on every valid case but the last,
    the one the report shows, and store it in the checkpoint; returns that last case's volume."""
    from medvl3d.data.datasets import open_split
    from medvl3d.eval.calibration import store_calibration
    from medvl3d.eval.diagnosis import evaluate_diagnosis
    from medvl3d.train.data import SubsetDataset

    valid = open_split(data, "valid")
    held = SubsetDataset(valid, list(range(len(valid) - 1)))
    report = evaluate_diagnosis(run, held, split="valid", bootstrap=0, calibrate="isotonic", progress=True)
    assert report.fitted is not None and report.calibration is not None
    report.fitted.fitted_on["data"] = str(data.resolve())
    report.fitted.fitted_on["cases"] = f"the first {len(held)} of {len(valid)} (the last is the report's)"
    where = store_calibration(run, report.fitted)
    print(report.calibration.to_markdown())
    print(f"stored in {where}")
    return Path(valid[len(valid) - 1]["meta"]["path"])


def _demo_lesion_types(path: Path) -> Path:
    """Write the `DEMO_LESION_TYPES` entries of the shipped lesion types to `path` (a lesion-type YAML)."""
    import yaml

    from medvl3d.data.synth.lesion_types import DEFAULT_LESION_TYPES

    text = resources.files("medvl3d.data.synth").joinpath(DEFAULT_LESION_TYPES).read_text(encoding="utf-8")
    doc = yaml.safe_load(text)
    doc["types"] = {name: doc["types"][name] for name in DEMO_LESION_TYPES}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def _lesions(out: Path, n_train: int, n_test: int, steps: int) -> Path:
    """Train the tiny Malenia config on a lesion draw and print its zero-shot scores; returns the run."""
    from medvl3d.data.synth import generate
    from medvl3d.eval.lesion_segmentation import evaluate_lesion_types, format_lesion_table
    from medvl3d.train.finetune import finetune

    data = out / "synthct-lesions"
    types = _demo_lesion_types(data / "lesion_types.yaml")  # kept beside the draw it made
    summary = generate(
        data,
        n_train=n_train,
        n_test=n_test,
        seed=1,
        workers=2,
        progress=True,
        lesion_types=types,
        **LESION_GRID,
    )
    print(f"{summary['n_train']} train + {summary['n_test']} valid volumes -> {data}")
    if (out / "lesions").exists():
        shutil.rmtree(out / "lesions")
    with resources.as_file(demo_config(LESION_CONFIG_NAME)) as config:
        run = finetune(
            config,
            from_scratch=True,
            data=data,
            out=out / "lesions",
            overrides=[f"train.steps={steps}", f"train.ckpt_every={steps}", "train.progress=true"],
        )
    print(f"checkpoint: {run}")
    scores = evaluate_lesion_types(run, data, "valid")
    print(format_lesion_table(scores))
    unseen = scores.get("unseen")
    if unseen is None:
        print("no unseen lesion type in this valid split (generate more held-out cases)")
    else:
        print(f"zero-shot Dice on the unseen lesion types: {unseen['dice']:.3f}")
    print(
        "\nNote: a demo-sized Malenia (a few minutes of CPU, six liver and kidney lesion types) finds\n"
        "some lesions, and the unseen type from its attributes alone; it misses most small ones. The\n"
        "benchmark on 19 types at 2 mm, with its baselines and ablations, is in the README ('Zero-shot\n"
        "lesion segmentation')."
    )
    return run


def _report(volume: Path, checkpoints: list[Path], out: Path) -> Path:
    from medvl3d.viz.report import build_report

    report = build_report(volume, checkpoints, progress=True)
    verdict = {True: "out of distribution", False: "within the training distribution", None: "not checked"}
    print(f"{volume.name}: {verdict[report.out_of_distribution]}")
    top = (
        sorted(report.runs[0].diagnosis.items(), key=lambda kv: -kv[1])[:3]
        if report.runs[0].diagnosis
        else []
    )
    print("most likely: " + ", ".join(f"{k} {v:.2f}" for k, v in top))
    # Without matplotlib (the viz extra) the page keeps its text and tables and says how to get the images.
    return report.write(out / "report.html", out / "report.json")


def run_demo(
    out: str | Path,
    n_train: int = 96,
    n_test: int = 48,
    steps: int = 150,
    seg_steps: int = 120,
    *,
    lesion_steps: int = 600,
    lesion_cases: tuple[int, int] = (24, 8),
) -> int:
    """Run the demo into `out`; returns 0. Each step prints what it measured."""
    from medvl3d.data.io import volume_info
    from medvl3d.data.synth import generate, preview
    from medvl3d.eval.diagnosis import evaluate_diagnosis
    from medvl3d.extras import MissingExtra
    from medvl3d.train import train
    from medvl3d.train.finetune import finetune

    out = Path(out)
    data = out / "synthct"
    t_start = time.time()

    _step("1. SynthCT-VL: generating volumes, reports, label maps and lesion attributes")
    # 32^3 volumes covering the default 320 x 352 x 352 mm field of view: the tiny model's own grid.
    summary = generate(
        data,
        n_train=n_train,
        n_test=n_test,
        size=(32, 32, 32),
        spacing=(10.0, 11.0, 11.0),
        seed=0,
        workers=2,
        progress=True,
    )
    print(f"{summary['n_train']} train + {summary['n_test']} valid volumes -> {data}")
    try:
        for png in preview(data, 3, out / "preview"):
            print(f"preview: {png}")
    except MissingExtra as exc:  # plots are optional: the demo goes on without them
        print(f"previews skipped: {exc}")

    _step("2. Reading a generated volume back through the real loader")
    first = sorted((data / "valid").glob("valid_*/valid_*_a/valid_*_a_1.nii.gz"))[0]
    info = volume_info(first)
    st = info["stats"]
    print(
        f"{first.name}: shape {info['shape']}, spacing {tuple(round(s, 2) for s in info['spacing'])} mm, "
        f"{info['orientation']}, {info['modality']}, "
        f"HU {st['min']:.0f}..{st['max']:.0f} (mean {st['mean']:.0f})"
    )

    _step("3. Report labeller on the generated valid reports (rule-based, no training)")
    print(_label_generated_reports(data, "valid"))

    _step(f"4. Pretraining a tiny BrgSA model on CPU ({steps} steps)")
    overrides = [
        f"data.root={data}",
        f"train.steps={steps}",
        f"train.ckpt_every={steps}",
        "train.progress=true",
    ]
    # The demo trains from scratch every time: a run folder left by an older medvl3d (another model in the
    # config) would otherwise be resumed and refused as a mismatched checkpoint.
    if (out / "brgsa").exists():  # a failed removal must say so, not surface as a checkpoint mismatch
        shutil.rmtree(out / "brgsa")
    with resources.as_file(demo_config()) as config:  # a real file even if the package is zipped
        run = train(config, [*overrides, f"output={out / 'brgsa'}"])
    print(f"checkpoint: {run}")

    _step("5. Zero-shot diagnosis of the held-out split from text prompts")
    report = evaluate_diagnosis(run, data, split="valid", bootstrap=200, progress=True)
    print(report.to_markdown())
    report.to_json(out / "diagnosis.json")
    print(
        "\nNote: at this toy size (32^3 volumes at ~1 cm voxels, ~100 training cases, a minute of CPU)\n"
        "zero-shot AUROC is near chance for most findings. With 600 cases, cardiomegaly and pleural\n"
        "effusion are diagnosed zero-shot (README, 'Zero-shot diagnosis on SynthCT-VL'); the same\n"
        "commands run the GPU configs (configs/*_synth_gpu.yaml)."
    )

    _step("6. Calibrating the probabilities on held-out cases (isotonic, per label)")
    case = _calibrate(run, data)

    _step(f"7. Fine-tuning an organ segmentation model from the pretrained encoder ({seg_steps} steps)")
    if (out / "organs").exists():
        shutil.rmtree(out / "organs")
    organs = finetune(
        checkpoint=run,
        data=data,
        out=out / "organs",
        overrides=[f"train.steps={seg_steps}", f"train.ckpt_every={seg_steps}", "train.progress=true"],
    )
    print(f"checkpoint: {organs}")

    _step(f"8. Zero-shot lesion segmentation: a small Malenia model ({lesion_steps} steps)")
    lesions = _lesions(out, *lesion_cases, lesion_steps)

    _step("9. Visual report of a held-out case")
    page = _report(case, [run, organs, lesions], out)
    print(f"\ndemo finished in {time.time() - t_start:.0f} s; outputs under {out}")
    print(f"report: {page.resolve()}  (open it in a browser)")
    return 0

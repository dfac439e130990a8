"""From synthetic to real: an organ model trained only on SynthCT-VL, scored on real CTs.

Generates a domain-randomised SynthCT-VL set (`--variation wide`), trains an organ segmentation model on
it with `medvl3d finetune` (config `configs/seg_synth_organs.yaml`), segments the real CTs of
`shared/data/real/totalseg/` with `medvl3d segment`'s code path (Predictor -> mask on the input grid) and
scores Dice, NSD and HD95 per organ against TotalSegmentator's labels mapped to ours
(`medvl3d.data.synth.realism.TOTALSEG_MAP`). One JSON per run under `benchmarks/results/synth_to_real/`.

    python benchmarks/synth_to_real.py --out runs/synth_to_real            # ~40 min on 2 cores
    python benchmarks/synth_to_real.py --out runs/synth_to_real --score-only   # re-score the run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402

REAL = REPO.parent / "shared" / "data" / "real" / "totalseg"
RESULTS = REPO / "benchmarks" / "results" / "synth_to_real"
#: Real case -> (image, reference labels in TotalSegmentator's `total` ids on the same grid).
CASES = {
    "example_ct_sm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "dicom_series": ("dicom_series", "example_seg_dicom.nii.gz"),
}
TARGETS = {"liver": 0.85, "kidney_right": 0.75, "kidney_left": 0.75}
#: Organs that are one piece in any scan: `--largest-component` applies to these (`segment`'s option).
SINGLE_PIECE = ("liver", "spleen", "kidney_right", "kidney_left", "pancreas", "stomach", "aorta", "heart")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/synth_to_real", help="work folder (data, run)")
    p.add_argument("--config", default=str(REPO / "configs" / "seg_synth_organs.yaml"))
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=10)
    p.add_argument("--size", default="100x160x160", help="generation DxHxW (the largest field of view)")
    p.add_argument("--spacing", default="3,3,3", help="generation z,y,x mm")
    p.add_argument("--seed", type=int, default=0, help="data and training seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config overrides")
    p.add_argument("--workers", type=int, default=2, help="processes generating the data")
    p.add_argument("--score-only", action="store_true", help="score the existing run again")
    p.add_argument("--tag", default="ours", help="name of the result JSON")
    return p.parse_args(argv)


def _triple(text: str, kind: type) -> tuple:
    return tuple(kind(v) for v in text.replace("x", ",").split(","))


def reference(path: Path, class_map: dict[str, int]) -> np.ndarray:
    """TotalSegmentator labels (RAS, like `read_volume`'s image) mapped to our organ ids (0 elsewhere)."""
    from medvl3d.data.io import read_volume
    from medvl3d.data.synth.phantom import ORGAN_IDS
    from medvl3d.data.synth.realism import TOTALSEG_MAP

    ts = np.asarray(read_volume(path, modality="unknown").array)
    out = np.zeros(ts.shape, np.uint8)
    for organ, names in TOTALSEG_MAP.items():
        out[np.isin(ts, [class_map[n] for n in names if n in class_map])] = ORGAN_IDS[organ]
    return out


def score(run: Path) -> dict:
    """Per real case and organ (present in its reference): Dice, NSD at 3 mm and HD95, of the raw mask
    (`organs`) and with only the largest piece of each single-piece organ kept (`organs_largest_component`,
    `medvl3d segment --largest-component`)."""
    from medvl3d.data.synth.realism import TOTALSEG_MAP
    from medvl3d.eval.seg_metrics import segmentation_metrics
    from medvl3d.infer import Predictor

    class_map = {v: int(k) for k, v in json.loads((REAL / "ts_class_map.json").read_text())["total"].items()}
    predictor = Predictor.from_checkpoint(run, device="cpu")
    out = {}
    for case, (image, labels) in CASES.items():
        t0 = time.perf_counter()
        predictor.set_volume(REAL / image)
        result = predictor.segment()
        truth = reference(REAL / labels, class_map)
        if truth.shape != result.mask.shape:
            raise ValueError(
                f"{labels}: reference grid {truth.shape} differs from {image} {result.mask.shape}"
            )
        present = {i: n for i, n in predictor.label_names.items() if n in TOTALSEG_MAP and (truth == i).any()}
        seconds = round(time.perf_counter() - t0, 1)
        single = [n for n in SINGLE_PIECE if n in predictor.label_names.values()]
        out[case] = {"seconds": seconds}
        for key, mask in (
            ("organs", result.mask),
            ("organs_largest_component", predictor.segment(largest_component=single).mask),
        ):
            metrics = segmentation_metrics(mask, truth, result.volume.spacing, present, nsd_tolerance_mm=3.0)
            out[case][key] = {n: m.to_dict() for n, m in metrics.items()}
            dice = {n: round(m.dice, 3) for n, m in metrics.items() if m.dice is not None}
            print(f"{case} {key}: {dice}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    from medvl3d.data.synth import generate
    from medvl3d.train.finetune import finetune

    args = parse_args(argv)
    out = Path(args.out)
    data, run = out / "synthct_wide", out / "run"
    t0 = time.time()
    if not args.score_only:
        if not (data / "splits.json").is_file():
            generate(
                data,
                n_train=args.n_train,
                n_test=args.n_valid,
                size=_triple(args.size, int),
                spacing=_triple(args.spacing, float),
                seed=args.seed,
                workers=args.workers,
                variation="wide",
            )
        sets = [f"train.seed={args.seed}", f"data.cache_dir={out / 'cache'}", *args.overrides]
        finetune(args.config, data=data, out=run, overrides=sets)
    results = score(run)
    record = {
        "benchmark": "synth_to_real",
        "commit": git_commit(),
        "command": " ".join(["synth_to_real.py", *(argv if argv is not None else sys.argv[1:])]),
        "seed": args.seed,
        "config": Path(args.config).name,
        "overrides": args.overrides,
        "data": {"variation": "wide", "n_train": args.n_train, "size": args.size, "spacing": args.spacing},
        "seconds": round(time.time() - t0, 1),
        "targets": TARGETS,
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}_seed{args.seed}.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is intensity what keeps the synthetic-trained organ model from the real kidneys? An intervention.

Adds +0..+120 HU to the real CT's kidney voxels (TotalSegmentator's reference), segments each shifted copy
with the run of `synth_to_real.py`, and records kidney Dice, what the real kidney voxels are predicted as,
and how far the predicted kidney's centre lies from the real one. If the kidneys' low HU were the blocker,
Dice would rise to the liver's level once they are as bright as enhanced kidneys (+120 HU).

    python benchmarks/synth_to_real_kidney_probe.py --run runs/synth_to_real/run
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_record import git_commit  # noqa: E402
from synth_to_real import REAL, RESULTS, reference  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/synth_to_real/run", help="trained organ model (synth_to_real.py)")
    p.add_argument("--shifts", type=float, nargs="+", default=[0, 15, 30, 60, 120], help="HU added")
    args = p.parse_args(argv)

    from medvl3d.eval.seg_metrics import segmentation_metrics
    from medvl3d.infer import Predictor

    class_map = {v: int(k) for k, v in json.loads((REAL / "ts_class_map.json").read_text())["total"].items()}
    image = nib.load(str(REAL / "example_ct_sm.nii.gz"))
    ct = np.asarray(image.dataobj).astype(np.float32)
    ts = np.asarray(nib.load(str(REAL / "example_seg.nii.gz")).dataobj)
    truth = reference(REAL / "example_seg.nii.gz", class_map)  # our organ ids, same grid
    predictor = Predictor.from_checkpoint(args.run, device="cpu")
    names = predictor.label_names
    kidneys = {i: n for i, n in names.items() if n in ("kidney_right", "kidney_left")}
    in_kidney = np.isin(ts, [class_map["kidney_right"], class_map["kidney_left"]])
    spacing = np.asarray(image.header.get_zooms()[:3], float)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shift in args.shifts:
            shifted = ct.copy()
            shifted[in_kidney] += shift
            path = Path(tmp) / f"shift{shift:g}.nii.gz"
            nib.save(nib.Nifti1Image(shifted, image.affine, image.header), str(path))
            result = predictor.set_volume(path).segment()
            metrics = segmentation_metrics(result.mask, truth, result.volume.spacing, kidneys)
            row = {}
            for i, name in kidneys.items():
                real, found = truth == i, result.mask == i
                values, counts = np.unique(result.mask[real], return_counts=True)
                offset = None
                if found.any():
                    delta = np.subtract(ndimage.center_of_mass(found), ndimage.center_of_mass(real))
                    offset = float(np.linalg.norm(delta * spacing))
                row[name] = {
                    "dice": metrics[name].dice,
                    "real_predicted_as": {
                        names.get(int(v), str(v)): round(c / real.sum(), 3)
                        for v, c in zip(values, counts)
                        if c / real.sum() >= 0.03
                    },
                    "centre_offset_mm": None if offset is None else round(offset, 1),
                }
            results[f"{shift:g}"] = row
            print(f"+{shift:g} HU: " + ", ".join(f"{n} {r['dice']:.3f}" for n, r in row.items()), flush=True)
    record = {
        "benchmark": "synth_to_real_kidney_probe",
        "commit": git_commit(),
        "command": " ".join(["synth_to_real_kidney_probe.py", *(argv if argv is not None else sys.argv[1:])]),
        "run": str(args.run),
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "kidney_intensity_probe.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

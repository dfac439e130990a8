"""SynthCT-VL: procedural CT-like volumes with reports, labels, masks and lesion attributes.

`generate(out_dir, n_train=..., n_test=...)` writes the data set in the real CT-RATE, MSD and JSONL
layouts that `medvl3d.data.datasets` reads; `preview(out_dir, n, png_dir)` draws overlay PNGs.
"""

from .generator import generate, plan_cases, underrepresented_quota
from .lesion_types import LesionType, load_lesion_types
from .preview import preview

__all__ = ["generate", "preview", "load_lesion_types", "LesionType", "plan_cases", "underrepresented_quota"]

"""The examples in the docstrings run as written: `medvl3d.load`, the Predictor and the visual report,
with tiny checkpoints (`vl_checkpoint`, `seg_checkpoint`) and a real CT (`ct_path`)."""

from __future__ import annotations

import doctest
import importlib
import warnings

import pytest

MODULES = ("medvl3d", "medvl3d.infer.predictor", "medvl3d.viz.report")


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module, synth_vl_calibrated, synth_seg, real_dir):
    globs = {
        "vl_checkpoint": str(synth_vl_calibrated),
        "seg_checkpoint": str(synth_seg),
        "ct_path": str(real_dir / "totalseg" / "example_ct_sm.nii.gz"),
    }
    tests = [t for t in doctest.DocTestFinder().find(importlib.import_module(module)) if t.examples]
    assert tests, f"{module} has no docstring examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the real CT is out of the tiny model's distribution: it says so
        for test in tests:
            test.globs.update(globs)
            runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 3

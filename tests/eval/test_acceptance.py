"""Acceptance: pretrain a `test_*` model on a small SynthCT-VL split; the loss falls and zero-shot
diagnosis AUROC on held-out cases beats chance by a clear margin.

Slow (generation + a few hundred CPU steps, ~3 min on a quiet 2-core machine): `make test-slow`.

Known failure (xfail, measured 2026-11-23): at this size (test_vit_clip from scratch on 32^3 volumes at
~11 mm, 128-512 cases, 300-800 steps) the model fits its training pairs (loss 2.77 -> ~1.6; finding-name
similarity AUROC 0.72 on the training cases) but does not generalise: held-out macro AUROC stays at
chance (0.42-0.52). The zero-shot half is kept as an expected failure so that the day it passes is seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

N_TRAIN, N_TEST, STEPS = 128, 64, 300
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    synth = pytest.importorskip("medvl3d.data.synth")
    from medvl3d.train import train

    root = tmp_path_factory.mktemp("synthct")
    synth.generate(
        root,
        n_train=N_TRAIN,
        n_test=N_TEST,
        size=(32, 32, 32),
        spacing=(10.0, 11.0, 11.0),
        seed=0,
        progress=False,
    )
    overrides = [
        f"data.root={root}",
        "data.text_source=summary",
        "model.overrides.text={name: test-tiny}",
        # The tiny text encoder is a bag of words: a prompt pair that differs only by the negation.
        "prompts={positive: ['{} is present.'], negative: ['{} is not present.']}",
        "optim.lr=3e-3",
        f"train.steps={STEPS}",
        "train.log_every=10",
        f"train.ckpt_every={STEPS}",
        "train.progress=false",
        f"output={tmp_path_factory.mktemp('run')}",
    ]
    return root, train(CONFIGS / "clip_synth_tiny.yaml", overrides)


def test_pretraining_loss_falls(pretrained):
    _, run = pretrained
    losses = [
        json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, f"loss did not fall: {first:.3f} -> {last:.3f}"


@pytest.mark.xfail(
    strict=True, reason="tiny CPU model does not generalise to held-out SynthCT-VL yet (see module doc)"
)
def test_zero_shot_beats_chance_on_held_out_cases(pretrained):
    from medvl3d.eval.diagnosis import evaluate_diagnosis

    root, run = pretrained
    report = evaluate_diagnosis(run, root, split="valid", bootstrap=500, progress=False)
    seen = report.groups["seen"]
    assert seen["auroc"] > 0.6, report.to_markdown()
    assert seen["ci"]["auroc"][0] > 0.5, report.to_markdown()  # the 95% interval excludes chance

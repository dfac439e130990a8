"""Optional extras: a missing one is a one-line message naming it, and the demo goes on without plots."""

from __future__ import annotations

import sys

import pytest

from medvl3d.cli import main
from medvl3d.extras import MissingExtra, require


def test_a_missing_extra_names_what_to_install(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingExtra, match=r"previews needs matplotlib, .*pip install 'medvl3d\[viz\]'"):
        require("matplotlib", "viz", "previews")
    from medvl3d.data.synth import preview

    with pytest.raises(MissingExtra, match=r"medvl3d\[viz\]"):
        preview(tmp_path, 1)
    args = ["synth", "--out", str(tmp_path / "s"), "--n-train", "1", "--n-test", "0", "--size", "16x16x16"]
    assert main([*args, "--preview", "1", "--no-progress", "--workers", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        "medvl3d synth: error: SynthCT-VL previews needs matplotlib, which is not installed: "
        "pip install 'medvl3d[viz]'"
    ]

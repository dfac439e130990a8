"""The README's commands work as written.

Every ``medvl3d`` command line in a ``bash`` block (also after ``torchrun ... -m medvl3d.cli``) parses
with the real CLI, and ``train`` / ``finetune`` overrides are checked against the config classes; the
configs, benchmark scripts and make targets it names exist; every ``python`` block compiles and imports
only names that exist. The short blocks, marked ``<!-- readme-test: run -->`` in the README, run in a
fresh folder as a new user would run them: synthesize, train, calibrate, report.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from medvl3d.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MARK = "<!-- readme-test: run -->"
RUN_TIMEOUT_S = 600


def blocks() -> list[tuple[str, str, bool]]:
    """``(language, code, marked to run)`` of each fenced block of the README."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"(<!-- readme-test: run -->\n)?```(\w*)\n(.*?)```", text, re.S)
    return [(lang, code, bool(mark)) for mark, lang, code in found]


def shell_commands() -> list[list[str]]:
    """Each command of the bash blocks, continuation lines joined and comments dropped."""
    out = []
    for lang, code, _ in blocks():
        if lang != "bash":
            continue
        for line in code.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(words)
    return out


def _cli_args(words: list[str]) -> list[str] | None:
    """The arguments given to the medvl3d CLI by a command line, or None if it does not run medvl3d."""
    if words[0] == "medvl3d":
        return words[1:]
    if words[0] == "torchrun" and "medvl3d.cli" in words:
        return words[words.index("medvl3d.cli") + 1 :]
    return None


def test_the_readme_has_commands_to_check():
    commands = [w for w in shell_commands() if _cli_args(w) is not None]
    assert len(commands) >= 20
    assert sum(mark for lang, _, mark in blocks() if lang == "bash") >= 1
    assert sum(mark for lang, _, mark in blocks() if lang == "python") >= 1


def test_every_medvl3d_command_parses_and_its_overrides_are_valid(capsys):
    from medvl3d.config import load_config

    parser = build_parser()
    for words in shell_commands():
        args = _cli_args(words)
        if args is None:
            continue
        try:
            ns = parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"README command does not parse: {shlex.join(words)}\n{capsys.readouterr().err}")
        if ns.command == "train":
            assert (REPO / ns.config).is_file(), shlex.join(words)
            load_config(REPO / ns.config, ns.overrides or [])  # unknown keys or bad values raise


def test_files_scripts_and_targets_named_by_commands_exist():
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for words in shell_commands():
        if words[0] == "make":
            for target in words[1:]:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"no make target {target}"
        if words[0] == "python" and words[1].endswith(".py"):
            assert (REPO / words[1]).is_file(), shlex.join(words)
        for word in words:
            if word.startswith("configs/") and word.endswith(".yaml"):
                assert (REPO / word).is_file(), f"{word} (in {shlex.join(words)})"


def test_python_blocks_compile_and_import_what_exists():
    for lang, code, _ in blocks():
        if lang != "python":
            continue
        tree = ast.parse(code)  # a syntax error fails here
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medvl3d"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name) or importlib.util.find_spec(
                        f"{node.module}.{alias.name}"
                    ), f"README imports {alias.name} from {node.module}, which has no such name"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("medvl3d"):
                        importlib.import_module(alias.name)


def test_the_short_readme_blocks_run_as_written(tmp_path):
    (tmp_path / "configs").symlink_to(REPO / "configs")  # a fresh clone's folder, without its outputs
    bindir = str(Path(sys.executable).parent)  # where `medvl3d` is installed beside this python
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "MPLBACKEND": "Agg"}
    ran = 0
    for lang, code, marked in blocks():
        if not marked:
            continue
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(  # progress bars are UTF-8 whatever the locale of the test run
            argv, cwd=tmp_path, env=env, capture_output=True, encoding="utf-8", errors="replace",
            timeout=RUN_TIMEOUT_S,
        )  # fmt: skip
        assert done.returncode == 0, f"README {lang} block failed:\n{code}\n{done.stderr[-3000:]}"
        ran += 1
        if lang == "python":
            assert "probability" in done.stdout and "Cardiomegaly" in done.stdout
    assert ran >= 2

    # What the two-minute try promises: a calibrated checkpoint, an evaluation page, a report.
    config = json.loads(next((tmp_path / "runs/try/checkpoints").glob("step-*/config.json")).read_text())
    assert config["calibration"]["method"] == "isotonic"
    assert "ROC curves" in (tmp_path / "runs/try/eval.html").read_text(encoding="utf-8")
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "Diagnosis: cpu_resenc_clip" in page
    assert 'src="data:image/png;base64,' in page

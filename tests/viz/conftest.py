"""Headless Chromium for the report tests: found on PATH, else installed (Debian's `chromium`), else the
tests that need it skip, saying why."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from medvl3d.viz.browser import find_chromium

INSTALL_TIMEOUT_S = 300  # per apt-get call: a hung mirror must not eat the suite's 10 minutes


def _install_chromium() -> str:
    """Install Debian's chromium with apt-get; returns why not when it cannot be done here."""
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    if os.geteuid() != 0:
        return "apt-get needs root (run the tests as root or install chromium first)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]
    for attempt in (install, ["apt-get", "update"], install):  # update only if the first install fails
        try:
            done = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{' '.join(attempt)} failed: {exc}"
        if attempt is install and done.returncode == 0:
            return ""
        if attempt is not install and done.returncode != 0:
            return f"apt-get update failed: {done.stderr.strip().splitlines()[-1:]}"
    return f"apt-get install chromium failed: {done.stderr.strip().splitlines()[-1:]}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The path of a headless-capable Chromium, installing Debian's package when it is missing."""
    path = find_chromium()
    if path is None:
        why = _install_chromium()
        path = find_chromium()
        if path is None:
            pytest.skip(f"headless Chromium is not installed and cannot be installed here: {why}")
    return path

"""A report opened in headless Chromium: it loads without console errors and every image is visible and
not blank; the same check catches a page that is broken on purpose."""

from __future__ import annotations

import io

import numpy as np
import pytest

from medvl3d.viz.browser import inspect_page


def _pixels(png: bytes) -> np.ndarray:
    matplotlib = pytest.importorskip("matplotlib")
    return matplotlib.image.imread(io.BytesIO(png), format="png")


def test_report_renders_in_headless_chromium(chromium, synth_small, synth_vl_calibrated, synth_seg, tmp_path):
    from medvl3d.viz.report import build_report

    case = sorted((synth_small / "valid").glob("valid_*/valid_*_a/valid_*_a_1.nii.gz"))[0]
    report = build_report(
        case, [synth_vl_calibrated, synth_seg], labels=["Cardiomegaly", "Emphysema"], device="cpu"
    )
    page = report.write(tmp_path / "report.html")
    seen = inspect_page(page, chromium=chromium, width=1200, height=1400)
    assert seen.console_errors == []
    assert seen.title == f"medvl3d report: {case.name}"
    assert len(seen.images) == page.read_text(encoding="utf-8").count("<img ") >= 3
    assert seen.broken_images == []
    for img in seen.images:  # drawn at a readable size, not squeezed
        assert img["width"] >= 300 and img["height"] >= 100 and img["spread"] > 50
    assert "Diagnosis: test_resenc_clip" in seen.text and "Cardiomegaly" in seen.text

    blank = tmp_path / "blank.html"
    blank.write_text(
        "<!DOCTYPE html><html><head><title>blank</title></head><body></body></html>", encoding="utf-8"
    )
    empty = _pixels(inspect_page(blank, chromium=chromium, width=1200, height=1400).screenshot)
    shot = _pixels(seen.screenshot)
    assert shot.shape[:2] == empty.shape[:2] == (1400, 1200)
    assert np.ptp(empty[..., :3]) == 0  # one flat colour
    assert np.abs(shot[..., :3] - empty[..., :3]).mean() > 0.02  # the report draws a good part of the window


def test_the_check_catches_a_broken_page(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>broken</title></head><body>"
        '<img src="data:image/png;base64,AAAA" alt="corrupt">'
        '<img src="missing.png" alt="missing">'
        "<script>console.error('boom'); undefinedFunction();</script></body></html>",
        encoding="utf-8",
    )
    seen = inspect_page(page, chromium=chromium, screenshot=False)
    assert seen.screenshot is None
    assert any("boom" in e for e in seen.console_errors)
    assert any("undefinedFunction" in e for e in seen.console_errors)
    assert any("missing.png" in e or "ERR_FILE_NOT_FOUND" in e for e in seen.console_errors)
    assert [i["alt"] for i in seen.broken_images] == ["corrupt", "missing"]


def test_screenshot_command(chromium, tmp_path, capsys, monkeypatch):
    from medvl3d.viz.browser import main

    page = tmp_path / "page.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>t</title></head><body><h1>hello</h1></body></html>",
        encoding="utf-8",
    )
    monkeypatch.setattr("medvl3d.viz.browser.find_chromium", lambda: chromium)
    shot = tmp_path / "docs" / "shot.png"
    assert main([str(page), "-o", str(shot), "--width", "400", "--height", "300"]) == 0
    assert _pixels(shot.read_bytes()).shape[:2] == (300, 400)
    assert "0 images (0 broken), 0 console errors" in capsys.readouterr().out
    assert main([str(page), "-o", str(page)]) == 2  # never over its input
    assert "refusing to write over the input" in capsys.readouterr().err
    assert page.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")

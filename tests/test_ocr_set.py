"""The bench's OCR set: screenshots rendered by Debian's headless Chromium list as ground truth
only the words on screen (bench/ocr_screens.py)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
CHROMIUM = "/usr/bin/chromium"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium)",
    ),
]


@pytest.fixture()
def screens():
    sys.path.insert(0, str(BENCH))
    try:
        import ocr_screens

        yield ocr_screens
    finally:
        sys.path.remove(str(BENCH))


def test_screenshot_truth_is_the_words_on_screen(screens, tmp_path: Path) -> None:
    """Clipped by overflow (with and without an ellipsis), below the viewport, hidden, or not
    displayed: none of those words count; the rest do, in order; the PNG is the viewport's
    size times the device scale."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    page = """<!doctype html><html><body style="margin:0;font:16px 'DejaVu Sans'">
    <p><span class="w">shown</span> <span class="w">also</span></p>
    <div style="width:120px;overflow:hidden;white-space:nowrap">
      <span class="w">fits</span> <span class="w">clippedword</span></div>
    <div style="width:100px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis">
      <span class="w">dots</span> <span class="w">eaten</span> <span class="w">away</span></div>
    <div style="width:150px;overflow:hidden;white-space:nowrap;text-overflow:ellipsis">
      <span class="w">whole</span></div>
    <span class="w" style="visibility:hidden">hidden</span>
    <div style="display:none"><span class="w">none</span></div>
    <div style="opacity:0"><span class="w">clear</span></div>
    <div style="position:absolute;top:400px"><span class="w">below</span></div>
    </body></html>"""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=screens.CHROMIUM_ARGS)
        try:
            shown = screens.shoot(browser, page, (320, 200, 2), tmp_path / "page.png")
            truth = screens.render_pages(tmp_path / "set", 2, seed=3, browser=browser)
        finally:
            browser.close()
    assert shown == ["shown", "also", "fits", "dots", "whole"], shown
    assert Image.open(tmp_path / "page.png").size == (640, 400)
    # A generated table page: its first row's long name runs out of its cell, so the end of
    # it is left out; every other word of the page is kept, in order.
    table = tmp_path / "set" / "screen_0001.png"
    words = re.findall(r'<span class="w">([^<]*)</span>', table.with_suffix(".html").read_text())
    kept = iter(words)
    assert all(word in kept for word in truth[table])  # a subsequence of the page's words
    assert 0 < len(words) - len(truth[table]) <= 10

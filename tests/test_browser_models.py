"""The page's model picker in Debian's headless Chromium: pick another indexed model, see
results from its rows and its name on the result line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import TINY_WIDE_MODEL, index_images, make_images
from test_browser import CHROMIUM, CHROMIUM_ARGS, pytestmark  # noqa: F401 (the marks apply)

from clipdb.db import Database
from clipdb.serve import create_app, running


def test_picking_a_model_searches_its_rows(database: Database, tiny_encoder: Any, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    from clipdb.encoders import load_encoder

    wide = load_encoder(TINY_WIDE_MODEL, "none", device="cpu", precision="fp32", backend="torch")
    index_images(database, tiny_encoder, make_images(tmp_path / "tiny", 4, seed=1))
    index_images(database, wide, make_images(tmp_path / "wide", 3, seed=2, prefix="wide"))

    with (
        running(create_app(database, encoder=tiny_encoder, device="cpu", backend="torch")) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            picker = page.locator("#model-select")
            expect(picker).to_be_visible()
            expect(picker.locator("option")).to_have_count(2)
            expect(picker).to_have_value("clipdb-tiny/none")  # the served one, preselected

            page.fill("#text-input", "a photo")
            page.click("#search-button")
            expect(page.locator("#status")).to_contain_text("model clipdb-tiny/none")
            expect(page.locator("#results .result")).to_have_count(4)

            picker.select_option(f"{TINY_WIDE_MODEL}/none")  # the search on screen runs again
            expect(page.locator("#status")).to_contain_text(f"model {TINY_WIDE_MODEL}/none")
            cards = page.locator("#results .result")
            expect(cards).to_have_count(3)
            for card in cards.all():
                assert " wide_" in card.locator(".filename").inner_text()
        finally:
            browser.close()

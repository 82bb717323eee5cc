"""End to end in Debian's headless Chromium: upload an image, see thumbnails, click for more."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import index_images, make_images

from clipdb.db import Database
from clipdb.serve import create_app, running

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; "
        "scripts/test.sh installs it)",
    ),
]


def test_upload_then_more_like_this(database: Database, tiny_encoder: Any, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    pictures = make_images(tmp_path / "pictures", 12, size=(160, 120), seed=7)
    ids = index_images(database, tiny_encoder, pictures)
    query = pictures[4]

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(url)
            expect(page.locator("#model")).to_contain_text("clipdb-tiny")

            page.fill("#k-input", "6")
            page.set_input_files("#image-input", str(query))
            cards = page.locator("#results .result")
            expect(cards).to_have_count(6)
            expect(page.locator("#status")).to_contain_text("6 results by image")
            assert cards.first.get_attribute("data-image-id") == str(ids[str(query.resolve())])
            page.wait_for_function(
                "[...document.querySelectorAll('#results .result img')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
            first_ids = [card.get_attribute("data-image-id") for card in cards.all()]

            clicked = cards.nth(2)
            clicked_id = clicked.get_attribute("data-image-id")
            clicked_name = clicked.locator(".filename").inner_text().split(" ", 1)[1]
            clicked.click()
            expect(page.locator("#status")).to_contain_text(f"like {clicked_name}")
            expect(cards.first).to_have_attribute("data-image-id", clicked_id or "")
            expect(cards).to_have_count(6)
            page.wait_for_function(
                "[...document.querySelectorAll('#results .result img')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
            second_ids = [card.get_attribute("data-image-id") for card in cards.all()]
            assert second_ids != first_ids

            link = cards.first.locator("a.open")
            assert link.get_attribute("href") == f"/api/images/{clicked_id}/file"

            screenshot = tmp_path / "search-page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()

    # Everything the page needed came from the server itself (works offline, no CDN).
    outside = [u for u in requested if not u.startswith((url, "blob:", "data:"))]
    assert outside == []


def test_page_fits_a_390_px_phone(database: Database, tiny_encoder: Any, tmp_path: Path):
    from playwright.sync_api import sync_playwright

    index_images(database, tiny_encoder, make_images(tmp_path / "p", 4))
    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})
            page.goto(url)
            page.fill("#text-input", "a red circle")
            page.click("#search-button")
            page.wait_for_selector("#results .result")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            for selector in ("#search-button", "#clear-button", "#text-input", "#k-input"):
                box = page.locator(selector).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
                    selector,
                    box,
                )
            page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        finally:
            browser.close()


def test_api_docs_render_offline(database: Database, tiny_encoder: Any):
    """/docs shows the API with every asset from the server itself (no CDN)."""
    from playwright.sync_api import expect, sync_playwright

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{url}/docs")
            expect(page.locator(".opblock-summary-path").first).to_be_visible(timeout=20_000)
            expect(page.get_by_text("/api/search").first).to_be_visible()
        finally:
            browser.close()
    assert [u for u in requested if not u.startswith((url, "data:", "blob:"))] == []

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

    [wide] = make_images(tmp_path / "wide", 1, size=(640, 200), seed=3)
    ids = index_images(database, tiny_encoder, [*make_images(tmp_path / "p", 4), wide])
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
            # More like the wide picture: its thumbnail, in the drop zone, fits inside it whole.
            page.click(f"#results .result[data-image-id='{ids[str(wide.resolve())]}']")
            page.wait_for_function(
                "() => { const p = document.getElementById('query-preview');"
                " return !p.hidden && p.complete && p.naturalWidth > 0; }"
            )
            zone = page.locator("#drop-zone").bounding_box()
            assert zone is not None
            for selector in ("#query-preview", "#drop-hint"):
                box = page.locator(selector).bounding_box()
                assert box is not None
                assert (
                    zone["x"] <= box["x"] and box["x"] + box["width"] <= zone["x"] + zone["width"]
                ), (selector, box, zone)
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            for selector in (
                "#search-button",
                "#clear-button",
                "#text-input",
                "#k-input",
                "#after-input",
                "#before-input",
                "#sort-select",
                "#dupes-button",
            ):
                box = page.locator(selector).bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (
                    selector,
                    box,
                )
            page.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        finally:
            browser.close()


def test_cards_show_folders_and_the_page_its_weights(
    database: Database, tiny_encoder: Any, tmp_path: Path
):
    """Two ihc.png from two folders are told apart by their folder, in the results and in the
    duplicates view; random weights show a badge; the favicon is served (no 404 at all)."""
    from playwright.sync_api import expect, sync_playwright

    [picture] = make_images(tmp_path / "src", 1, size=(160, 120), fmt="PNG", seed=2)
    copies = []
    for folder in ("holiday", "work"):
        (tmp_path / "pictures" / folder).mkdir(parents=True)
        copies.append(tmp_path / "pictures" / folder / "ihc.png")
        copies[-1].write_bytes(picture.read_bytes())
    others = make_images(tmp_path / "pictures" / "other", 3, seed=4)
    index_images(database, tiny_encoder, [*copies, *others])

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("response", lambda r: r.status >= 400 and problems.append(r.url))
            page.goto(url)
            expect(page.locator("#weights-badge")).to_be_visible()
            expect(page.locator("#weights-badge")).to_have_text(
                "test weights: results are meaningless"
            )
            expect(page.locator("#model")).to_contain_text("clipdb-tiny")
            assert "(none)" not in page.locator("#model").inner_text()
            assert page.locator("label:has(#k-input)").inner_text().strip() == "results"

            page.fill("#text-input", "a photo")
            page.click("#search-button")
            expect(page.locator("#results .result")).to_have_count(5)
            same_name = page.locator("#results .result:has(.filename:text-matches('ihc.png$'))")
            expect(same_name).to_have_count(2)
            shown = {
                card.locator(".folder").get_attribute("title"): card.locator(".folder").inner_text()
                for card in same_name.all()
            }
            assert set(shown) == {str(path.resolve()) for path in copies}  # full path as title
            for path, folder in shown.items():
                # Shortened from the left: the end of the folder is what tells them apart.
                assert folder.startswith("…/") and folder.endswith(
                    "/pictures/" + Path(path).parent.name
                ), folder

            page.click("#dupes-button")
            group = page.locator(".dupe-group")
            expect(group).to_have_count(1)
            kept = group.locator(".dupe.keep .folder")
            other = group.locator(".dupe:not(.keep) .folder")
            expect(kept).to_have_count(1)
            assert kept.inner_text() != other.inner_text()
            assert {kept.get_attribute("title"), other.get_attribute("title")} == set(shown)

            icon = page.locator("link[rel=icon]").get_attribute("href")
            assert icon == "/static/favicon.svg"
            for path in (icon, "/favicon.ico"):
                answer = page.request.get(url + path)
                assert answer.ok and answer.headers["content-type"] == "image/svg+xml", path
            page.reload()  # once more, to let a favicon request fail if it were to
            expect(page.locator("#weights-badge")).to_be_visible()
        finally:
            browser.close()
    assert problems == []


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


def _date_photos(directory: Path) -> dict[Path, str | None]:
    """Six pictures with an EXIF DateTimeOriginal (no time zone: naive wall clock), two without."""
    from PIL import ExifTags, Image

    dates = [
        "2021:07:04 18:30:00",
        "2018:01:15 09:00:00",
        None,
        "2019:03:05 10:00:00",
        "2023:11:30 23:10:00",
        None,
        "2020:12:31 08:00:00",
        "2019:08:20 14:45:00",
    ]
    taken: dict[Path, str | None] = {}
    for path, date in zip(
        make_images(directory, len(dates), size=(120, 90), seed=11), dates, strict=True
    ):
        with Image.open(path) as opened:
            pixels = opened.copy()
        exif = Image.Exif()
        if date is not None:
            exif.get_ifd(ExifTags.IFD.Exif)[0x9003] = date  # DateTimeOriginal
        pixels.save(path, "JPEG", exif=exif, quality=90)
        taken[path.resolve()] = date
    return taken


def test_dates_sort_and_date_range(database: Database, tiny_encoder: Any, tmp_path: Path):
    """The date under each thumbnail, 'oldest first' reorders by date, a date range filters."""
    from playwright.sync_api import expect, sync_playwright

    from clipdb.ingest import ingest

    taken = _date_photos(tmp_path / "dated")
    summary = ingest([tmp_path / "dated"], database=database, encoder=tiny_encoder, progress=False)
    assert summary.new == len(taken)
    with database.connect() as conn:
        ids = dict(conn.execute("SELECT path, id FROM clipdb.images").fetchall())
    date_of = {str(ids[str(path)]): date for path, date in taken.items()}

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="en-US")
            page.goto(url)
            cards = page.locator("#results .result")
            page.fill("#k-input", "8")
            page.fill("#text-input", "a photo")
            page.click("#search-button")
            expect(cards).to_have_count(8)

            def shown() -> list[tuple[str, str | None, str | None]]:
                """(image id, <time datetime>, shown text) of each card, in page order."""
                return page.evaluate(
                    "[...document.querySelectorAll('#results .result')].map(card => {"
                    " const t = card.querySelector('time.taken');"
                    " return [card.dataset.imageId, t && t.dateTime, t && t.textContent]; })"
                )

            relevance = shown()
            for image_id, iso, text in relevance:
                date = date_of[image_id]
                if date is None:
                    assert iso is None and text is None  # nothing under an undated picture
                else:
                    assert iso is not None and iso.startswith(date[:10].replace(":", "-"))
            by_id = {image_id: text for image_id, _, text in relevance}
            [march] = [i for i, d in date_of.items() if d and d.startswith("2019:03:05")]
            # The camera's wall clock (no time zone in the EXIF), in the reader's locale.
            assert by_id[march] == "Mar 5, 2019, 10:00 AM"

            page.select_option("#sort-select", "date")  # oldest first: re-runs at once
            page.wait_for_function(  # times out unless the page gets reordered by date
                "() => { const d = [...document.querySelectorAll('#results time.taken')]"
                ".map(t => t.dateTime);"
                " return d.length === 6 && d.every((x, i) => !i || d[i - 1] <= x); }"
            )
            expect(cards).to_have_count(8)
            oldest = shown()
            dated = [iso for _, iso, _ in oldest if iso]
            assert dated == sorted(dated) and len(dated) == 6
            assert dated != [iso for _, iso, _ in relevance if iso]  # it did reorder
            assert [iso for _, iso, _ in oldest[6:]] == [None, None]  # undated last
            assert {i for i, _, _ in oldest} == {i for i, _, _ in relevance}

            page.select_option("#sort-select", "-date")
            expect(cards.first.locator("time.taken")).to_have_attribute(
                "datetime", "2023-11-30T23:10:00+00:00"
            )

            # 2019-01-01 .. 2020-12-31, both days included.
            page.fill("#after-input", "2019-01-01")
            page.fill("#before-input", "2020-12-31")
            page.locator("#before-input").dispatch_event("change")
            expect(cards).to_have_count(3)
            inside = {i for i, d in date_of.items() if d and "2019" <= d[:4] <= "2020"}
            assert {i for i, _, _ in shown()} == inside
            assert [iso[:10] for _, iso, _ in shown() if iso] == [
                "2020-12-31",
                "2019-08-20",
                "2019-03-05",
            ]

            # A backwards range is refused on the page, the results stay.
            page.fill("#after-input", "2022-01-01")
            page.locator("#after-input").dispatch_event("change")
            expect(page.locator("#status")).to_contain_text("after the")
            expect(cards).to_have_count(3)
        finally:
            browser.close()


def test_an_older_answer_arriving_last_never_replaces_the_newer(
    database: Database, tiny_encoder: Any, tmp_path: Path
):
    """Two searches in flight (a date range typed field by field): the first answer is held
    until the second has been shown, then let through; the page keeps the second's results."""
    from playwright.sync_api import Route, expect, sync_playwright

    pictures = make_images(tmp_path / "pictures", 8, size=(64, 48), seed=3)
    index_images(database, tiny_encoder, pictures)
    held: list[Route] = []

    def hold_the_first(route: Route) -> None:
        if not held:
            held.append(route)  # answered later, by the test
        else:
            route.continue_()

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            expect(page.locator("#model")).to_contain_text("clipdb-tiny")
            page.route("**/api/search", hold_the_first)
            page.fill("#text-input", "a photo")
            page.fill("#k-input", "7")
            page.click("#search-button")  # held
            expect(page.locator("#status")).to_contain_text("Searching")
            page.fill("#k-input", "2")
            page.click("#search-button")  # answered at once
            cards = page.locator("#results .result")
            expect(cards).to_have_count(2)
            expect(page.locator("#status")).to_contain_text("2 results")
            assert len(held) == 1
            with page.expect_response("**/api/search") as first:
                held[0].continue_()
            assert len(first.value.json()) == 7  # the old answer did arrive
            page.evaluate("() => new Promise(r => setTimeout(r, 0))")  # let its handler run
            expect(cards).to_have_count(2)
            expect(page.locator("#status")).to_contain_text("2 results")
        finally:
            browser.close()


def test_a_typed_text_finds_images_by_their_words_and_marks_them(
    database: Database, tiny_encoder: Any, tmp_path: Path
):
    from playwright.sync_api import expect, sync_playwright

    from clipdb.ingest import ingest

    folder = tmp_path / "pictures"
    pictures = make_images(folder, 5, size=(160, 120), seed=9)
    pictures[1].rename(folder / "invoice_KX5172.jpg")
    ingest([folder], database=database, encoder=tiny_encoder, workers=0)  # names indexed

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            expect(page.locator("#model")).to_contain_text("clipdb-tiny")
            page.fill("#k-input", "5")
            page.fill("#text-input", "KX5172")
            page.click("#search-button")
            first = page.locator("#results .result").first
            expect(first.locator(".filename")).to_contain_text("invoice_KX5172.jpg")
            expect(first.locator(".matched mark").first).to_contain_text("KX5172")
        finally:
            browser.close()


def test_a_video_hit_shows_its_frame_and_opens_at_that_second(
    database: Database, tiny_encoder: Any, tmp_path: Path
):
    import av
    from media_samples import video
    from playwright.sync_api import expect, sync_playwright
    from test_ingest import run

    from clipdb.ingest.video import sample_frames

    root = tmp_path / "lib"
    make_images(root, 2, size=(64, 64), seed=3)
    clip = video(root / "clip.mp4", 6, scenes=(4.0,))
    run([root], database, tiny_encoder)
    with av.open(str(clip)) as container:
        _, frame = list(sample_frames(container, 64))[1]
    query = tmp_path / "frame.png"
    frame.save(query)

    with (
        running(create_app(database, encoder=tiny_encoder)) as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.set_input_files("#image-input", str(query))
            card = page.locator("#results .result", has_text="clip.mp4")
            expect(card).to_have_count(1)  # one hit for the video, not one per frame
            expect(card.locator(".filename")).to_contain_text("clip.mp4 @ 00:04")
            href = card.locator("a.open").get_attribute("href") or ""
            assert href.endswith("/video#t=4")
            page.wait_for_function(
                "[...document.querySelectorAll('#results .result img')]"
                ".every(img => img.complete && img.naturalWidth > 0)"
            )
        finally:
            browser.close()

"""Screenshots for the OCR set: small HTML pages rendered by headless Chromium (Debian's).

A settings dialog, a table of items and prices, a receipt with a total and a chat list, in
made-up words from ``ocr_set``'s syllables (nothing an engine's dictionary knows), several CSS
fonts and sizes, light and dark themes, desktop and phone viewports (device scale 1 or 2). Each
page also holds text that is *not* on screen: a cell whose long text is clipped by
``overflow: hidden``, a list that runs past the bottom of the viewport, a hidden tooltip. The
ground truth is the words Chromium says are inside the screenshot and not clipped: every word
is its own ``<span class="w">`` and the page reports the ones whose box lies wholly inside the
viewport and inside every clipping ancestor.
"""

from __future__ import annotations

import html
import random
from pathlib import Path
from typing import Any

from ocr_set import word

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
FONTS = [
    "DejaVu Sans",
    "Liberation Sans",
    "DejaVu Serif",
    "Liberation Serif",
    "DejaVu Sans Mono",
    "Liberation Mono",
]
VIEWPORTS = [  # (width, height, device scale): common desktop and phone screenshot sizes
    (1280, 800, 1),
    (1366, 768, 1),
    (1440, 900, 1),
    (1280, 720, 2),
    (390, 844, 2),
]
THEMES = {
    "light": {"bg": "#ffffff", "panel": "#f3f4f6", "fg": "#1f2933", "muted": "#52606d"},
    "dark": {"bg": "#1e1f22", "panel": "#2b2d31", "fg": "#e6e6e6", "muted": "#a8adb4"},
}
ACCENTS = ["#2563eb", "#059669", "#b91c1c", "#7c3aed", "#c2410c"]
PAGES = ("settings", "table", "receipt", "chat")

# The words Chromium draws whole inside the viewport and every clipping box.
VISIBLE_JS = """() => {
  const out = [];
  const vw = window.innerWidth, vh = window.innerHeight;
  for (const span of document.querySelectorAll('span.w')) {
    const r = span.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    if (getComputedStyle(span).visibility !== 'visible') continue;
    let clip = {l: 0, t: 0, r: vw, b: vh};
    for (let el = span.parentElement; el; el = el.parentElement) {
      const s = getComputedStyle(el);
      if (s.display === 'none' || s.opacity === '0') { clip = null; break; }
      if (s.overflowX !== 'visible' || s.overflowY !== 'visible') {
        const b = el.getBoundingClientRect();
        const l = b.left + el.clientLeft, t = b.top + el.clientTop;
        // An ellipsis takes the place of the last characters that fit: a word ending
        // within its width of the edge may be cut although its layout box fits.
        const cut = s.textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth
          ? parseFloat(s.fontSize) * 1.5 : 0;
        clip = {l: Math.max(clip.l, l), t: Math.max(clip.t, t),
                r: Math.min(clip.r, l + el.clientWidth - cut),
                b: Math.min(clip.b, t + el.clientHeight)};
      }
    }
    if (clip && r.left >= clip.l - 0.5 && r.top >= clip.t - 0.5
        && r.right <= clip.r + 0.5 && r.bottom <= clip.b + 0.5) out.push(span.textContent);
  }
  return out;
}"""


def _w(text: str) -> str:
    """Each word its own span, so the page can say which ones are on screen."""
    return " ".join(f'<span class="w">{html.escape(t)}</span>' for t in text.split())


def _phrase(rng: random.Random, low: int = 1, high: int = 3) -> str:
    return " ".join(word(rng).capitalize() for _ in range(rng.randint(low, high)))


def _price(rng: random.Random) -> str:
    return f"{rng.randint(1, 240)}.{rng.randint(0, 99):02d}"


def _settings(rng: random.Random) -> str:
    rows = "".join(
        f'<div class="row"><label>{_w(_phrase(rng, 1, 2))}</label>'
        f'<div class="toggle{" on" if rng.random() < 0.5 else ""}"></div></div>'
        for _ in range(rng.randint(3, 6))
    )
    return (
        f'<div class="dialog"><h2>{_w(_phrase(rng, 1, 2))}</h2>'
        f'<p class="muted">{_w(_phrase(rng, 3, 6).lower())}</p>{rows}'
        f'<div class="buttons"><button class="plain">{_w(word(rng).capitalize())}</button>'
        f'<button class="accent">{_w(word(rng).capitalize())}</button></div>'
        f'<div class="tooltip">{_w(_phrase(rng, 2, 3))}</div></div>'
    )


def _table(rng: random.Random) -> str:
    body = "".join(
        f"<tr><td>{_w(str(rng.randint(100, 9999)))}</td>"
        # The first row's name is too long for its cell: the end is clipped, off screen.
        f'<td class="clip">{_w(_phrase(rng, 1, 2) + (" " + _phrase(rng, 8, 10)) * (n == 0))}</td>'
        f'<td class="num">{_w(str(rng.randint(1, 40)))}</td>'
        f'<td class="num">{_w(_price(rng))}</td></tr>'
        for n in range(rng.randint(4, 9))
    )
    heads = "".join(f"<th>{_w(word(rng).capitalize())}</th>" for _ in range(4))
    return f"<h2>{_w(_phrase(rng, 1, 2))}</h2><table><tr>{heads}</tr>{body}</table>"


def _receipt(rng: random.Random) -> str:
    lines = "".join(
        f'<div class="line"><span>{_w(_phrase(rng, 1, 2))}</span>'
        f"<span>{_w(_price(rng))}</span></div>"
        for _ in range(rng.randint(3, 7))
    )
    return (
        f'<div class="receipt"><h2>{_w(_phrase(rng, 1, 2).upper())}</h2>'
        f'<p class="muted">{_w(f"{rng.randint(1, 28):02d}.{rng.randint(1, 12):02d}.2026")}'
        f" {_w(f'{rng.randint(8, 21)}:{rng.randint(0, 59):02d}')}</p>{lines}"
        f'<div class="line total"><span>{_w(word(rng).upper())}</span>'
        f"<span>{_w(_price(rng))}</span></div></div>"
    )


def _chat(rng: random.Random) -> str:
    # Long enough to run past the bottom of a short viewport: the rows below are not shown.
    items = "".join(
        f'<li><div class="avatar"></div><div><b>{_w(_phrase(rng, 1, 2))}</b> '
        f'<span class="muted">{_w(f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}")}</span>'
        f"<div>{_w(_phrase(rng, 2, 6).lower())}</div></div></li>"
        for _ in range(rng.randint(6, 16))
    )
    return f'<h2>{_w(_phrase(rng, 1, 2))}</h2><ul class="chat">{items}</ul>'


def page_html(rng: random.Random, kind: str) -> str:
    theme = THEMES[rng.choice(sorted(THEMES))]
    font, size, accent = rng.choice(FONTS), rng.randint(12, 18), rng.choice(ACCENTS)
    body = {"settings": _settings, "table": _table, "receipt": _receipt, "chat": _chat}[kind](rng)
    css = f"""
    * {{ box-sizing: border-box; }}
    body {{ margin: 0; padding: 24px; background: {theme["bg"]}; color: {theme["fg"]};
           font-family: '{font}'; font-size: {size}px; }}
    h2 {{ font-size: {size + 6}px; margin: 0 0 12px; }}
    .muted {{ color: {theme["muted"]}; }}
    .dialog, .receipt {{ position: relative; max-width: 520px; background: {theme["panel"]};
           padding: 20px; border-radius: 8px; }}
    .row {{ display: flex; justify-content: space-between; padding: 8px 0; }}
    .toggle {{ width: 36px; height: 20px; border-radius: 10px; background: {theme["muted"]}; }}
    .toggle.on {{ background: {accent}; }}
    .buttons {{ display: flex; gap: 8px; justify-content: flex-end; margin-top: 12px; }}
    button {{ font: inherit; padding: 6px 14px; border-radius: 6px; border: 1px solid {accent}; }}
    button.accent {{ background: {accent}; color: #ffffff; }}
    button.plain {{ background: transparent; color: {theme["fg"]}; }}
    .tooltip {{ visibility: hidden; position: absolute; }}
    table {{ border-collapse: collapse; background: {theme["panel"]}; }}
    th, td {{ padding: 6px 14px; border-bottom: 1px solid {theme["muted"]}; text-align: left; }}
    td.num {{ text-align: right; }}
    td.clip {{ max-width: 260px; overflow: hidden; white-space: nowrap;
              text-overflow: ellipsis; }}
    .receipt {{ max-width: 340px; font-family: 'DejaVu Sans Mono'; }}
    .line {{ display: flex; justify-content: space-between; padding: 3px 0; }}
    .total {{ border-top: 2px dashed {theme["muted"]}; margin-top: 8px; padding-top: 8px;
              font-weight: bold; }}
    ul.chat {{ list-style: none; padding: 0; margin: 0; }}
    ul.chat li {{ display: flex; gap: 10px; padding: 8px 0; }}
    .avatar {{ width: 32px; height: 32px; border-radius: 16px; background: {accent};
               flex: none; }}
    """
    return f"<!doctype html><html><head><style>{css}</style></head><body>{body}</body></html>"


def render_pages(
    folder: Path, count: int, seed: int = 7, browser: Any = None
) -> dict[Path, list[str]]:
    """``count`` screenshots (PNG, and the page beside it as .html), with the words each one
    shows. ``browser``: a launched Playwright Chromium to use (else one is launched here)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                return render_pages(folder, count, seed, launched)
            finally:
                launched.close()
    truth: dict[Path, list[str]] = {}
    for n in range(count):
        kind = PAGES[n % len(PAGES)]
        viewport = VIEWPORTS[rng.randrange(len(VIEWPORTS))]
        path = folder / f"screen_{n:04d}.png"
        source = page_html(rng, kind)
        path.with_suffix(".html").write_text(source)  # to see what the truth was made from
        truth[path] = shoot(browser, source, viewport, path)
    return truth


def shoot(browser: Any, source: str, viewport: tuple[int, int, int], path: Path) -> list[str]:
    """Render ``source`` at ``viewport`` (width, height, device scale) into a PNG at ``path``;
    the words of its ``span.w``s that are wholly on screen, in document order."""
    width, height, scale = viewport
    page = browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=scale)
    try:
        page.set_content(source)
        shown: list[str] = page.evaluate(VISIBLE_JS)
        page.screenshot(path=str(path), animations="disabled")
    finally:
        page.close()
    return shown

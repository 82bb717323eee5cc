"""A labelled OCR set, generated: words rendered on photo-like and plain backgrounds.

Each image carries a few words nobody tuned to (drawn from a fixed vocabulary with a seed):
signs and captions on textured "photos" (noise, gradients, shapes), scanned-looking documents
(grey paper, serif text, slight rotation), plates (``KX 5172``-style), and accented Latin.
Several fonts, sizes, colours and angles. ``make_set(folder, count)`` writes PNGs and returns
``{path: [words]}``; a word used as a unique key appears in exactly one image.

``make_labelled`` adds two kinds and says each image's kind: screenshots of HTML pages rendered
by headless Chromium (``ocr_screens``) and Chinese (common two- to four-character words: shop
signs, menu items, places; and prices such as ``28元``) on sign and document backgrounds, in
WenQuanYi Micro Hei (Debian's ``fonts-wqy-microhei``, which only the bench needs).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONTS = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSerif-Regular.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationMono-Bold.ttf",
]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ren",
    "tus",
    "vor",
    "pel",
    "dra",
    "qui",
    "zan",
    "bex",
    "hol",
    "mun",
    "sib",
    "tor",
    "gav",
    "wel",
    "fin",
    "cod",
    "jup",
]
ACCENTED = ["café", "Zürich", "naïve", "señor", "Ångström", "crème", "façade", "Málaga"]
KINDS = ("sign", "document", "plate", "plain")
CJK_FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
# Common words; none is part of another, so each is found (or not) on its own.
CHINESE = [
    "欢迎光临",
    "超市",
    "药店",
    "银行",
    "书店",
    "面包店",
    "咖啡馆",
    "理发店",
    "花店",
    "水果店",
    "便利店",
    "五金店",
    "眼镜店",
    "洗衣店",
    "牛肉面",
    "饺子",
    "炒饭",
    "米饭",
    "豆腐",
    "鸡蛋",
    "红烧肉",
    "小笼包",
    "馄饨",
    "绿茶",
    "啤酒",
    "豆浆",
    "油条",
    "烤鸭",
    "北京",
    "上海",
    "广州",
    "深圳",
    "杭州",
    "南京",
    "成都",
    "西安",
    "武汉",
    "天津",
    "重庆",
    "苏州",
    "火车站",
    "机场",
    "地铁站",
    "医院",
    "学校",
    "公园",
    "图书馆",
    "博物馆",
    "出口",
    "入口",
    "停车场",
    "营业时间",
    "禁止吸烟",
    "请勿停车",
    "收银台",
    "会员卡",
    "特价",
    "新鲜",
    "发票",
    "电话",
    "地址",
]
ALL_KINDS = (*KINDS, "screenshot", "chinese", "photo")


def word(rng: random.Random) -> str:
    """A pronounceable made-up word (no dictionary help for any engine)."""
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))


def plate(rng: random.Random) -> str:
    letters = "".join(rng.choice("ABCDEFGHKLMNPRSTVXYZ") for _ in range(2))
    return f"{letters} {rng.randint(1000, 9999)}"


def background(rng: random.Random, size: tuple[int, int], kind: str) -> Image.Image:
    """A real photograph (``photo``), a textured photo-like background, grey paper, or a flat
    colour."""
    import numpy as np

    w, h = size
    if kind == "photo":
        return _photo(rng, size)
    if kind == "document":
        base = np.full((h, w, 3), rng.randint(215, 245), np.float32)
        base += np.random.default_rng(rng.randint(0, 1 << 30)).normal(0, 6, (h, w, 3))
        return Image.fromarray(base.clip(0, 255).astype("uint8"))
    if kind == "plain":
        return Image.new("RGB", size, tuple(rng.randint(180, 255) for _ in range(3)))
    gen = np.random.default_rng(rng.randint(0, 1 << 30))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [(xx / w) * gen.uniform(40, 200) + (yy / h) * gen.uniform(20, 120) for _ in range(3)], -1
    )
    base += gen.normal(0, 18, (h, w, 3))
    image = Image.fromarray(base.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x, y = rng.randint(0, w), rng.randint(0, h)
        r = rng.randint(10, 80)
        draw.ellipse(
            (x - r, y - r, x + r, y + r), fill=tuple(rng.randint(0, 255) for _ in range(3))
        )
    return image.filter(ImageFilter.GaussianBlur(1.5))


def _photo(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A crop of one of bench/sample_photos.py's real photographs (scikit-image and
    scikit-learn's permissively licensed photos), scaled to cover ``size``."""
    from sample_photos import sample_photos

    with Image.open(rng.choice(sample_photos())) as source:
        photo = source.convert("RGB")
    w, h = size
    scale = max(w / photo.width, h / photo.height) * rng.uniform(1.0, 1.4)
    photo = photo.resize((max(w, round(photo.width * scale)), max(h, round(photo.height * scale))))
    left, top = rng.randint(0, photo.width - w), rng.randint(0, photo.height - h)
    return photo.crop((left, top, left + w, top + h))


def _inside(corners: list[tuple[float, float]], size: tuple[int, int], angle: float) -> bool:
    """Whether a box's corners stay on the canvas once it is rotated by ``angle`` degrees
    about its centre (as ``Image.rotate`` turns it: counter-clockwise)."""
    w, h = size
    cx, cy = w / 2, h / 2
    a = math.radians(angle)
    for x, y in corners:
        rx = cx + (x - cx) * math.cos(a) + (y - cy) * math.sin(a)
        ry = cy - (x - cx) * math.sin(a) + (y - cy) * math.cos(a)
        if not (0 <= rx < w and 0 <= ry < h):
            return False
    return True


def render(
    rng: random.Random, kind: str, words: list[str], font_path: str | None = None
) -> tuple[Image.Image, list[str]]:
    """``words`` as a sign, a document, a plate or plain text; and the words that are on the
    image whole (a long line runs off the canvas: its last words are not in the picture)."""
    size = (rng.choice([640, 800, 1024]), rng.choice([480, 600, 768]))
    image = background(rng, size, kind)
    draw = ImageDraw.Draw(image)
    if font_path is None:
        font_path = FONTS[rng.randrange(len(FONTS))] if kind != "plate" else FONTS[5]
    px = {
        "sign": rng.randint(28, 64),
        "photo": rng.randint(28, 56),
        "document": rng.randint(18, 26),
    }.get(kind, rng.randint(36, 72))
    font = ImageFont.truetype(font_path, px)
    y = rng.randint(20, 60)
    boxes: list[tuple[str, list[tuple[float, float]]]] = []
    for line in words:
        x = rng.randint(20, 80)
        if kind == "sign":  # a panel behind the text, as on a real sign
            left, top, right, bottom = draw.textbbox((x, y), line, font=font)
            panel = tuple(rng.randint(0, 80) for _ in range(3))
            draw.rectangle((left - 10, top - 8, right + 10, bottom + 8), fill=panel)
            colour = tuple(rng.randint(200, 255) for _ in range(3))
        elif kind == "plate":
            left, top, right, bottom = draw.textbbox((x, y), line, font=font)
            draw.rectangle(
                (left - 12, top - 10, right + 12, bottom + 10),
                fill="white",
                outline="black",
                width=4,
            )
            colour = (10, 10, 10)
        else:
            colour = tuple(rng.randint(0, 60) for _ in range(3))
        if kind == "photo":  # a caption on the picture itself: light or dark, with an outline
            light = rng.random() < 0.6
            colour = (255, 255, 255) if light else (15, 15, 15)
            outline = (0, 0, 0) if light else (255, 255, 255)
            draw.text((x, y), line, font=font, fill=colour, stroke_width=2, stroke_fill=outline)
        else:
            draw.text((x, y), line, font=font, fill=colour)
        # Each word's box, to tell which ones the canvas holds (a plate is one piece).
        pieces = [line] if kind == "plate" else line.split(" ")
        start = 0
        for piece in pieces:
            offset = draw.textlength(line[: line.index(piece, start)], font=font)
            start = line.index(piece, start) + len(piece)
            left, top, right, bottom = draw.textbbox((x + offset, y), piece, font=font)
            boxes.append((piece, [(left, top), (right, top), (left, bottom), (right, bottom)]))
        y += int(px * 1.8)
    angle = rng.uniform(-6, 6) if kind in ("sign", "plate") else rng.uniform(-1.5, 1.5)
    fill = (128, 128, 128) if kind != "document" else (230, 230, 230)
    image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=False, fillcolor=fill)
    shown = [w for piece, corners in boxes if _inside(corners, size, angle) for w in piece.split()]
    return image, shown


def make_set(folder: Path, count: int, seed: int = 7, blank: int = 0) -> dict[Path, list[str]]:
    """``count`` images with text plus ``blank`` photo-like ones without, written as PNGs."""
    return {path: words for path, (_, words) in _make(folder, count, seed, blank).items()}


def chinese_lines(rng: random.Random) -> list[str]:
    """One to three lines of Chinese words, a space apart (as on menus and signs), some with
    a price or a number: ``牛肉面 28元``."""
    lines = []
    for _ in range(rng.randint(1, 3)):
        parts = rng.sample(CHINESE, rng.randint(1, 3))
        if rng.random() < 0.35:
            parts.append(f"{rng.randint(2, 399)}{rng.choice('元号楼')}")
        lines.append(" ".join(parts))
    return lines


def _rendered_set(
    folder: Path,
    count: int,
    rng: random.Random,
    name: str,
    one: Callable[[random.Random, int], tuple[str, list[str], str | None]],
) -> dict[Path, list[str]]:
    """``count`` images ``<name>_NNNN.png`` in ``folder``, the n-th rendered from what
    ``one(rng, n)`` gives (kind, lines, font); the ground truth of each."""
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[Path, list[str]] = {}
    for n in range(count):
        kind, lines, font_path = one(rng, n)
        path = folder / f"{name}_{n:04d}.png"
        image, words = render(rng, kind, lines, font_path=font_path)
        image.save(path)
        truth[path] = words
    return truth


def make_chinese(folder: Path, count: int, seed: int = 7) -> dict[Path, list[str]]:
    """``count`` images of Chinese text on sign, document or plain backgrounds."""
    rng = random.Random(seed * 7919 + 2)  # its own stream: the other kinds stay as they were

    def one(rng: random.Random, n: int) -> tuple[str, list[str], str | None]:
        return ("sign", "document", "plain")[n % 3], chinese_lines(rng), CJK_FONT

    return _rendered_set(folder, count, rng, "chinese", one)


def make_photo_captions(folder: Path, count: int, seed: int = 7) -> dict[Path, list[str]]:
    """``count`` real photographs with made-up words written on them (captions, signs)."""
    rng = random.Random(seed * 7919 + 3)  # its own stream: the other kinds stay as they were

    def one(rng: random.Random, n: int) -> tuple[str, list[str], str | None]:
        lines = [
            " ".join(word(rng) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 2))
        ]
        return "photo", lines, None

    return _rendered_set(folder, count, rng, "photo", one)


def make_labelled(
    folder: Path,
    count: int,
    seed: int = 7,
    blank: int = 0,
    screenshots: int = 0,
    chinese: int = 0,
    kinds: tuple[str, ...] = ALL_KINDS,
    photos: int = 0,
) -> dict[Path, tuple[str, list[str]]]:
    """``make_set``'s images (the same ones for the same seed), then ``screenshots`` pages
    rendered by Chromium, ``chinese`` images and ``photos`` real photographs with words on
    them; each path with its kind ("blank" for an image
    without text) and words. Only the images of ``kinds`` are kept (blank ones always)."""
    truth = {
        path: (kind, words)
        for path, (kind, words) in _make(folder, count, seed, blank).items()
        if kind in kinds or kind == "blank"
    }
    if screenshots and "screenshot" in kinds:
        from ocr_screens import render_pages

        pages = render_pages(folder, screenshots, seed=seed * 7919 + 1)
        truth.update((path, ("screenshot", words)) for path, words in pages.items())
    if chinese and "chinese" in kinds:
        written = make_chinese(folder, chinese, seed)
        truth.update((path, ("chinese", words)) for path, words in written.items())
    if photos and "photo" in kinds:
        captioned = make_photo_captions(folder, photos, seed)
        truth.update((path, ("photo", words)) for path, words in captioned.items())
    return truth


def _make(folder: Path, count: int, seed: int, blank: int) -> dict[Path, tuple[str, list[str]]]:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    truth: dict[Path, tuple[str, list[str]]] = {}
    used: set[str] = set()
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        lines = []
        for _ in range(rng.randint(1, 3) if kind != "plate" else 1):
            if kind == "plate":
                line = plate(rng)
            else:
                parts = [word(rng) for _ in range(rng.randint(1, 3))]
                if rng.random() < 0.25:
                    parts.append(rng.choice(ACCENTED))
                if rng.random() < 0.3:
                    parts.append(str(rng.randint(100, 99999)))
                line = " ".join(parts)
            lines.append(line)
        path = folder / f"text_{n:04d}.png"
        image, words = render(rng, kind, lines)
        image.save(path)
        # A repeat is fine for precision; unique-word queries skip repeated words.
        used.update(w.lower() for w in words)
        truth[path] = (kind, words)
    for n in range(blank):
        path = folder / f"photo_{n:04d}.png"
        background(rng, (800, 600), "sign").save(path)
        truth[path] = ("blank", [])
    return truth

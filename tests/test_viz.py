"""Result grids: sizes, captions, aspect ratios, unreadable thumbnails."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_images
from PIL import Image

from clipdb import viz
from clipdb.db.queries import Hit
from clipdb.errors import ClipdbError


def hits_for(paths) -> list[Hit]:
    return [
        Hit(rank=i, image_path=str(p), similarity=1 - i / 10, image_id=i)
        for i, p in enumerate(paths, start=1)
    ]


def test_shorten_keeps_both_ends() -> None:
    assert viz.shorten("short.jpg") == "short.jpg"
    name = "a_really_long_holiday_photo_name_from_2019_0001.jpeg"
    short = viz.shorten(name)
    assert len(short) == viz.NAME_CHARS
    assert short.startswith("a_really") and short.endswith("0001.jpeg") and "…" in short


@pytest.mark.parametrize(
    ("results", "with_query", "shape"),
    [(0, True, (1, 1)), (5, True, (1, 6)), (5, False, (1, 5)), (10, True, (2, 6))],
)
def test_grid_shape(results, with_query, shape) -> None:
    assert viz.grid_shape(results, with_query) == shape


def test_png_size_captions_and_aspect(tmp_path) -> None:
    wide = make_images(tmp_path, 1, size=(200, 50), prefix="wide")
    tall = make_images(tmp_path, 1, size=(40, 160), prefix="tall_and_with_a_very_long_file_name")
    missing = tmp_path / "gone.jpg"
    hits = hits_for([*wide, *tall, missing])
    figure = viz.build_figure(hits, query_image=wide[0], query_text="a red car")
    cells = [axes for axes in figure.axes if axes.get_title()]
    assert [axes.get_title().splitlines()[0] for axes in cells] == [
        "query",
        "#1  0.900",
        "#2  0.800",
        "#3  0.700",
    ]
    assert cells[2].get_title().splitlines()[1] == viz.shorten(tall[0].name)
    assert cells[2].images[0].get_array().shape[:2] == (160, 40)  # proportions kept
    assert all(axes.get_aspect() == 1.0 for axes in cells[:3])
    assert [t.get_text() for t in cells[3].texts] == ["unreadable"]
    assert figure._suptitle.get_text() == "“a red car”"

    png = viz.plot_results(hits, tmp_path / "grid.png", query_image=wide[0])
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == viz.figure_pixels(3, True)


def test_empty_results_and_write_errors(tmp_path) -> None:
    png = viz.plot_results([], tmp_path / "empty.png", query_text="nothing")
    with Image.open(png) as image:
        assert image.size == viz.figure_pixels(0, False)
    (tmp_path / "file").write_text("")
    with pytest.raises(ClipdbError, match="cannot write plot"):
        viz.plot_results([], tmp_path / "file" / "x.png", query_text="x")


def test_a_missing_folder_is_an_error_and_nothing_is_created(tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "grid.png"
    with pytest.raises(ClipdbError, match="no folder"):
        viz.plot_results([], target, query_text="x")
    assert not (tmp_path / "no").exists()


def test_captions_are_literal_and_glyphs_without_a_font_become_question_marks(
    tmp_path: Path,
) -> None:
    import warnings

    odd = "price $5 \\frac{1}{$ 汉字\x1b[2J.png"
    shown = viz.label(odd)
    assert "\x1b" not in shown and "\\x1b" in shown
    assert "$5 \\frac{1}{$" in shown  # literal: mathtext never sees it
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Glyph ... missing from font" would fail here
        hit = Hit(rank=1, image_path=str(tmp_path / odd), similarity=0.5, image_id=1)
        png = viz.plot_results([hit], tmp_path / "grid.png", query_text=odd)
    assert png.stat().st_size > 0

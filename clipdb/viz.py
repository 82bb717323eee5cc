"""Result grids: the query and its top-k thumbnails, captioned with rank and similarity.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display
needed), at a fixed size per cell so a grid's pixel size is predictable.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdb.db.queries import Hit
from clipdb.errors import ClipdbError
from clipdb.terminal import printable

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from PIL import Image

CELL_INCHES = (2.6, 2.9)  # width, height of one thumbnail with its caption
TITLE_INCHES = 0.8  # room above the grid for a text query
DPI = 100
MAX_COLUMNS = 6
THUMBNAIL_PIXELS = 320
NAME_CHARS = 28


def shorten(name: str, limit: int = NAME_CHARS) -> str:
    """``a_very_long_file_name.jpg`` -> ``a_very_lo…name.jpg`` (keeps the extension visible)."""
    if len(name) <= limit:
        return name
    tail = limit // 2
    return name[: limit - tail - 1] + "…" + name[-tail:]


def grid_shape(result_count: int, with_query_image: bool) -> tuple[int, int]:
    """(rows, columns) of the grid."""
    cells = max(1, result_count + (1 if with_query_image else 0))
    columns = min(cells, MAX_COLUMNS)
    return math.ceil(cells / columns), columns


def figure_pixels(result_count: int, with_query_image: bool) -> tuple[int, int]:
    """(width, height) in pixels of the PNG that :func:`plot_results` writes."""
    rows, columns = grid_shape(result_count, with_query_image)
    width = columns * CELL_INCHES[0]
    height = rows * CELL_INCHES[1] + TITLE_INCHES
    return round(width * DPI), round(height * DPI)


def _thumbnail(path: str | os.PathLike[str]) -> Image.Image | None:
    """The picture for a cell, read the way ingest reads files (never blocks on a FIFO,
    refuses bombs), or None when it cannot be shown."""
    from clipdb import decode, files

    video, seconds = files.split_frame(os.fspath(path))
    if seconds is not None:
        return _video_frame(video, seconds)
    try:
        image, _, _ = decode.open_image(os.fspath(path), draft_size=THUMBNAIL_PIXELS)
    except Exception:  # noqa: BLE001 - any unreadable picture is shown as "unreadable"
        return None
    image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
    return image


def _video_frame(path: str, seconds: float) -> Image.Image | None:
    """A video's frame at ``seconds`` (the file as it is now), or None."""
    import io

    from PIL import Image

    from clipdb.files import FileStat
    from clipdb.ingest.video import frame_jpeg

    try:
        info = os.stat(path)
        found = FileStat(path, info.st_size, info.st_mtime_ns, link=True)
        return Image.open(io.BytesIO(frame_jpeg(found, seconds, THUMBNAIL_PIXELS)))
    except Exception:  # noqa: BLE001 - as for photos: shown as "unreadable"
        return None


@cache
def _covered_characters() -> frozenset[int]:
    """Code points the fonts matplotlib will use can draw (its fallback list, as installed)."""
    from matplotlib import font_manager, rcParams
    from matplotlib.ft2font import FT2Font

    covered: set[int] = set()
    for family in rcParams["font.sans-serif"]:
        try:
            path = font_manager.findfont(family, fallback_to_default=False)
        except ValueError:
            continue
        try:
            covered.update(FT2Font(path).get_charmap())
        except (OSError, RuntimeError):
            continue
    if not covered:  # the default font alone
        covered.update(FT2Font(font_manager.findfont("DejaVu Sans")).get_charmap())
    return frozenset(covered)


def label(text: str) -> str:
    """A caption drawn literally: control characters escaped, glyphs no installed font has
    replaced by "?" (instead of boxes and a warning per glyph)."""
    shown = printable(text)
    covered = _covered_characters()
    return "".join(c if ord(c) in covered or c == "\n" else "?" for c in shown)


def _show(axes: Axes, path: str | os.PathLike[str] | None, caption: str) -> None:
    axes.set_axis_off()
    axes.set_anchor("N")  # pictures hang from the top of their cells: captions line up
    image = _thumbnail(path) if path is not None else None
    if image is None:
        axes.text(
            0.5,
            0.5,
            "unreadable",
            ha="center",
            va="center",
            color="0.4",
            fontsize=10,
            parse_math=False,
        )
        axes.add_patch(_frame(axes))
    else:
        # aspect="equal" keeps the picture's proportions inside its cell.
        axes.imshow(np.asarray(image), aspect="equal", interpolation="antialiased")
    # parse_math=False: a "$" in a file name is a dollar sign, not the start of TeX.
    axes.set_title(caption, fontsize=9, pad=4, parse_math=False)


def _frame(axes: Axes):  # type: ignore[no-untyped-def]
    from matplotlib.patches import Rectangle

    return Rectangle((0, 0), 1, 1, transform=axes.transAxes, fill=False, edgecolor="0.7")


def build_figure(
    hits: Sequence[Hit],
    *,
    query_image: str | os.PathLike[str] | None = None,
    query_text: str | None = None,
) -> Figure:
    """The grid as a matplotlib Figure (for notebooks; :func:`plot_results` saves it)."""
    from matplotlib.figure import Figure

    with_query = query_image is not None
    rows, columns = grid_shape(len(hits), with_query)
    width, height = figure_pixels(len(hits), with_query)
    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    top = 1 - TITLE_INCHES / (height / DPI)
    grid = figure.add_gridspec(
        rows, columns, left=0.02, right=0.98, bottom=0.02, top=top, hspace=0.35, wspace=0.1
    )
    cells = [figure.add_subplot(grid[r, c]) for r in range(rows) for c in range(columns)]
    for axes in cells:
        axes.set_axis_off()
    position = 0
    if query_image is not None:
        _show(cells[0], query_image, "query\n" + label(shorten(Path(query_image).name)))
        cells[0].title.set_fontweight("bold")
        position = 1
    for hit, axes in zip(hits, cells[position:], strict=False):
        caption = f"#{hit.rank}  {hit.similarity:.3f}\n" + label(shorten(hit.filename))
        if hit.frame_time is not None:  # a video: its best frame (clip.mp4@SECONDS)
            _show(axes, f"{hit.image_path}@{hit.frame_time}", caption + f" @{hit.frame_time:.0f}s")
        else:
            _show(axes, hit.image_path, caption)
    if query_text is not None:
        lines = textwrap.wrap(label(f"“{query_text}”"), width=max(30, columns * 22))[:2]
        figure.suptitle(
            "\n".join(lines), fontsize=12, y=1 - 0.1 / (height / DPI), va="top", parse_math=False
        )
    if not hits:
        figure.text(
            0.5, 0.5 * top, "no results", ha="center", va="center", color="0.4", parse_math=False
        )
    return figure


def plot_results(
    hits: Sequence[Hit],
    save_path: str | os.PathLike[str],
    *,
    query_image: str | os.PathLike[str] | None = None,
    query_text: str | None = None,
) -> Path:
    """Save the query and its results as a PNG grid; returns the path written.

    The folder must exist: a mistyped folder is an error, never created (it could land
    anywhere, even at the filesystem root).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(save_path)
    if not path.parent.is_dir():
        folder = printable(str(path.parent))
        raise ClipdbError(f"cannot write plot {printable(str(path))}: no folder {folder}")
    figure = build_figure(hits, query_image=query_image, query_text=query_text)
    FigureCanvasAgg(figure)
    try:
        figure.savefig(path, format="png", dpi=DPI)
    except OSError as err:
        raise ClipdbError(f"cannot write plot {path}: {err.strerror or err}") from None
    return path

"""Result grids: the query and its top-k thumbnails, captioned with rank and similarity.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot state, no display
needed), at a fixed size per cell so a grid's pixel size is predictable.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipdb.db.queries import Hit
from clipdb.errors import ClipdbError

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
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
            return image
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _show(axes: Axes, path: str | os.PathLike[str] | None, caption: str) -> None:
    axes.set_axis_off()
    axes.set_anchor("N")  # pictures hang from the top of their cells: captions line up
    image = _thumbnail(path) if path is not None else None
    if image is None:
        axes.text(0.5, 0.5, "unreadable", ha="center", va="center", color="0.4", fontsize=10)
        axes.add_patch(_frame(axes))
    else:
        # aspect="equal" keeps the picture's proportions inside its cell.
        axes.imshow(np.asarray(image), aspect="equal", interpolation="antialiased")
    axes.set_title(caption, fontsize=9, pad=4)


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
        _show(cells[0], query_image, f"query\n{shorten(Path(query_image).name)}")
        cells[0].title.set_fontweight("bold")
        position = 1
    for hit, axes in zip(hits, cells[position:], strict=False):
        _show(axes, hit.image_path, f"#{hit.rank}  {hit.similarity:.3f}\n{shorten(hit.filename)}")
    if query_text is not None:
        lines = textwrap.wrap(f"“{query_text}”", width=max(30, columns * 22))[:2]
        figure.suptitle("\n".join(lines), fontsize=12, y=1 - 0.1 / (height / DPI), va="top")
    if not hits:
        figure.text(0.5, 0.5 * top, "no results", ha="center", va="center", color="0.4")
    return figure


def plot_results(
    hits: Sequence[Hit],
    save_path: str | os.PathLike[str],
    *,
    query_image: str | os.PathLike[str] | None = None,
    query_text: str | None = None,
) -> Path:
    """Save the query and its results as a PNG grid; returns the path written."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = build_figure(hits, query_image=query_image, query_text=query_text)
    FigureCanvasAgg(figure)
    path = Path(save_path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=DPI)
    except OSError as err:
        raise ClipdbError(f"cannot write plot {path}: {err.strerror or err}") from None
    return path

"""Thumbnails for the web page: an upright JPEG from any image clipdb decodes, cheaply.

Same decoder allow-list and checks as ingest (:mod:`clipdb.decode`), so a file that would
crash a decoder or blow up memory is refused here too.
"""

from __future__ import annotations

import io

from PIL import Image

from clipdb.decode import ORIENTATION_TAG, opened_image, read_file, to_rgb

# Modes Image.reduce handles; other modes are converted (palette, 1-bit) or sampled first.
REDUCIBLE_MODES = frozenset(
    {"L", "LA", "La", "RGB", "RGBA", "RGBa", "PA", "I", "F", "CMYK", "YCbCr"}
)
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def make_thumbnail(
    source: str | bytes,
    size: int,
    *,
    max_pixels: int | None = None,
    name: str | None = None,
    quality: int = 85,
) -> bytes:
    """An upright JPEG at most ``size`` pixels on its longer side; ImageError if unreadable.

    The decoded image is shrunk by an integer factor (to at least twice ``size``) before it is
    rotated or converted, so one full-size decode buffer is the peak, not three copies of it;
    JPEGs are draft-decoded at 1/2..1/8 scale and never reach full size at all.
    """
    data = source if isinstance(source, bytes) else read_file(source)
    name = name if isinstance(source, bytes) else source
    with opened_image(data, max_pixels, name=name, draft_size=2 * size) as opened:
        orientation = opened.getexif().get(ORIENTATION_TAG, 1)
        if opened.format == "JPEG":
            opened.draft(opened.mode, (size, size))
        opened.load()  # first frame of animations
        image = shrink(opened, max(1, max(opened.size) // (2 * size)))
        if orientation in EXIF_TRANSPOSE:
            image = image.transpose(EXIF_TRANSPOSE[orientation])
        image = to_rgb(image)
        image.thumbnail((size, size))
        output = io.BytesIO()
        image.save(output, "JPEG", quality=quality)
    return output.getvalue()


def shrink(image: Image.Image, factor: int) -> Image.Image:
    """``image`` made ``factor`` times smaller (box filter), keeping its mode where it can."""
    if factor < 2:
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode in REDUCIBLE_MODES:
        return image.reduce(factor)
    # 16-bit and other rare modes: sampling first keeps to_rgb's float copy small.
    width, height = image.size
    return image.resize(
        (max(1, width // factor), max(1, height // factor)), Image.Resampling.NEAREST
    )

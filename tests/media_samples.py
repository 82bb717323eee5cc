"""Phone and camera files made in the test: HEIC/AVIF through pillow-heif/Pillow, a DNG written
byte by byte (a little-endian TIFF with a Bayer strip, optionally a JPEG preview), and short
videos encoded with PyAV. All tiny, all deterministic."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import Image

SHORT, LONG, ASCII, BYTE, RATIONAL, SRATIONAL = 3, 4, 2, 1, 5, 10
_SIZES = {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, SRATIONAL: 8}


def picture(width: int = 96, height: int = 64, seed: int = 0) -> Image.Image:
    """A smooth, distinctive RGB picture (gradients + a block), so hashes are stable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, size=3)
    pixels = np.stack(
        [
            (x * 255 // max(1, width - 1) + base[0]) % 256,
            (y * 255 // max(1, height - 1) + base[1]) % 256,
            ((x + y) * 127 // max(1, width + height) + base[2]) % 256,
        ],
        axis=-1,
    ).astype(np.uint8)
    pixels[height // 4 : height // 2, width // 4 : width // 2] = 255 - base
    return Image.fromarray(pixels, "RGB")


def exif_bytes(orientation: int = 1, date: str | None = "2024:05:06 07:08:09") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15"
    if date is not None:
        exif.get_ifd(0x8769)[0x9003] = date
    return exif.tobytes()


def heic(path: Path, image: Image.Image | None = None, **exif: object) -> Path:
    import pillow_heif

    pillow_heif.register_heif_opener()
    (image or picture()).save(path, "HEIF", quality=90, exif=exif_bytes(**exif))  # type: ignore[arg-type]
    return path


def avif(path: Path, image: Image.Image | None = None, **exif: object) -> Path:
    (image or picture()).save(path, "AVIF", quality=90, exif=exif_bytes(**exif))  # type: ignore[arg-type]
    return path


def _entries(tags: dict[int, tuple[int, object]], base: int) -> tuple[bytes, bytes]:
    """One IFD (no next pointer written: 0) at file offset ``base``, its out-of-line data after."""
    count = len(tags)
    extra_at = base + 2 + 12 * count + 4
    head, extra = struct.pack("<H", count), b""
    for tag in sorted(tags):
        kind, value = tags[tag]
        if kind == ASCII:
            raw = str(value).encode() + b"\0"
            n = len(raw)
        elif kind in (RATIONAL, SRATIONAL):
            pairs = list(value)  # type: ignore[call-overload]
            raw = b"".join(
                struct.pack("<" + ("ii" if kind == SRATIONAL else "II"), *p) for p in pairs
            )
            n = len(pairs)
        else:
            values = list(value) if isinstance(value, (list, tuple)) else [value]
            fmt = {BYTE: "B", SHORT: "H", LONG: "I"}[kind]
            raw = struct.pack("<" + fmt * len(values), *values)
            n = len(values)
        if len(raw) <= 4:
            head += struct.pack("<HHI", tag, kind, n) + raw.ljust(4, b"\0")
        else:
            head += struct.pack("<HHII", tag, kind, n, extra_at + len(extra))
            extra += raw + (b"\0" if len(raw) % 2 else b"")
    return head + struct.pack("<I", 0), extra


def dng(
    path: Path,
    width: int = 64,
    height: int = 48,
    *,
    preview: Image.Image | None = None,
    orientation: int = 1,
    date: str = "2023:01:02 03:04:05",
) -> Path:
    """A minimal DNG 1.4: RGGB Bayer data in IFD0 (16-bit, uncompressed) from :func:`picture`,
    camera EXIF, and with ``preview`` a JPEG preview in a SubIFD."""
    rgb = np.asarray(picture(width, height).convert("RGB"), dtype=np.uint16) * 256
    bayer = np.empty((height, width), np.uint16)
    bayer[0::2, 0::2] = rgb[0::2, 0::2, 0]
    bayer[0::2, 1::2] = rgb[0::2, 1::2, 1]
    bayer[1::2, 0::2] = rgb[1::2, 0::2, 1]
    bayer[1::2, 1::2] = rgb[1::2, 1::2, 2]
    strip = bayer.astype("<u2").tobytes()
    jpeg = b""
    if preview is not None:
        out = io.BytesIO()
        preview.save(out, "JPEG", quality=90)
        jpeg = out.getvalue()
    # Layout: header | strip | jpeg | exif IFD | sub IFD | IFD0
    strip_at = 8
    jpeg_at = strip_at + len(strip)
    exif_at = jpeg_at + len(jpeg) + (len(jpeg) % 2)
    exif_ifd, exif_extra = _entries({0x9003: (ASCII, date)}, exif_at)
    sub_at = exif_at + len(exif_ifd) + len(exif_extra)
    sub_tags: dict[int, tuple[int, object]] = {
        254: (LONG, 1),
        256: (LONG, preview.width if preview else 0),
        257: (LONG, preview.height if preview else 0),
        258: (SHORT, [8, 8, 8]),
        259: (SHORT, 7),
        262: (SHORT, 6),
        273: (LONG, jpeg_at),
        277: (SHORT, 3),
        279: (LONG, len(jpeg)),
    }
    sub_ifd, sub_extra = _entries(sub_tags, sub_at) if preview is not None else (b"", b"")
    ifd0_at = sub_at + len(sub_ifd) + len(sub_extra)
    tags: dict[int, tuple[int, object]] = {
        254: (LONG, 0),
        256: (LONG, width),
        257: (LONG, height),
        258: (SHORT, 16),
        259: (SHORT, 1),
        262: (SHORT, 32803),
        271: (ASCII, "Canon"),
        272: (ASCII, "Canon EOS Test"),
        273: (LONG, strip_at),
        274: (SHORT, orientation),
        277: (SHORT, 1),
        278: (LONG, height),
        279: (LONG, len(strip)),
        284: (SHORT, 1),
        33421: (SHORT, [2, 2]),
        33422: (BYTE, [0, 1, 1, 2]),
        34665: (LONG, exif_at),
        50706: (BYTE, [1, 4, 0, 0]),
        50708: (ASCII, "Canon EOS Test"),
        50717: (LONG, 65535),
        50721: (
            SRATIONAL,
            [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)],
        ),
        50728: (RATIONAL, [(1, 1), (1, 1), (1, 1)]),
    }
    if preview is not None:
        tags[330] = (LONG, sub_at)
    ifd0, ifd0_extra = _entries(tags, ifd0_at)
    header = b"II*\0" + struct.pack("<I", ifd0_at)
    body = header + strip + jpeg + b"\0" * (len(jpeg) % 2)
    body += exif_ifd + exif_extra + sub_ifd + sub_extra + ifd0 + ifd0_extra
    path.write_bytes(body)
    return path


def video(
    path: Path,
    seconds: float = 3.0,
    *,
    fps: int = 10,
    size: tuple[int, int] = (64, 64),
    scenes: tuple[float, ...] = (),
    gop: int = 10,
    metadata: dict[str, str] | None = None,
) -> Path:
    """A short H.264 (VP9 for .webm) clip: one flat colour per scene, a cut at each of
    ``scenes`` (seconds), a keyframe every ``gop`` frames."""
    import av

    codec = "libvpx-vp9" if path.suffix == ".webm" else "libx264"
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40), (40, 220, 220)]
    with av.open(str(path), mode="w") as container:
        for name, value in (metadata or {}).items():
            container.metadata[name] = value
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for index in range(int(seconds * fps)):
            scene = sum(1 for cut in scenes if index / fps >= cut)
            pixels = np.empty((size[1], size[0], 3), np.uint8)
            pixels[:] = colours[scene % len(colours)]
            x = index % (size[0] - 4)
            pixels[:4, x : x + 4] = 255  # a little motion, far from a scene change
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path

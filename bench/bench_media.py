"""Phone and camera media (not a test): photo decode rates by format, video ingest rate.

    python bench/bench_media.py [--count 8] [--seconds 30] [--4k]

Photos: one generated picture of 4032x3024 (an iPhone's 12 MP) saved as JPEG (q90), HEIC (q90)
and DNG (16-bit Bayer, uncompressed; with and without a JPEG preview of 2/5 the size, as
cameras embed: 1612x1209 here), each decoded as ingest decodes it for a 224-pixel model
(``decode.open_image(draft_size=448)``): bytes to upright RGB, one core. Rates are
images/s and the ratio to JPEG at the same pixel count.

Video: a generated H.264 clip (1920x1080, 30 fps, textured and panning, a new scene every 7 s,
a keyframe every 2 s; x264 veryfast) sampled
as ingest samples it (:func:`clipdb.ingest.video.video_task`: sha256 of the file, keyframe
decode, scene detection, frames scaled to 448 and turned into model pixels), in a fresh
process whose peak RSS is reported. Rates are seconds of video per second and frames kept per
second. The CLIP encode of the kept frames is the same cost per frame as a photo's (see
BENCHMARKS.md's encoder figures) and is not part of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the sample writers the tests use (DNG, video)

from media_samples import dng, heic  # noqa: E402
from PIL import Image  # noqa: E402

from clipdb import decode, pixels  # noqa: E402

WIDTH, HEIGHT = 4032, 3024


def photo(width: int, height: int) -> Image.Image:
    """Detail a camera would have: gradients plus noise (JPEG/HEIC sizes like real photos)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    noise = rng.integers(-24, 24, size=(height, width, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def rate(path: Path, count: int) -> float:
    decode.open_image(str(path), draft_size=448)  # warm: imports, plugin registration
    start = time.perf_counter()
    for _ in range(count):
        decode.open_image(str(path), draft_size=448)
    return count / (time.perf_counter() - start)


def photos(directory: Path, count: int, size: tuple[int, int]) -> dict[str, float]:
    WIDTH, HEIGHT = size  # noqa: N806 - the module's defaults, overridden
    picture = photo(WIDTH, HEIGHT)
    jpeg = directory / "p.jpg"
    picture.save(jpeg, "JPEG", quality=90)
    files = {
        "jpeg": jpeg,
        "heic": heic(directory / "p.heic", picture),
        "dng (demosaic)": dng(directory / "a.dng", WIDTH, HEIGHT),
        "dng (preview)": dng(
            directory / "b.dng",
            WIDTH,
            HEIGHT,
            preview=picture.resize((WIDTH * 2 // 5, HEIGHT * 2 // 5)),
        ),
    }
    return {name: rate(path, count) for name, path in files.items()}


def textured_video(path: Path, seconds: float, size: tuple[int, int], fps: int = 30) -> Path:
    """H.264 (x264 veryfast, keyframe every 2 s) of a textured picture panning 4 px a frame,
    another picture every 7 s: bits and decode work like a camera clip, not flat colour."""
    import av

    width, height = size
    scenes = [np.asarray(photo(width + 4 * fps * 7, height)) for _ in range(1)]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 2 * fps
        for index in range(int(seconds * fps)):
            scene, step = divmod(index, 7 * fps)
            base = scenes[0][:, 4 * step : 4 * step + width]
            pixels = np.ascontiguousarray(np.roll(base, scene, axis=2))  # a new colour mix
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))


def sample_child(path: str) -> None:
    """In a fresh process: sample the video, print timings and its peak RSS as JSON (the RSS
    before it, with torch and clipdb imported, alongside)."""
    from clipdb.ingest.video import video_task

    pipeline = pixels.PixelPipeline(input_size=224, pil_steps=(("resize", (224,), 3, None),))
    pipeline.to_pixels(Image.new("RGB", (448, 448)))  # torch's resize loaded, as in a worker
    before_kb = _status_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets the peak (VmHWM): what follows is the video's own peak
    start = time.perf_counter()
    frames = video_task(path, pipeline=pipeline, max_pixels=None)
    seconds = time.perf_counter() - start
    assert isinstance(frames, tuple), frames
    peak_kb = _status_kb("VmHWM")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "frames": len(frames),
                "peak_mib": peak_kb / 1024,
                "before_mib": before_kb / 1024,
            }
        )
    )


def videos(directory: Path, seconds: float, size: tuple[int, int]) -> dict[str, float]:
    start = time.perf_counter()
    path = textured_video(directory / f"v{size[1]}.mp4", seconds, size)
    print(f"  (made the {size[1]}p clip in {time.perf_counter() - start:.0f} s)", file=sys.stderr)
    out = subprocess.run(
        [sys.executable, __file__, "--child", str(path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return {
        "video_s_per_s": seconds / result["seconds"],
        "frames_per_s": result["frames"] / result["seconds"],
        "frames": result["frames"],
        "peak_mib": result["peak_mib"],
        "before_mib": result["before_mib"],
        "file_mib": path.stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=8, help="decodes per photo format")
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="photo size, WxH")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of the video")
    parser.add_argument("--4k", dest="uhd", action="store_true", help="also a 3840x2160 clip")
    parser.add_argument("--only-4k", action="store_true", help="no photos, no 1080p clip")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sample_child(args.child)
        return
    with open("/proc/loadavg") as handle:
        load = handle.read().split()[0]
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        size = tuple(int(part) for part in args.size.split("x"))
        rates = {} if args.only_4k else photos(directory, args.count, (size[0], size[1]))
        print(f"photos {args.size}, decode for a 224-pixel model, one core, load {load}")
        for name, value in rates.items():
            print(f"  {name:<15} {value:7.2f} img/s  {value / rates['jpeg']:6.3f}x JPEG")
        frame_sizes = [] if args.only_4k else [(1920, 1080)]
        frame_sizes += [(3840, 2160)] if args.uhd or args.only_4k else []
        for frame_size in frame_sizes:
            got = videos(directory, args.seconds, frame_size)
            print(
                f"video {frame_size[0]}x{frame_size[1]} H.264 {args.seconds:g} s"
                f" ({got['file_mib']:.1f} MiB):"
                f" {got['video_s_per_s']:.1f} s of video/s, {got['frames_per_s']:.2f} frames/s"
                f" ({got['frames']} frames), peak RSS {got['peak_mib']:.0f} MiB"
                f" ({got['before_mib']:.0f} MiB before, torch and clipdb imported)"
            )


if __name__ == "__main__":
    main()

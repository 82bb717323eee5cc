"""The local engine's work: decode in the decode pool, encode in batches here."""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

from clipdb import decode, device_decode, files, pixels
from clipdb.db.store import ImageRecord
from clipdb.ingest import video
from clipdb.ingest.decode_pool import MIN_FILES_FOR_POOL, DecodePool
from clipdb.ingest.options import images_per_s, rate_text
from clipdb.ingest.writer import Encoded

# Decoded pixels (uint8) an ingest may hold while its model converts: 1,780 images at 224².
HELD_PIXEL_BYTES = 256 * 1024 * 1024


def decoded_images(
    paths: list[str],
    stats: dict[str, files.FileStat],
    pipeline: pixels.PixelPipeline,
    *,
    workers: int,
    read_ahead: int | Callable[[], int],
    max_pixels: int | None,
    on_device: bool = False,
) -> Iterator[decode.Decoded]:
    """Each path decoded to pixels (or a skip reason), in order; a pool when it pays.
    ``read_ahead``: files in flight (a callable: asked again as the pool submits).

    ``on_device``: JPEGs come back as bytes for :class:`DeviceDecoder` to decode, prepared
    (read, hashed, header checked) in threads of this process, because handing their bytes
    back from worker processes costs this process ~0.5 ms each, which caps a GPU at ~2,000
    img/s (BENCHMARKS.md); every full decode still runs in the worker processes."""
    work = device_decode.prepare_task if on_device else decode.decode_task
    # Videos come back as a tuple of frames (clipdb.ingest.video), flattened below.
    task = partial(video.media_task, image_task=work, pipeline=pipeline, max_pixels=max_pixels)
    if workers == 0 or len(paths) < MIN_FILES_FOR_POOL:
        yield from video.flat(task(path, found=stats.get(path)) for path in paths)
        return
    from concurrent.futures import ThreadPoolExecutor

    def in_thread(path: str) -> video.Item:
        found = stats.get(path)
        try:
            prepared = device_decode.prepare_jpeg(path, pipeline, max_pixels, found)
        except Exception:  # noqa: BLE001 - as decode_task: one odd file is skipped, no abort
            return decode.Decoded(path, reason=files.CORRUPT)
        if prepared is None:  # not one for the device after all: a worker decodes it
            return pool.submit(task, path, found=found).result()
        return prepared

    def submit(path: str) -> Future[video.Item]:
        if threads is not None and path.lower().endswith(device_decode.JPEG_SUFFIXES):
            return threads.submit(in_thread, path)
        return pool.submit(task, path, found=stats.get(path))

    pool = DecodePool(workers)
    threads = ThreadPoolExecutor(workers, "clipdb-prepare") if on_device else None
    # Bounded read-ahead: decoding may outrun encoding, and decoded pixels are big.
    wanted = read_ahead if callable(read_ahead) else lambda: read_ahead
    try:
        yield from video.flat(
            pool.ordered(
                paths,
                submit,
                lambda path, reason: decode.Decoded(path, reason=reason),
                lambda: max(wanted(), 4 * workers),
            )
        )
    finally:
        pool.close()
        if threads is not None:
            threads.shutdown(wait=False, cancel_futures=True)


class EncodingBar:
    """The ingest progress bar on stderr, labelled "encoding" (off without ``progress``; tqdm
    hides it off a tty). Its rate is the summary's (:func:`images_per_s`: rows written since
    the pass began), not tqdm's own count of files handled since the bar appeared."""

    def __init__(self, total: int, progress: bool, started: float | None) -> None:
        from tqdm import tqdm

        self.started = time.perf_counter() if started is None else started
        self.written = 0
        self.bar = tqdm(
            total=total,
            desc="encoding",
            unit="img",
            file=sys.stderr,
            disable=None if progress else True,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
            "[{elapsed}<{remaining}, {postfix}]",
            postfix=rate_text(0.0),
        )

    def update(self, handled: int, written: int = 0) -> None:
        """``handled`` files done, ``written`` of them as rows."""
        self.written += written
        rate = images_per_s(self.written, time.perf_counter() - self.started)
        self.bar.set_postfix_str(rate_text(rate), refresh=False)
        self.bar.update(handled)

    def close(self) -> None:
        self.bar.close()


def encoded_batches(
    encoder: Any,
    paths: list[str],
    stats: dict[str, files.FileStat],
    *,
    batch_size: int,
    workers: int,
    max_pixels: int | None,
    decode_mode: str = "auto",
) -> Iterator[Encoded]:
    """Decode ``paths`` in the decode pool and encode them here in batches: the local
    engine's rows and skips, in the order they are ready."""
    on_device = device_decode.DeviceDecoder.for_encoder(encoder, decode_mode, max_pixels)
    batch: list[decode.Decoded] = []
    # Full batches decoded while the encoder's model is still converting (a first OpenVINO
    # run): encoding would only wait, so the decode workers run ahead on the cores the
    # conversion leaves, up to HELD_PIXEL_BYTES, and the batches are encoded once it is done.
    held: deque[list[decode.Decoded]] = deque()
    converting: Callable[[], bool] = getattr(encoder, "busy_converting", lambda: False)
    height, width = getattr(encoder, "image_size", (224, 224))
    hold = max(1, HELD_PIXEL_BYTES // (3 * height * width * batch_size))
    # One batch in flight on CUDA: the next batch is gathered and decoded while the GPU
    # encodes this one (start_encoding returns before the GPU is done).
    in_flight: deque[tuple[device_decode.ModelBatch, Callable[[], Any]]] = deque()
    depth = 1 if device_decode.on_cuda(encoder) else 0

    def flush(items: list[decode.Decoded]) -> Iterator[Encoded]:
        skipped: list[tuple[str, str]] = []  # by the device path's fallback
        ready = model_batch(encoder, items, on_device, lambda p, why: skipped.append((p, why)))
        if skipped:
            yield Encoded(skipped=skipped)
        if ready.items:
            in_flight.append((ready, start_encoding(encoder, ready.pixels)))
        while len(in_flight) > depth:
            yield records(*in_flight.popleft())

    def records(ready: device_decode.ModelBatch, embeddings: Callable[[], Any]) -> Encoded:
        kept = ready.finished()
        return Encoded(
            [
                record(item, stats[item.path], embedding)
                for item, embedding in zip(kept, embeddings(), strict=True)
            ]
        )

    images = decoded_images(
        paths,
        stats,
        encoder.pixel_pipeline,
        workers=workers,
        read_ahead=lambda: (hold + 2 if converting() else 2) * batch_size,
        max_pixels=max_pixels,
        on_device=on_device is not None,
    )
    for item in images:
        if item.reason is not None:
            yield Encoded(skipped=[(item.path, item.reason)])
            continue
        batch.append(item)
        if len(batch) < batch_size:
            continue
        held.append(batch)
        batch = []
        while held and (len(held) > hold or not converting()):
            yield from flush(held.popleft())
    while held:
        yield from flush(held.popleft())
    if batch:
        yield from flush(batch)
    while in_flight:
        yield records(*in_flight.popleft())


def record(item: decode.Decoded, stat: files.FileStat, embedding: Any) -> ImageRecord:
    """The row of a decoded and encoded file, with the identity the scan saw."""
    assert item.sha256 is not None
    return ImageRecord(
        item.path,
        item.sha256,
        stat.size,
        stat.mtime_ns,
        item.width,
        item.height,
        embedding,
        metadata=item.metadata,
        phash=item.phash,
        frame_time=item.frame_time,
        first_frame=item.first_frame,
    )


def model_batch(
    encoder: Any,
    batch: list[decode.Decoded],
    on_device: device_decode.DeviceDecoder | None,
    on_skip: Callable[[str, str], None],
) -> device_decode.ModelBatch:
    """The encoder's input for ``batch``: JPEG bytes decoded on the device when
    ``on_device``, else the workers' pixels stacked on the host."""
    if on_device is None:
        pixels = [d.pixels for d in batch if d.pixels is not None]
        return device_decode.ModelBatch(list(batch), encoder.pixel_pipeline.to_array(pixels))
    ready = on_device.batch(batch, on_skip)
    if getattr(encoder, "backend", "torch") != "torch":  # e.g. OpenVINO on the CPU: arrays
        ready.pixels = ready.pixels.cpu().numpy()
    return ready


def start_encoding(encoder: Any, pixels: Any) -> Callable[[], Any]:
    """The encoder's ``start_encode_images`` where it has one, else the finished result."""
    start = getattr(encoder, "start_encode_images", None)
    if start is not None:
        started: Callable[[], Any] = start(pixels)
        return started
    done = encoder.encode_images(pixels)
    return lambda: done

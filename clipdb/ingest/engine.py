"""Engines: what turns the plan's files into rows. The Ingester runs plan -> engine -> writer
the same way for each; which engine runs is chosen here, once.

- ``local``: decode in this machine's decode pool, encode here (clipdb.ingest.pipeline).
- ``ray``: decode + encode on the actors of a Ray cluster (clipdb.ingest.ray_engine).

Either way the rows are committed here, by one :class:`BatchWriter`, with the same
exactly-once upsert.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from clipdb import files
from clipdb.db import Database
from clipdb.db.registry import Model
from clipdb.ingest.options import IngestOptions
from clipdb.ingest.plan import SkipCallback
from clipdb.ingest.writer import BatchWriter, Encoded

if TYPE_CHECKING:
    from clipdb.encoders import Encoder


class Engine(Protocol):
    """Encodes files into rows; names the model it runs like an encoder does."""

    architecture: str
    pretrained: str
    dim: int

    def encode(self, paths: list[str], stats: dict[str, files.FileStat]) -> Iterator[Encoded]:
        """Rows and skips for ``paths``, in batches, as they are ready."""
        ...

    def close(self) -> None:
        """Let go of what the engine holds (workers, a cluster); safe to call twice."""
        ...


class LocalEngine:
    """This process's encoder, fed by the decode pool."""

    def __init__(self, encoder: Encoder, options: IngestOptions, workers: int) -> None:
        self.encoder, self.options, self.workers = encoder, options, workers
        self.architecture = encoder.architecture
        self.pretrained = encoder.pretrained
        self.dim = encoder.dim

    def encode(self, paths: list[str], stats: dict[str, files.FileStat]) -> Iterator[Encoded]:
        from clipdb.ingest.pipeline import encoded_batches

        return encoded_batches(
            self.encoder,
            paths,
            stats,
            batch_size=self.options.batch_size,
            workers=self.workers,
            max_pixels=self.options.max_pixels,
            decode_mode=self.options.decode,
        )

    def close(self) -> None:
        """The encoder stays loaded: --watch reuses it on its next pass."""


class RayEngine:
    """The actors of a Ray cluster (:class:`clipdb.ingest.ray_engine.RayEncoders`)."""

    def __init__(self, architecture: str, pretrained: str | None, options: IngestOptions) -> None:
        from clipdb.ingest.ray_engine import EncoderWorker, RayEncoders

        self.options = options
        self.actors = RayEncoders(
            architecture,
            pretrained,
            address=options.ray_address,
            gpus_per_worker=options.gpus_per_worker,
            device=options.device,
            precision=options.precision,
            backend=options.backend,
            max_pixels=options.max_pixels,
            decode_mode=options.decode,
            worker_class=options.ray_worker_class or EncoderWorker,
        )
        self.architecture = self.actors.architecture
        self.pretrained = self.actors.pretrained
        self.dim = self.actors.dim

    def encode(self, paths: list[str], stats: dict[str, files.FileStat]) -> Iterator[Encoded]:
        return self.actors.encode(paths, stats, batch_size=self.options.batch_size)

    def close(self) -> None:
        self.actors.close()


def check_engine(options: IngestOptions) -> None:
    """Before any work: the engine can run here (Ray: one line saying how to install it)."""
    if options.engine == "ray":
        from clipdb.ingest.ray_engine import require_ray

        require_ray()


def start_engine(
    options: IngestOptions,
    load_encoder: Callable[[], Encoder],
    architecture: str,
    pretrained: str | None,
    workers: int,
) -> Engine:
    """The engine ``options.engine`` names, ready to encode (a model loaded, or actors)."""
    if options.engine == "ray":
        return RayEngine(architecture, pretrained, options)
    return LocalEngine(load_encoder(), options, workers)


def write_encoded(
    database: Database,
    model: Model,
    batches: Iterator[Encoded],
    total: int,
    *,
    progress: bool,
    on_skip: SkipCallback,
    on_written: Callable[[str], None],
    started: float | None = None,
) -> None:
    """Commit an engine's rows as they come (``on_written(path)`` for each row handed over,
    ``on_skip`` for each skip), with the progress bar; what was handed over is committed also
    when the engine fails or on Ctrl-C."""
    from clipdb.ingest.pipeline import EncodingBar

    writer = BatchWriter(database, model)
    bar = EncodingBar(total, progress, started)
    try:
        for encoded in batches:
            for path, reason in encoded.skipped:
                on_skip(path, reason)
            files = [record for record in encoded.records if record.starts_file]  # by file
            for record in files:
                on_written(record.path)
            if encoded.records:
                writer.put(encoded.records)
            bar.update(len(encoded.skipped) + len(files), written=len(files))
    finally:
        bar.close()
        writer.close()  # commits what was queued

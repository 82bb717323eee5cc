"""``clipdb ingest --engine ray``: decode + encode on a Ray cluster, write here.

The driver (this process) scans, plans and prunes as for the local engine, then hands
batches of (path, size, mtime_ns, link) to Ray actors that each hold one encoder (one per
GPU with ``--gpus-per-worker N``, else one per CPU slot). Ray's own ActorPool schedules them,
with at most one batch in flight per actor. Actors send back plain data only (strings and
numpy arrays: sha256, width, height, embeddings), never objects loaded from disk, and the
driver commits the rows with the same exactly-once upsert (BatchWriter -> upsert_images), so
a run that loses its cluster keeps its committed batches and a re-run finishes the rest.

Workers read the files themselves: every node must see the paths the driver scanned (one
machine, or a shared file system mounted at the same place).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clipdb import files
from clipdb.config import Settings
from clipdb.db.store import ImageRecord
from clipdb.errors import ClipdbError, first_line
from clipdb.ingest.ray_local import PrivateTemp, start_local_cluster
from clipdb.ingest.writer import Encoded

INSTALL_HINT = "the Ray engine needs ray: pip install 'clipdb-pg[ray]'"
ACTOR_PREFIX = "clipdb-encoder"  # named actors: tests (and operators) can find and kill them
# Settings the workers need to build the same model as the driver would.
FORWARDED_ENV = ("CLIPDB_MODEL_CONFIGS", "HF_HOME", "HF_HUB_OFFLINE", "TORCH_HOME")


def require_ray() -> Any:
    """Import ray, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ClipdbError(INSTALL_HINT) from None
    return ray


class EncoderWorker:
    """One encoder on one Ray worker: decodes and encodes whole batches of paths."""

    def __init__(
        self,
        architecture: str,
        pretrained: str | None,
        device: str,
        precision: str,
        max_pixels: int | None,
        threads: int,
        backend: str = "auto",
        decode_mode: str = "auto",
    ) -> None:
        import torch

        from clipdb.device_decode import DeviceDecoder
        from clipdb.encoders import load_encoder

        torch.set_num_threads(max(1, threads))  # its CPU slots, not the whole node
        self.encoder = load_encoder(
            architecture, pretrained, device=device, precision=precision, backend=backend
        )
        self.pipeline = self.encoder.pixel_pipeline
        self.max_pixels = max_pixels
        # On a GPU worker its one CPU slot would cap the GPU: JPEGs decode on the device.
        self.on_device = DeviceDecoder.for_encoder(self.encoder, decode_mode, max_pixels)

    def identity(self) -> tuple[str, str, int]:
        return self.encoder.architecture, self.encoder.pretrained, int(self.encoder.dim)

    def pid(self) -> int:
        return os.getpid()

    def run(self, batch: list[tuple[str, int, int, bool]]) -> dict[str, Any]:
        """Decode + encode one batch; plain lists and arrays only go back."""
        from clipdb import decode, device_decode
        from clipdb.ingest.pipeline import model_batch

        task = device_decode.prepare_task if self.on_device else decode.decode_task
        done = [
            task(
                path,
                self.pipeline,
                self.max_pixels,
                found=files.FileStat(path, size, mtime_ns, link),
            )
            for path, size, mtime_ns, link in batch
        ]
        skipped = [(item.path, str(item.reason)) for item in done if item.reason is not None]
        usable = [item for item in done if item.reason is None]
        ready = model_batch(
            self.encoder, usable, self.on_device, lambda path, why: skipped.append((path, why))
        )
        dim = int(self.encoder.dim)
        embeddings = (
            self.encoder.encode_images(ready.pixels)
            if ready.items
            else np.zeros((0, dim), np.float32)
        )
        good = ready.finished()
        return {
            "skipped": skipped,
            "paths": [item.path for item in good],
            "sha256": np.array(
                [np.frombuffer(item.sha256 or b"", np.uint8) for item in good], np.uint8
            ).reshape(len(good), 32),
            "width": np.array([item.width for item in good], np.int64),
            "height": np.array([item.height for item in good], np.int64),
            "embeddings": np.asarray(embeddings, np.float32),
            # pHash and EXIF fields as plain values (ints, a datetime, text, floats).
            "phash": [item.phash for item in good],
            "metadata": [_metadata_values(item.metadata) for item in good],
        }


def _metadata_values(metadata: Any) -> tuple[Any, ...] | None:
    return None if metadata is None else dataclasses.astuple(metadata)


def _metadata(values: tuple[Any, ...] | None) -> Any:
    from clipdb.exif import PhotoMetadata

    return None if values is None else PhotoMetadata(*values)


def _worker_env() -> dict[str, str]:
    """The driver's model settings, and where this clipdb is, for the workers' processes."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    return env


def _actor_shape(resources: dict[str, float], gpus_per_worker: float) -> tuple[int, dict[str, Any]]:
    """How many actors the cluster's ``resources`` hold, and the Ray options of each."""
    if gpus_per_worker > 0:
        count = int(resources.get("GPU", 0) // gpus_per_worker)
        if count == 0:
            raise ClipdbError(
                f"--gpus-per-worker {gpus_per_worker:g}: the Ray cluster has "
                f"{resources.get('GPU', 0):g} GPU(s)"
            )
        return count, {"num_cpus": 1, "num_gpus": gpus_per_worker}
    return max(1, int(resources.get("CPU", 1))), {"num_cpus": 1}


class RayEncoders:
    """The actors of one ingest pass; ``architecture``/``pretrained``/``dim`` as an encoder.

    ``worker_class``: the actors' class, EncoderWorker or a subclass of it (Ray ships a class
    that the workers cannot import, e.g. one made in a function, by value).
    """

    def __init__(
        self,
        architecture: str,
        pretrained: str | None,
        *,
        address: str | None,
        gpus_per_worker: float,
        device: str,
        precision: str,
        max_pixels: int | None,
        backend: str = "auto",
        decode_mode: str = "auto",
        worker_class: type[EncoderWorker] = EncoderWorker,
    ) -> None:
        ray = require_ray()
        self.ray = ray
        self.started = False
        self.private_temp: PrivateTemp | None = None
        try:
            self._connect(address)
            count, options = _actor_shape(ray.cluster_resources(), gpus_per_worker)
            remote = ray.remote(worker_class)
            run_id = uuid.uuid4().hex[:8]
            threads = 1  # each actor has one CPU slot
            self.actors = [
                remote.options(
                    name=f"{ACTOR_PREFIX}-{run_id}-{index}",
                    runtime_env={"env_vars": _worker_env()},
                    **options,
                ).remote(
                    architecture,
                    pretrained,
                    device,
                    precision,
                    max_pixels,
                    threads,
                    backend,
                    decode_mode,
                )
                for index in range(count)
            ]
            identities = ray.get([actor.identity.remote() for actor in self.actors])
        except ClipdbError:
            self.close()
            raise
        except Exception as err:  # ray raises many kinds (ConnectionError, RayActorError...)
            self.close()
            raise ClipdbError(f"Ray cluster: {cluster_reason(err)}") from None
        self.architecture, self.pretrained, self.dim = identities[0]

    def _connect(self, address: str | None) -> None:
        """Join the cluster at ``address`` (or RAY_ADDRESS), or start a local one, unless Ray
        is already initialised in this process."""
        if self.ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "configure_logging": False}
        if address is None and not os.environ.get("RAY_ADDRESS"):
            home = Settings.resolve().home
            self.private_temp = start_local_cluster(self.ray, home, **quiet)
        else:
            self.ray.init(address=address, include_dashboard=False, **quiet)
        self.started = True

    def close(self) -> None:
        """End this run's actors (and the cluster it started); safe to call twice."""
        for actor in getattr(self, "actors", []):
            with contextlib.suppress(Exception):  # already gone with its cluster
                self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self.private_temp is not None:
            self.private_temp.remove()  # a mkdtemp of this run's; CLIPDB_HOME/ray stays
            self.private_temp = None

    def encode(
        self, paths: list[str], stats: dict[str, files.FileStat], *, batch_size: int
    ) -> Iterator[Encoded]:
        """Decode + encode ``paths`` on the actors; their rows and skips as they come back."""
        from ray.util import ActorPool

        batches = [
            [
                (p, stats[p].size, stats[p].mtime_ns, stats[p].link)
                for p in paths[i : i + batch_size]
            ]
            for i in range(0, len(paths), batch_size)
        ]
        handed = 0
        try:
            # One batch in flight per actor: the rest wait here as lists of paths.
            for result in ActorPool(self.actors).map_unordered(
                lambda actor, batch: actor.run.remote(batch), batches
            ):
                records = []
                for index, path in enumerate(result["paths"]):
                    stat = stats[path]
                    records.append(
                        ImageRecord(
                            path,
                            bytes(result["sha256"][index]),
                            stat.size,
                            stat.mtime_ns,
                            int(result["width"][index]),
                            int(result["height"][index]),
                            result["embeddings"][index],
                            metadata=_metadata(result["metadata"][index]),
                            phash=result["phash"][index],
                        )
                    )
                handed += len(records)
                yield Encoded(records, list(result["skipped"]))
        except self.ray.exceptions.RayError as err:
            # The rows handed over are committed by the writer as this ends the run.
            raise ClipdbError(
                f"the Ray cluster failed ({cluster_reason(err)}); {handed} image(s) "
                "committed, run again to finish"
            ) from None


def cluster_reason(err: BaseException) -> str:
    """One line for a Ray failure: the worker's own error where Ray carries one."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(err)):
        return first_line(cause)
    return f"{type(err).__name__}: {first_line(err)}"[:300]

"""A gate for the Ray engine's encoder actors: the test decides which batches run.

``FileGate(folder, passes)`` lets the first ``passes`` batches through; every later batch
parks its actor (a ``parked-*`` file says so) until the test opens the gate or kills the
actor. Files, not a Ray actor: the actors may belong to another process's cluster (a driver
run as a subprocess), which the test only sees through the file system.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipdb.ingest.ray_engine import EncoderWorker

PARK_POLL_S = 0.02  # how often a parked actor looks for "open"; any value works


class FileGate:
    def __init__(self, folder: Path, passes: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        for index in range(passes):
            (folder / f"pass-{index}").touch()

    def parked(self) -> int:
        return len(list(self.folder.glob("parked-*")))

    def open(self) -> None:
        (self.folder / "open").touch()

    def wait(self, ready: Callable[[], bool], what: str, timeout: float = 180) -> None:
        """Poll until ``ready()``; a deadline only so that a broken run fails, never hangs."""
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                self.open()  # let a still running ingest end instead of waiting forever
                raise AssertionError(f"gave up waiting for {what}")
            time.sleep(PARK_POLL_S)

    def worker_class(self) -> type[EncoderWorker]:
        return gated_worker(self.folder)


def gated_worker(gate_folder: Path) -> type[EncoderWorker]:
    """An EncoderWorker that passes the gate in ``gate_folder`` before each batch.

    Made in a function, so Ray ships it by value: the workers need not import this module.
    """
    folder = str(gate_folder)

    class GatedWorker(EncoderWorker):
        def run(self, batch: list[tuple[str, int, int, bool]]) -> dict[str, Any]:
            import os
            import uuid

            gate = Path(folder)
            for ticket in sorted(gate.glob("pass-*")):
                try:
                    ticket.unlink()  # only one actor can take each pass
                    break
                except FileNotFoundError:
                    continue
            else:
                (gate / f"parked-{os.getpid()}-{uuid.uuid4().hex}").touch()
                while not (gate / "open").exists():
                    time.sleep(PARK_POLL_S)
            return EncoderWorker.run(self, batch)

    return GatedWorker

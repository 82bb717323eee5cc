"""The one decode pool of ingest and every backfill: worker processes that cost a file, never
the run, when they die.

A worker that segfaults in a decoder or is killed (the OOM killer's SIGKILL) breaks a
ProcessPoolExecutor for every file in flight. Which of them did it is unknown, so each is
tried again alone on a fresh pool: the one that breaks it again is handed back as a skip
(``files.CRASHED``, or ``files.KILLED`` when the worker died of SIGKILL), the others come
back as usual, and the run goes on.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from clipdb import decode, files

MIN_FILES_FOR_POOL = 16  # fewer files decode faster in this process than a pool starts

R = TypeVar("R")


class DecodePool:
    """``workers`` decode processes (forkserver, :func:`clipdb.decode.worker_init`),
    replaced whole when one of them dies."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = self._new_executor()
        self._processes: dict[int, Any] = {}  # pid -> multiprocessing Process, this executor's

    def _new_executor(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=decode.worker_context(),
            initializer=decode.worker_init,
        )

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> Future[R]:
        future = self._executor.submit(fn, *args, **kwargs)
        # The executor starts workers on demand and forgets them once broken: keep them, to
        # read how the one that died ended.
        self._processes.update(getattr(self._executor, "_processes", None) or {})
        return future

    def replace(self) -> str:
        """A fresh executor for a broken one; returns the skip reason for the file that
        broke it: killed by SIGKILL (out of memory, most likely) or crashed."""
        # Wait for the executor's own thread to reap its workers (the others it terminates):
        # read now, a dead worker's exit status could race with that thread's read of it.
        self._executor.shutdown(wait=True, cancel_futures=True)
        killed = any(p.exitcode == -signal.SIGKILL for p in self._processes.values())
        self._processes = {}
        self._executor = self._new_executor()
        return files.KILLED if killed else files.CRASHED

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def ordered(
        self,
        paths: Iterable[str],
        submit: Callable[[str], Future[R]],
        crashed: Callable[[str, str], R],
        ahead: int | Callable[[], int],
    ) -> Iterator[R]:
        """``submit(path)``'s results in the order of ``paths``, at most ``ahead`` in flight
        (a callable: asked again before each submission); ``crashed(path, reason)`` stands
        for the result of a file that kills its worker."""
        pending: deque[tuple[str, Future[R]]] = deque()
        remaining = iter(paths)
        limit = ahead if callable(ahead) else lambda: ahead
        while True:
            while len(pending) < limit() and (path := next(remaining, None)) is not None:
                pending.append((path, submit(path)))
            if not pending:
                return
            try:
                result = pending[0][1].result()
            except BrokenProcessPool:
                suspects = [path for path, _ in pending]
                pending.clear()
                self.replace()
                yield from self._one_by_one(suspects, submit, crashed)
                continue
            pending.popleft()
            yield result

    def _one_by_one(
        self,
        suspects: list[str],
        submit: Callable[[str], Future[R]],
        crashed: Callable[[str, str], R],
    ) -> Iterator[R]:
        """Each file that was in flight when a worker died, alone: the one that breaks the
        pool again is the culprit."""
        for path in suspects:
            try:
                yield submit(path).result()
            except BrokenProcessPool:
                yield crashed(path, self.replace())


def start_server_early() -> None:
    """Start the decode pools' fork server now: it imports torch (seconds of one core), which
    then overlaps the model load instead of following it, as the first pool would start it."""
    from multiprocessing import forkserver

    decode.worker_context()  # the preload every pool asks for
    forkserver.ensure_running()


def isolated_map(
    task: Callable[..., R],
    paths: list[str],
    stats: dict[str, files.FileStat],
    crashed: Callable[[str, str], R],
    *,
    workers: int,
    ahead: int | None = None,
) -> Iterator[R]:
    """``task(path, found=stat)`` for each path, in order: in this process when there are
    few (or ``workers`` is 0), else in a :class:`DecodePool`; ``task`` must be picklable."""
    if workers == 0 or len(paths) < MIN_FILES_FOR_POOL:
        yield from (task(path, found=stats.get(path)) for path in paths)
        return
    pool = DecodePool(workers)
    try:
        yield from pool.ordered(
            paths,
            lambda path: pool.submit(task, path, found=stats.get(path)),
            crashed,
            ahead or 4 * workers,
        )
    finally:
        pool.close()

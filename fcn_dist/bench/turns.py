"""Two training loops taking strict turns, one step each (the Ray Train overhead benchmark).

``fcn-bench service`` runs the same loop outside Ray and inside a Ray Train worker at once;
each is given a :class:`StepTurns` hook over a pair of FIFOs, so both are timed under the same
machine load, step by step, and each leaves the time it waited for the other out of its steps.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path
from typing import Iterator

from fcn_dist.train.hooks import LoopHooks


class StepTurns(LoopHooks):
    """``<directory>/<me>`` and ``<directory>/<other>`` are FIFOs; a step starts once a byte
    arrives on ours (a blocking read: no CPU while waiting) and hands the turn on by writing
    one to the other's. A turn not handed back within ``timeout`` seconds is taken anyway.
    The FIFOs are opened in the process that runs the loop (the hook is pickled to it)."""

    def __init__(self, directory: str | os.PathLike, me: str, other: str, timeout: float = 120.0) -> None:
        self.directory, self.me, self.other, self.timeout = str(directory), me, other, timeout
        self._fds: tuple[int, int] | None = None
        self._waited = 0.0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None, "_waited": 0.0}

    def _open(self) -> tuple[int, int]:
        if self._fds is None:
            d = Path(self.directory)
            self._fds = (os.open(d / self.me, os.O_RDWR), os.open(d / self.other, os.O_RDWR))
        return self._fds

    def wait(self) -> None:
        mine, _ = self._open()
        t = time.perf_counter()
        ready, _, _ = select.select([mine], [], [], self.timeout)
        if ready:
            os.read(mine, 1)
        self._waited += time.perf_counter() - t

    def release(self) -> None:
        os.write(self._open()[1], b"x")

    def take_waited(self) -> float:
        waited, self._waited = self._waited, 0.0
        return waited

    def wrap_batches(self, batches: Iterator) -> Iterator:
        """``batches``, each fetched (and then trained on) during our turn."""
        it = iter(batches)
        while True:
            self.wait()
            try:
                item = next(it)
            except StopIteration:
                self.release()
                return
            yield item
            self.release()  # the consumer asked for the next batch: its step is done

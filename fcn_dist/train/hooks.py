"""Hooks into the per-worker loop for tools that watch or pace it (benchmarks, fault tests).

Pass an instance as ``run(spec, hooks=...)`` / ``run_loop_locally(spec, hooks=...)``; Ray
pickles it to every worker. The loop calls the methods below and nothing else; the defaults do
nothing, so training code never depends on a tool.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from fcn_dist import fs as fsio
from fcn_dist.errors import FcnError
from fcn_dist.fs import Location


class LoopHooks:
    """The default hooks; override what you need (call ``super().on_start``)."""

    def on_start(self, rank: int, run_dir: Location) -> None:
        """A worker process started the loop as ``rank``: ``<run dir>/.worker-<rank>.pid`` says
        which process is which rank (for operators and the fault-injection tests)."""
        with contextlib.suppress(OSError, FcnError):
            fsio.write_text(run_dir / f".worker-{rank}.pid", f"{os.getpid()}\n")

    def wrap_batches(self, batches: Iterator) -> Iterator:
        """The training batches of one epoch, as the loop will consume them."""
        return batches

    def take_waited(self) -> float:
        """Seconds spent inside :meth:`wrap_batches` since the last call that are not this
        loop's own (left out of the step times)."""
        return 0.0

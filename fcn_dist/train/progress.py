"""A run's progress as its driver sees it: rank 0 writes it, the driver shows and forwards it.

Ray's own output (driver log forwarding, Train/Data progress, deprecation warnings) is off by
default, so the lines a user reads come from here: rank 0 keeps ``<run dir>/progress.json``
up to date (atomically: the step every couple of seconds, the epoch's metrics at its end), and
the driver polls it (:class:`fcn_dist.train.trainer.run` passes each new state to its
``on_progress`` callback). :class:`Console` shows it: one plain line per epoch when the output
is not a terminal (logs, CI), a live bar per epoch on a terminal.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, TextIO

from fcn_dist import fs as fsio
from fcn_dist.errors import FcnError

PROGRESS_FILE = "progress.json"


def write_progress(run_dir: str | os.PathLike, state: dict[str, Any]) -> None:
    """Replace ``progress.json`` atomically (a reader never sees half a file; on object
    storage it is one upload)."""
    fsio.write_text(fsio.location(run_dir) / PROGRESS_FILE, json.dumps(state, default=_plain))


def read_progress(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The last progress state of a run dir, or None (none yet, or unreadable)."""
    try:
        return json.loads(fsio.read_text(fsio.location(run_dir) / PROGRESS_FILE))
    except (OSError, ValueError, FcnError):
        return None


def _plain(v: Any) -> Any:
    return float(v) if hasattr(v, "__float__") else str(v)


class StepProgress:
    """Rank 0's writer: the step now and then, every epoch's end."""

    def __init__(self, run_dir: str | os.PathLike, run_id: str, epochs: int, steps: int,
                 every: float = 2.0) -> None:
        self.run_dir, self.every = run_dir, every
        self.base = {"run_id": run_id, "epochs": epochs, "steps": steps}
        self._last = 0.0
        self._epoch_start = time.time()
        self.done: list[dict[str, Any]] = []  # finished epochs' metrics (for the ETA)

    def start_epoch(self, epoch: int, step: int = 0) -> None:
        self._epoch_start = time.time()
        self._write(epoch, step, force=True)

    def step(self, epoch: int, step: int) -> None:
        self._write(epoch, step)

    def end_epoch(self, metrics: dict[str, Any]) -> None:
        self.done.append({k: v for k, v in metrics.items() if k in _LINE_KEYS})
        self._write(int(metrics["epoch"]), self.base["steps"], force=True)

    def _write(self, epoch: int, step: int, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.every:
            return
        self._last = now
        try:
            write_progress(self.run_dir, {**self.base, "epoch": epoch, "step": step, "time": now,
                                          "epoch_started": self._epoch_start, "done": self.done})
        except OSError:
            pass  # progress is for people watching; it must never stop a run


_LINE_KEYS = ("epoch", "train_loss", "val_loss", "miou", "pixel_accuracy", "images_per_second",
              "epoch_seconds")


def eta_seconds(state: dict[str, Any]) -> float | None:
    """Seconds left in the run, from the finished epochs' mean duration (None before the
    first epoch ends)."""
    done = state.get("done") or []
    if not done:
        return None
    left = int(state.get("epochs", 0)) - len(done)
    mean = sum(float(d.get("epoch_seconds") or 0.0) for d in done) / len(done)
    running = int(state.get("epoch", 0)) > len(done)  # an epoch is under way: part of it is done
    spent = time.time() - float(state.get("epoch_started") or time.time()) if running else 0.0
    return max(0.0, left * mean - spent)


def _fmt_eta(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def epoch_line(state: dict[str, Any], m: dict[str, Any]) -> str:
    """The one line per epoch: epoch k/N, train loss, val mIoU, pixel acc, img/s, ETA."""
    return (f"epoch {m['epoch']}/{state['epochs']}: train loss {m['train_loss']:.4f}, "
            f"val mIoU {m['miou']:.4f}, pixel acc {m['pixel_accuracy']:.4f}, "
            f"{m['images_per_second']:.1f} img/s, {m['epoch_seconds']:.1f} s, "
            f"ETA {_fmt_eta(eta_seconds(state))}")


class Console:
    """Shows a run's progress states: a plain line per finished epoch, or on a terminal a live
    bar per epoch (rich) that ends as that line. ``prefix`` starts every line (e.g. the job)."""

    def __init__(self, prefix: str = "", stream: TextIO | None = None, live: bool | None = None):
        self.prefix = prefix
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self._shown = 0  # finished epochs already printed
        self._bar: Any = None

    def __call__(self, state: dict[str, Any]) -> None:
        done = state.get("done") or []
        for m in done[self._shown:]:
            self._close_bar()
            self._print(epoch_line(state, m))
        self._shown = len(done)
        if self.live and int(state.get("epoch", 0)) > len(done):
            self._update_bar(state)

    def close(self) -> None:
        self._close_bar()

    def _print(self, line: str) -> None:
        self.stream.write(f"{self.prefix}{line}\n")
        self.stream.flush()

    def _update_bar(self, state: dict[str, Any]) -> None:
        from rich.console import Console as RichConsole
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self._bar is None:
            self._bar = Progress(TextColumn(f"{self.prefix}epoch {state['epoch']}/{state['epochs']}"),
                                 BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=RichConsole(file=self.stream), transient=True)
            self._task = self._bar.add_task("steps", total=max(1, int(state.get("steps") or 1)))
            self._bar.start()
        self._bar.update(self._task, completed=int(state.get("step") or 0))

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

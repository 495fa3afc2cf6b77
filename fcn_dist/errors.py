"""User-facing errors.

Every error a user can cause (a bad spec, a missing file, an unreachable Redis) is raised as a
subclass of :class:`FcnError` with a message that names the file, job or field at fault. The
command-line entry points catch :class:`FcnError` and print it as one line with a non-zero exit,
instead of a traceback from deep inside a library.
"""

from __future__ import annotations


class FcnError(Exception):
    """Base class for errors whose message is meant for the user as is."""


class SpecError(FcnError):
    """A job spec is invalid; the message names the field."""


class DataError(FcnError):
    """A dataset or shard is missing, corrupt or malformed; the message names the file."""


class WeightsError(FcnError):
    """Backbone weights cannot be obtained or do not fit the model."""


class QueueError(FcnError):
    """The job queue cannot do what was asked (unknown job, unreachable Redis, ...)."""


class TrainingError(FcnError):
    """A training run failed in a way the user must act on (non-finite loss, ...)."""


class Interrupted(FcnError):
    """A run stopped early because ``should_stop()`` said so (SIGTERM, cancel, lost lease); its
    checkpoint is saved and running it again resumes there."""


def is_interruption(exc: BaseException) -> bool:
    """True for :class:`Interrupted` and ``KeyboardInterrupt`` (a stop, not a failure)."""
    return isinstance(exc, (Interrupted, KeyboardInterrupt))

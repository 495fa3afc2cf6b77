"""The Redis job queue (``JobQueue``) and the worker daemon (``Worker``).

Importing this package is cheap: the training stack is imported only when the default job
function runs.
"""

from fcn_dist.errors import Interrupted, is_interruption
from fcn_dist.queue.job import (
    ACTIVE_STATES,
    DEFAULT_MAX_ATTEMPTS,
    STATES,
    TERMINAL_STATES,
    Job,
    JobState,
    Submission,
    idempotency_key,
)
from fcn_dist.queue.redis_queue import (
    DEFAULT_PREFIX,
    JobQueue,
    LeaseLost,
    RedisRefused,
    RedisUnavailable,
    redact_url,
)
from fcn_dist.queue.worker import Worker, load_run_fn, train_run_fn

__all__ = [
    "ACTIVE_STATES", "DEFAULT_MAX_ATTEMPTS", "DEFAULT_PREFIX", "STATES", "TERMINAL_STATES",
    "Interrupted", "Job", "JobQueue", "JobState", "LeaseLost", "RedisRefused", "RedisUnavailable",
    "Submission", "Worker", "idempotency_key", "is_interruption", "load_run_fn", "redact_url",
    "train_run_fn",
]

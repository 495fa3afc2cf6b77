"""Monitoring: custom Ray metrics, the dashboard link, and run names that say which job is which.

Every function here is cheap and safe to call anywhere: when Ray is not initialised in this
process (unit tests, ``fcn-jobs``, ``fcn-submit``) the ``record_*``/``job_*`` calls are no-ops,
and no call ever raises — a monitoring failure must never fail a job.

How the numbers reach Prometheus: ``ray.util.metrics`` objects record into the Ray core worker
of *this* process (driver, actor or Ray Train worker alike — drivers are exported too); the
core worker pushes them every ``RAY_metrics_report_interval_ms`` (10 s by default) to the
node's metrics agent, which serves them in the Prometheus text format at
``http://<node>:<metrics_export_port>/metrics`` (``ray start --metrics-export-port``). Ray
prefixes every name with ``ray_`` and adds ``SessionName``, ``NodeAddress``, ``WorkerId`` and
``Component`` labels, so gauges from several processes are told apart by ``WorkerId``. A
process's series leave the endpoint a few seconds after the process exits (verified on 2.60):
Prometheus must scrape while a run is live; the worker daemon re-exports a job's final mIoU.

Metric names as scraped (see ``cluster/README.md`` for what each means)::

    ray_fcn_queue_jobs{state}                        gauge   jobs in the queue per state
    ray_fcn_jobs_running{variant}                    gauge   jobs this worker process runs
    ray_fcn_jobs_started_total{variant}              counter jobs claimed and started
    ray_fcn_jobs_finished_total{variant,status}      counter succeeded/failed/cancelled/...
    ray_fcn_train_epoch{job_id,variant}              gauge   last finished epoch (1-based)
    ray_fcn_train_epoch_seconds{job_id,variant}      gauge   wall time of the last epoch
    ray_fcn_train_epoch_duration_seconds{variant}    histogram of epoch wall times
    ray_fcn_train_images_per_second{job_id,variant}  gauge   training throughput, all ranks
    ray_fcn_train_loss{job_id,variant}               gauge   mean training loss of the epoch
    ray_fcn_val_miou{job_id,variant}                 gauge   validation mean IoU (0..1)
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path
from typing import Any, Mapping

logger = logging.getLogger(__name__)

#: Prefix of every custom metric name (Ray adds ``ray_`` in front when exporting).
METRIC_PREFIX = "fcn_"
#: Set ``FCN_METRICS=0`` to turn all metric recording off.
METRICS_ENV = "FCN_METRICS"
#: A user-facing dashboard address (e.g. after ``kubectl port-forward``) that wins over Ray's.
DASHBOARD_ENV = "FCN_DASHBOARD_URL"
#: Ray Train records runs for the dashboard's train API only when this is "1" in the driver.
TRAIN_STATE_ENV = "RAY_TRAIN_ENABLE_STATE_TRACKING"

EPOCH_SECONDS_BOUNDARIES = [1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200]

_lock = threading.Lock()
_metrics: dict[str, Any] | None = None
_running: dict[str, int] = {}


# ----------------------------------------------------------------------------- names and links

def run_name(job_id: str | None, variant: str | None = None) -> str:
    """The Ray Train run name for a queue job: ``<job id>-<variant>``, e.g. ``j20261125-ab12-8s``.

    The same form as ``fcn_dist.train.trainer.default_run_dir`` (Ray Train names a run after its
    run directory), so use it for the run directory: ``run_dir = runs_path() / run_name(job.id,
    job.variant)``; the dashboard's train runs (``/api/train/v2/runs/v1``) then say which job
    and variant each run is. Filesystem- and URL-safe ([A-Za-z0-9._-], at most 100 characters)
    and stable: the same job always gets the same name, so a retried job resumes its run.
    """
    v = str(variant or "").strip().lower()
    if v.startswith("fcn"):
        v = v[3:]
    jid = str(job_id or "adhoc").strip()
    name = f"{jid}-{v}" if v else jid
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "run"
    return name[-100:] if len(name) > 100 else name


def _normalise_url(address: str | bytes | None) -> str | None:
    if not address:
        return None
    if isinstance(address, bytes):
        address = address.decode()
    address = address.strip().rstrip("/")
    if not address:
        return None
    if "://" not in address:
        address = "http://" + address
    return address


def dashboard_url() -> str | None:
    """The Ray dashboard's base URL (``http://host:port``), or None when it cannot be known.

    Looked up in order: ``$FCN_DASHBOARD_URL`` (what users should open, e.g. a port-forward),
    ``$RAY_OVERRIDE_DASHBOARD_URL``, the address the running dashboard registered in the GCS
    (when Ray is initialised in this process — works in drivers, actors and Train workers, where
    Ray's own ``get_dashboard_url()`` can be wrong), then an ``http(s)://`` ``$RAY_ADDRESS``.
    A dashboard bound to 0.0.0.0 is reported at the head node's IP.
    """
    for env in (DASHBOARD_ENV, "RAY_OVERRIDE_DASHBOARD_URL"):
        if os.environ.get(env):
            return _normalise_url(os.environ[env])
    try:
        import ray

        if ray.is_initialized():
            from ray._private import ray_constants
            from ray.experimental.internal_kv import _internal_kv_get

            raw = _internal_kv_get(
                ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD
            )
            url = _normalise_url(raw)
            if url and "://0.0.0.0:" in url:
                head_ip = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
                url = url.replace("0.0.0.0", head_ip, 1)
            if url:
                return url
    except Exception as exc:  # never fail a caller over a link
        logger.debug("dashboard_url: %s", exc)
    ray_address = os.environ.get("RAY_ADDRESS", "")
    if ray_address.startswith(("http://", "https://")):
        return _normalise_url(ray_address)
    return None


def dashboard_links(job_id: str | None = None, variant: str | None = None) -> dict[str, str]:
    """Links for a job's record / ``fcn-jobs show``: empty when no dashboard is known.

    Keys: ``dashboard`` (overview), ``ray_job`` (this driver's page in the Jobs view, when Ray
    is initialised here), ``train_runs`` (the Train runs API; find ``run_name`` in it),
    ``metrics`` (the dashboard's metrics page), ``run_name``.
    """
    base = dashboard_url()
    if not base:
        return {}
    links = {
        "dashboard": base,
        "train_runs": f"{base}/api/train/v2/runs/v1",
        "metrics": f"{base}/#/metrics",
    }
    try:
        import ray

        if ray.is_initialized():
            links["ray_job"] = f"{base}/#/jobs/{ray.get_runtime_context().get_job_id()}"
    except Exception as exc:
        logger.debug("dashboard_links: %s", exc)
    if job_id is not None:
        links["run_name"] = run_name(job_id, variant)
    return links


def auth_token() -> str | None:
    """The Ray auth token this process would use: ``$RAY_AUTH_TOKEN``, the file at
    ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        try:
            if path and Path(path).is_file():
                token = Path(path).read_text().strip()
                if token:
                    return token
        except OSError:
            continue
    return None


def dashboard_access_hint() -> str:
    """How to get into the dashboard, for wherever its link is printed (Ray 2.60 asks for a
    token when the cluster runs with token auth)."""
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        return f"sign in with the token in {path} (or `ray get-auth-token`)"
    return "if it asks for a token: `ray get-auth-token` on the head node"


def auth_headers() -> dict[str, str]:
    """HTTP headers for the dashboard API: ``Authorization: Bearer <token>`` if a token exists.

    Ray 2.60 dashboards started with token auth answer 401 without it (only ``/``,
    ``/api/healthz`` and a few health checks are public); sending it to a dashboard without
    auth is harmless.
    """
    token = auth_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def enable_train_state_tracking() -> None:
    """Make Ray Train record runs for the dashboard's train API (``/api/train/v2/runs/v1``).

    Sets ``RAY_TRAIN_ENABLE_STATE_TRACKING=1`` unless the user set it; call it in the process
    that builds the ``TorchTrainer`` (the worker daemon, ``fcn-train``) before the first run.
    """
    os.environ.setdefault(TRAIN_STATE_ENV, "1")


# ----------------------------------------------------------------------------- metrics

def enabled() -> bool:
    """True when metrics are recorded: Ray is initialised here and ``$FCN_METRICS`` != 0."""
    if os.environ.get(METRICS_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import ray

        return ray.is_initialized()
    except Exception:
        return False


def _get() -> dict[str, Any] | None:
    """The metric objects of this process, created on first use after ``ray.init``."""
    global _metrics
    if _metrics is not None:
        return _metrics
    if not enabled():
        return None
    with _lock:
        if _metrics is None:
            from ray.util.metrics import Counter, Gauge, Histogram

            job = ("job_id", "variant")
            p = METRIC_PREFIX
            _metrics = {
                "queue_jobs": Gauge(p + "queue_jobs", "Jobs in the Redis queue, per state.",
                                    tag_keys=("state",)),
                "jobs_running": Gauge(p + "jobs_running",
                                      "Jobs this worker process is running now.",
                                      tag_keys=("variant",)),
                "jobs_started": Counter(p + "jobs_started", "Jobs claimed and started.",
                                        tag_keys=("variant",)),
                "jobs_finished": Counter(p + "jobs_finished",
                                         "Jobs that ended, by final status.",
                                         tag_keys=("variant", "status")),
                "epoch": Gauge(p + "train_epoch", "Last finished epoch (1-based).",
                               tag_keys=job),
                "epoch_seconds": Gauge(p + "train_epoch_seconds",
                                       "Wall time of the last epoch, seconds.", tag_keys=job),
                "epoch_hist": Histogram(p + "train_epoch_duration_seconds",
                                        "Epoch wall times, seconds.",
                                        boundaries=EPOCH_SECONDS_BOUNDARIES,
                                        tag_keys=("variant",)),
                "images_per_second": Gauge(p + "train_images_per_second",
                                           "Training throughput over all ranks, images/s.",
                                           tag_keys=job),
                "train_loss": Gauge(p + "train_loss", "Mean training loss of the last epoch.",
                                    tag_keys=job),
                "val_miou": Gauge(p + "val_miou", "Validation mean IoU (0..1), last epoch.",
                                  tag_keys=job),
            }
    return _metrics


def _tags(**kw: Any) -> dict[str, str]:
    return {k: ("" if v is None else str(v)) for k, v in kw.items()}


def record_queue_depth(counts: Mapping[str, int]) -> None:
    """Set ``fcn_queue_jobs{state}`` from ``{state: count}`` (e.g. queued, running, succeeded,
    failed, dead, cancelled). Call it from the worker loop on each poll (cheap: one gauge set
    per state). No-op without Ray."""
    try:
        m = _get()
        if m is None:
            return
        for state, n in counts.items():
            m["queue_jobs"].set(float(n), tags=_tags(state=state))
    except Exception as exc:
        logger.debug("record_queue_depth: %s", exc)


def job_started(job_id: str, variant: str | None = None) -> None:
    """A worker started running a job: ``fcn_jobs_running`` +1, ``fcn_jobs_started`` +1."""
    try:
        m = _get()
        if m is None:
            return
        v = str(variant or "")
        with _lock:
            _running[v] = _running.get(v, 0) + 1
            running = _running[v]
        m["jobs_running"].set(float(running), tags=_tags(variant=v))
        m["jobs_started"].inc(1.0, tags=_tags(variant=v))
    except Exception as exc:
        logger.debug("job_started: %s", exc)


def job_finished(job_id: str, variant: str | None = None, status: str = "succeeded",
                 result: Mapping[str, Any] | None = None) -> None:
    """A job ended (status: the worker's outcome — succeeded, failed, queued (retry), cancelled,
    released, lost): ``fcn_jobs_running`` -1, ``fcn_jobs_finished{status}`` +1. Call exactly
    once per ``job_started``, in a ``finally``. With the run's ``result`` summary, its final
    ``miou`` is set on ``fcn_val_miou{job_id, variant}`` from this long-lived process: Ray drops
    a process's metrics from the endpoint seconds after it exits, so the Train workers' own
    per-epoch values vanish when the run ends, while the worker daemon's stay."""
    try:
        m = _get()
        if m is None:
            return
        v = str(variant or "")
        with _lock:
            _running[v] = max(0, _running.get(v, 0) - 1)
            running = _running[v]
        m["jobs_running"].set(float(running), tags=_tags(variant=v))
        m["jobs_finished"].inc(1.0, tags=_tags(variant=v, status=status))
        miou = (result or {}).get("miou") if isinstance(result, Mapping) else None
        if isinstance(miou, (int, float)):
            m["val_miou"].set(float(miou), tags=_tags(job_id=job_id, variant=variant))
    except Exception as exc:
        logger.debug("job_finished: %s", exc)


def record_epoch(
    job_id: str | None,
    variant: str | None,
    *,
    epoch: int | None = None,
    epoch_seconds: float | None = None,
    images_per_second: float | None = None,
    val_miou: float | None = None,
    train_loss: float | None = None,
) -> None:
    """Record one finished epoch of a job's training run; pass what you have (None = skip).

    Call it on rank 0 only (``ray.train.get_context().get_world_rank() == 0``), once per
    epoch, next to ``ray.train.report``; ``images_per_second`` is the global throughput
    (images of all ranks / epoch seconds). No-op without Ray.
    """
    try:
        m = _get()
        if m is None:
            return
        tags = _tags(job_id=job_id, variant=variant)
        if epoch is not None:
            m["epoch"].set(float(epoch), tags=tags)
        if epoch_seconds is not None:
            m["epoch_seconds"].set(float(epoch_seconds), tags=tags)
            m["epoch_hist"].observe(float(epoch_seconds), tags=_tags(variant=variant))
        if images_per_second is not None:
            m["images_per_second"].set(float(images_per_second), tags=tags)
        if train_loss is not None:
            m["train_loss"].set(float(train_loss), tags=tags)
        if val_miou is not None:
            m["val_miou"].set(float(val_miou), tags=tags)
    except Exception as exc:
        logger.debug("record_epoch: %s", exc)


def _reset_for_tests() -> None:
    """Forget the metric objects (after ``ray.shutdown()`` in tests)."""
    global _metrics
    with _lock:
        _metrics = None
        _running.clear()

"""fcn-worker: the worker daemon — claim jobs from the Redis queue and run them."""

from __future__ import annotations

import click

from fcn_dist.cli.support import Command, redis_options, setup_output


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@redis_options
@click.option("--ray-address", default=None, metavar="auto|ADDR",
              help="Ray cluster to run jobs on (passed to fcn_dist.train.run); default: local Ray.")
@click.option("--until-empty", is_flag=True,
              help="Exit once nothing is queued, no retry is pending and no job runs anywhere.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Exit after N jobs.")
@click.option("--lease-seconds", type=click.FloatRange(min=0.1), default=30.0, show_default=True,
              help="Lease of a claimed job; a worker silent this long loses the job.")
@click.option("--heartbeat-seconds", type=click.FloatRange(min=0.05), default=None,
              help="Heartbeat period (default: a third of the lease, at most 5 s).")
@click.option("--poll-interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Seconds between polls of an empty queue.")
@click.option("--retry-backoff", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="Seconds before retrying a failed job; doubles each attempt.")
@click.option("--retry-backoff-max", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="Cap of the retry backoff.")
@click.option("--run-fn", default=None, metavar="MODULE:FUNCTION",
              help="Job function (job, should_stop) -> result dict instead of a Ray Train run, "
                   "e.g. fcn_dist.queue.demo:run for smoke tests.")
@click.option("--worker-id", default=None, help="Worker name (default host-pid-random).")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Level of the worker's own lines; DEBUG also shows Ray's output.")
@click.option("--verbose", "-v", is_flag=True,
              help="Also show Ray's output (driver log forwarding, Train/Data progress, warnings); "
                   "it always goes to Ray's log files and the dashboard.")
def main(redis_url: str, prefix: str, ray_address: str | None, until_empty: bool,
         max_jobs: int | None, lease_seconds: float, heartbeat_seconds: float | None,
         poll_interval: float, retry_backoff: float, retry_backoff_max: float,
         run_fn: str | None, worker_id: str | None, log_level: str, verbose: bool) -> None:
    """Run jobs from the queue until stopped (SIGTERM/SIGINT put the current job back)."""
    from fcn_dist.queue.redis_queue import JobQueue
    from fcn_dist.queue.worker import Worker, load_run_fn

    setup_output(log_level, verbose)
    fn = load_run_fn(run_fn) if run_fn else None
    q = JobQueue(redis_url, prefix=prefix, backoff_base=retry_backoff, backoff_max=retry_backoff_max)
    w = Worker(q, fn, worker_id, lease_seconds=lease_seconds, heartbeat_seconds=heartbeat_seconds,
               poll_interval=poll_interval, max_jobs=max_jobs, until_empty=until_empty,
               ray_address=ray_address)
    w.run()


if __name__ == "__main__":
    main()

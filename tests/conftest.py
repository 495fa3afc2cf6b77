"""Shared fixtures: one local Ray instance per test session, a real Redis with a per-test prefix."""

from __future__ import annotations

import os
import uuid

import pytest

REDIS_URL = os.environ.get("FCN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session", autouse=True)
def data_root(tmp_path_factory):
    """The prepared-data root (FCN_DATA) of the session: its temporary directory, so datasets the
    tests prepare under tmp_path are inside it (specs may not point outside FCN_DATA)."""
    root = tmp_path_factory.getbasetemp()
    old = os.environ.get("FCN_DATA")
    os.environ["FCN_DATA"] = str(root)
    yield root
    if old is None:
        os.environ.pop("FCN_DATA", None)
    else:
        os.environ["FCN_DATA"] = old


@pytest.fixture(scope="session")
def ray_session():
    """Start (once) a local Ray instance for the whole test session.

    4 logical CPUs on a 2-core machine: training workers take fractional CPUs and Ray Data
    keeps room for its read/map tasks, which a strict 1-CPU-per-worker layout would starve.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=int(os.environ.get("FCN_TEST_RAY_CPUS", "4")),
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            object_store_memory=512 * 1024 * 1024,
        )
    yield ray
    # left running until interpreter exit: other session-scoped users may still need it


@pytest.fixture
def redis_prefix():
    """A unique key prefix on the real local Redis; its keys are deleted afterwards."""
    import redis

    prefix = f"fcntest:{uuid.uuid4().hex[:10]}:"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.fail(f"no Redis server answers at {REDIS_URL}; start one (see .ci/run)")
    yield prefix
    for key in client.scan_iter(match=prefix + "*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def redis_url():
    return REDIS_URL


@pytest.fixture
def cli(redis_url, redis_prefix):
    """``(submit, jobs)``: fcn-submit and fcn-jobs invoked on the test's Redis key prefix."""
    from click.testing import CliRunner

    from fcn_dist.cli import jobs as jobs_cli
    from fcn_dist.cli import submit as submit_cli

    runner = CliRunner()

    def submit(*args: str):
        return runner.invoke(submit_cli.main, [*args, "--redis-url", redis_url, "--prefix", redis_prefix])

    def jobs(*args: str):
        return runner.invoke(jobs_cli.main, ["--redis-url", redis_url, "--prefix", redis_prefix, *args])

    return submit, jobs

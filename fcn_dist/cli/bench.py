"""``fcn-bench``: model and service benchmarks; prints a table, ``--json OUT`` writes figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from fcn_dist.cli.support import Group
from fcn_dist.errors import FcnError


def _ints(value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        out = [int(v) for v in str(value).replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return out


def _write_json(path: str | None, res: dict[str, Any]) -> None:
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
        click.echo(f"wrote {p}", err=True)


@click.group(cls=Group, fcn_error_code=2,  # a benchmark error is about its options: exit 2
             context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmarks: `fcn-bench model NAME` (throughput, latency, memory, utilisation),
    `fcn-bench service` (Ray Train overhead, ingest, queue, store), `fcn-bench train` (the
    service's training against a plain loop) and `fcn-bench queue-memory` (Redis bytes per
    finished job, retention on vs off). Figures, never asserts."""


@main.command()
@click.argument("name", default="fcn8s_vgg19")
@click.option("--size", type=int, default=None, help="main input size (square); default 224")
@click.option("--sizes", default=None, metavar="LIST",
              help="comma-separated sizes for inference (first = main), e.g. 224,512,1024")
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--num-classes", type=int, default=3, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
              show_default=True)
@click.option("--iters", type=int, default=3, show_default=True,
              help="timed inference calls per size (best is reported)")
@click.option("--train-iters", type=int, default=2, show_default=True)
@click.option("--latency-iters", type=int, default=10, show_default=True)
@click.option("--gemm-sizes", default="1024,2048,4096", show_default=True, metavar="LIST")
@click.option("--threads", type=int, default=None, help="intra-op threads (default: cores)")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="also time the plain fp32 eager model (for speedups)")
@click.option("--training/--no-training", default=True, show_default=True)
@click.option("--memory/--no-memory", default=True, show_default=True,
              help="peak memory per configuration (a fresh subprocess each)")
@click.option("--compile", "compile_", is_flag=True, help="also torch.compile the model")
@click.option("--profile/--no-profile", default=True, show_default=True,
              help="time share per kernel family (torch.profiler)")
@click.option("--ablation", is_flag=True,
              help="time each speed setting added one at a time (round robin)")
@click.option("--json", "json_out", default=None, metavar="OUT", help="write figures as JSON")
def model(name, size, sizes, batch, num_classes, device, iters, train_iters, latency_iters,
          gemm_sizes, threads, baseline, training, memory, compile_, profile, ablation,
          json_out) -> None:
    """Inference/training images/s, latency, memory, GFLOPs and utilisation of model NAME."""
    import torch

    from fcn_dist.bench.model import format_model_table, run_model_bench

    size_list = _ints(sizes) or []
    if size is not None:
        size_list = [size] + [s for s in size_list if s != size]
    size_list = size_list or [224]
    if device == "cuda" and not torch.cuda.is_available():
        raise FcnError("--device cuda: no CUDA device available")
    res = run_model_bench(
        name, sizes=size_list, batch=batch, num_classes=num_classes,
        device=None if device == "auto" else device, iters=iters,
        train_iters=train_iters, latency_iters=latency_iters,
        gemm_sizes=tuple(_ints(gemm_sizes) or [2048]), baseline=baseline,
        training=training, memory=memory, compile=compile_, profile=profile, ablation=ablation,
        threads=threads, log=lambda s: click.echo(s, err=True))
    click.echo(format_model_table(res))
    _write_json(json_out, res)


_PARTS = ("train", "ingest", "queue", "store")


@main.command()
@click.option("--model", "model_name", default="fcn8s_resnet18", show_default=True,
              help="model trained in the Ray Train / outside-Ray comparison")
@click.option("--size", type=int, default=128, show_default=True, help="crop size")
@click.option("--batch", type=int, default=8, show_default=True)
@click.option("--steps", type=int, default=8, show_default=True, help="training steps per epoch")
@click.option("--epochs", type=click.IntRange(1), default=2, show_default=True,
              help="epochs per training run (the first is left out of the steady figures)")
@click.option("--repeats", type=click.IntRange(1), default=1, show_default=True,
              help="outside-Ray / Ray Train run pairs, taking turns step by step (the overhead is the median over pairs)")
@click.option("--settle", "settle_seconds", type=float, default=20.0, show_default=True,
              help="seconds the local Ray is left to start up before the Ray Train job (as "
                   "under a long-running fcn-worker); 0 still starts Ray before the job")
@click.option("--count", type=int, default=160, show_default=True,
              help="synthetic images (train split = 80%; raised to fill --steps batches)")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="Redis for the queue figures (a unique key prefix, removed afterwards)")
@click.option("--queue-jobs", type=int, default=500, show_default=True)
@click.option("--store-runs", type=int, default=10_000, show_default=True)
@click.option("--store-epochs", type=int, default=10, show_default=True)
@click.option("--only", "only", multiple=True, type=click.Choice(_PARTS),
              help="run only these parts (repeatable); default: all")
@click.option("--skip", "skip", multiple=True, type=click.Choice(_PARTS),
              help="skip these parts (repeatable)")
@click.option("--json", "json_out", default=None, metavar="OUT", help="write figures as JSON")
def service(model_name, size, batch, steps, epochs, repeats, settle_seconds, count, redis_url, queue_jobs, store_runs,
            store_epochs, only, skip, json_out) -> None:
    """Ray Train overhead, Ray Data ingest, Redis submit latency, Parquet store figures."""
    from fcn_dist.bench.service import format_service_table, run_service_bench

    parts = tuple(p for p in (only or _PARTS) if p not in skip)
    if not parts:
        raise FcnError("nothing to run (every part skipped)")
    res = run_service_bench(model=model_name, size=size, batch=batch, steps=steps,
                            epochs=epochs, repeats=repeats, settle_seconds=settle_seconds,
                            count=count, redis_url=redis_url, queue_jobs=queue_jobs,
                            store_runs=store_runs, store_epochs=store_epochs, parts=parts,
                            log=lambda s: click.echo(s, err=True))
    click.echo(format_service_table(res))
    _write_json(json_out, res)


@main.command()
@click.option("--spec", "spec_path", required=True, metavar="FILE", help="Job spec (YAML).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec field (repeatable); steps_per_epoch is required.")
@click.option("--repeats", type=click.IntRange(1), default=2, show_default=True,
              help="(plain loop, service) pairs, who goes first alternating")
@click.option("--plain-steps", type=click.IntRange(2), default=None,
              help="steps of each plain-loop run (default: steps_per_epoch x (epochs - 1))")
@click.option("--json", "json_out", default=None, metavar="OUT", help="write figures as JSON")
def train(spec_path, overrides, repeats, plain_steps, json_out) -> None:
    """Images/s training through the service (Ray Train, Ray Data, metrics, checkpoints)
    against a plain single-process loop of the same model, data, batch and threads."""
    from fcn_dist.bench.train import format_train_table, run_train_bench
    from fcn_dist.cli.support import setup_output
    from fcn_dist.spec import load_spec

    setup_output("INFO", False)
    spec = load_spec(spec_path, overrides)
    if not spec.steps_per_epoch:
        raise FcnError("fcn-bench train needs a step count: --set steps_per_epoch=N")
    res = run_train_bench(spec, repeats=repeats, plain_steps=plain_steps,
                          say=lambda s: click.echo(s, err=True))
    click.echo(format_train_table(res))
    _write_json(json_out, res)


@main.command("queue-memory")
@click.option("--jobs", type=click.IntRange(1), default=10_000, show_default=True,
              help="jobs run through the queue with retention on, then off")
@click.option("--per-job", type=click.IntRange(1), default=500, show_default=True,
              help="finished jobs (kept) measured for the bytes per job by key kind")
@click.option("--retention", default="1s", show_default=True, metavar="DURATION",
              help="the short retention of the 'on' run")
@click.option("--redis-url", default="redis://127.0.0.1:6379/0", show_default=True,
              help="Redis to measure on (a unique key prefix, removed afterwards)")
@click.option("--json", "json_out", default=None, metavar="OUT", help="write figures as JSON")
def queue_memory(jobs, per_job, retention, redis_url, json_out) -> None:
    """Redis memory per finished job by key kind, and after JOBS jobs with retention on vs off."""
    from fcn_dist.bench.queue_memory import bench_queue_memory, format_queue_memory

    res = bench_queue_memory(redis_url, jobs=jobs, per_job=per_job, retention=retention,
                             log=lambda s: click.echo(s, err=True))
    click.echo(format_queue_memory(res))
    _write_json(json_out, res)


if __name__ == "__main__":  # pragma: no cover
    main()

"""Service benchmark: Ray Train overhead, Ray Data ingest, Redis queue, Parquet store.

Each part returns a JSON-able dict (or ``{"skipped": reason}`` when what it needs is missing:
Redis not reachable, a package not landed). The parts share a small synthetic dataset made
with :func:`fcn_dist.data.prepare`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fcn_dist.bench.timing import machine_info, percentile
from fcn_dist.spec import JobSpec
from fcn_dist.train.hooks import LoopHooks

__all__ = [
    "bench_ingest",
    "bench_local_loop",
    "bench_queue",
    "bench_ray_train",
    "bench_store",
    "format_service_table",
    "run_service_bench",
]


def _spec(model: str, size: int, batch: int, steps: int, data_dir: str, epochs: int = 2,
          **kw: Any):
    from fcn_dist.models import parse_model_name
    from fcn_dist.spec import JobSpec

    variant, backbone = parse_model_name(model)
    return JobSpec(name="bench", data=str(data_dir), variant=variant, backbone=backbone,
                   backbone_weights=None, epochs=epochs, batch_size=batch, crop_size=[size, size],
                   eval_size=[size, size], num_workers=1, use_gpu="auto", steps_per_epoch=steps,
                   data_loader="torch", verify_data=False, max_failures=0, **kw)


def prepare_data(out: str | os.PathLike, count: int, size: int) -> str:
    """A synthetic dataset (``count`` images of ``size``^2) under ``out``; returns its path."""
    from fcn_dist.data import prepare

    prepare("synthetic", out, count=count, size=(size, size), overwrite=True)
    return str(out)


def _epoch_figures(store_root: str) -> list[dict[str, Any]]:
    from fcn_dist.store import ResultsStore

    rows = sorted(ResultsStore(store_root).epochs().to_pylist(), key=lambda r: r["epoch"])
    return [{"epoch": r["epoch"], "images_per_second": r["images_per_second"],
             "step_seconds": r.get("step_seconds"), "epoch_seconds": r["epoch_seconds"]}
            for r in rows]


def _steady(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """Steady-state figures: epoch 1 (kernel warm-up, allocator growth) is left out when
    there are later epochs; the step time is the median over the remaining epochs' medians."""
    later = epochs[1:] or epochs
    steps = [e["step_seconds"] for e in later if e.get("step_seconds")]
    ips = [e["images_per_second"] for e in later if e.get("images_per_second")]
    return {"step_seconds": statistics.median(steps) if steps else None,
            "images_per_second": statistics.median(ips) if ips else None}


def bench_local_loop(spec: JobSpec, store_root: str, run_dir: str,
                     hooks: LoopHooks | None = None) -> dict[str, Any]:
    """The same training loop outside Ray: :func:`fcn_dist.train.trainer.run_loop_locally`
    (Ray Train's local mode: ``train_loop_per_worker`` as a plain function in this process,
    no Ray cluster). Step times come from the loop's epoch rows, as for the Ray run."""
    from fcn_dist.train.trainer import run_loop_locally

    os.environ["FCN_STORE"] = store_root
    t0 = time.time()
    summary = run_loop_locally(spec, run_dir=run_dir, hooks=hooks)
    out: dict[str, Any] = {"epochs": _epoch_figures(store_root), "run_seconds": time.time() - t0,
                           "threads": torch.get_num_threads(), "status": summary.get("status")}
    out.update(_steady(out["epochs"]))
    return out


def _machine_busy(seconds: float) -> float | None:
    """Fraction of all CPUs busy (any process) over the next ``seconds``, from /proc/stat."""
    def read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return sum(vals) - idle, sum(vals)

    a = read()
    time.sleep(seconds)
    b = read()
    if a is None or b is None or b[1] == a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def bench_ray_train(spec: JobSpec, store_root: str, run_dir: str, redis_url: str | None = None,
                    hooks: LoopHooks | None = None) -> dict[str, Any]:
    """``fcn_dist.train.run`` (1 worker): per-epoch images/s, and claim -> first step time.

    When Redis is reachable the job goes through :class:`fcn_dist.queue.JobQueue` (unique
    prefix, removed afterwards): submitted, claimed, run, completed, and the time from the
    claim to the first training step is measured as (first epoch row seen in the store) minus
    (that epoch's seconds) minus the claim time; the polling adds at most 0.1 s.
    """
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    os.environ["FCN_STORE"] = store_root
    out: dict[str, Any] = {}
    queue = prefix = None
    job_id = None
    t_claim = None
    with contextlib.suppress(Exception):
        if redis_url:
            from fcn_dist.queue import JobQueue

            prefix = f"fcnbench:{uuid.uuid4().hex[:12]}:"
            queue = JobQueue(redis_url, prefix=prefix)
            queue.ping()
    try:
        if queue is not None:
            sub = queue.submit(spec)
            job_id = getattr(sub, "job_id", None) or getattr(sub, "id", None) or str(sub)
            t_claim = time.time()
            job = queue.claim("bench-worker", lease_seconds=3600)
            job_id = getattr(job, "id", None) or getattr(job, "job_id", None) or job_id
        t_start = time.time()
        result: dict[str, Any] = {}
        error: list[BaseException] = []

        def target() -> None:
            try:
                result.update(run(spec, job_id=job_id, run_dir=run_dir, hooks=hooks))
            except BaseException as e:  # noqa: BLE001 - reported below
                error.append(e)

        th = threading.Thread(target=target, daemon=True)
        th.start()
        first_row_seen = None
        store = ResultsStore(store_root)
        while th.is_alive():
            th.join(0.1)
            if first_row_seen is None:
                with contextlib.suppress(Exception):
                    tab = store.epochs()
                    if tab.num_rows:
                        first_row_seen = time.time()
        if error:
            raise error[0]
        out["epochs"] = rows = _epoch_figures(store_root)
        out.update(_steady(rows))
        out["run_seconds"] = time.time() - t_start
        out["train_seconds"] = result.get("train_seconds")
        if rows and first_row_seen is not None:
            first_step = first_row_seen - rows[0]["epoch_seconds"]
            out["start_to_first_step_seconds"] = first_step - t_start
            if t_claim is not None:
                out["claim_to_first_step_seconds"] = first_step - t_claim
        if queue is not None and job_id:
            with contextlib.suppress(Exception):
                queue.complete(job_id, "bench-worker", result, lease=job.lease)
    finally:
        if queue is not None:
            _drop_prefix(queue, prefix)
    return out


def bench_train_pairs(spec: JobSpec, work: str, repeats: int, redis_url: str | None,
                      settle_seconds: float) -> dict[str, Any]:
    """The Ray Train overhead: the same loop outside Ray and in Ray Train, step by step.

    A local Ray is started here and left ``settle_seconds`` (its processes import and
    register for a while after a start; ``fcn-worker`` keeps its Ray across jobs, so that is
    start-up cost, reported as ``ray_start_seconds``), and its idle cost is taken (machine CPU
    busy over 5 s). Then, ``repeats`` times, two runs of the same spec go side by side:
    :func:`~fcn_dist.train.trainer.run_loop_locally` in a plain subprocess (the loop outside
    Ray) and :func:`~fcn_dist.train.run` (the loop in a 1-worker Ray Train job). They take
    strict turns, one training step each (:class:`fcn_dist.bench.turns.StepTurns`), so a machine whose speed drifts by 10-20 % from minute to
    minute (a shared VM) slows both alike, and each times only its own steps. The first Ray
    job goes through the Redis queue for the claim -> first step time.
    """
    import json
    import subprocess

    import ray

    from fcn_dist.bench.turns import StepTurns
    from fcn_dist.train.trainer import _init_ray_keeping_signal_handlers

    out: dict[str, Any] = {"local": [], "ray": [], "settle_seconds": settle_seconds}
    t0 = time.time()
    _init_ray_keeping_signal_handlers(None)
    out["ray_start_seconds"] = time.time() - t0
    time.sleep(max(0.0, settle_seconds - 5.0))
    out["ray_idle_cpu_fraction"] = _machine_busy(5.0)  # Ray idle + whatever else runs
    try:
        for rep in range(repeats):
            turns = os.path.join(work, f"turns-{rep}")
            os.makedirs(turns)
            for name in ("local", "ray"):
                os.mkfifo(os.path.join(turns, name))
            first = os.open(os.path.join(turns, "local" if rep % 2 == 0 else "ray"), os.O_RDWR)
            os.write(first, b"x")  # who starts alternates from pair to pair
            cfg = {"mode": "local", "spec": spec.to_json(), "turns": turns,
                   "store_root": os.path.join(work, f"store-local-{rep}"),
                   "run_dir": os.path.join(work, "runs", f"local-{rep}")}
            local = subprocess.Popen(
                [sys.executable, "-m", "fcn_dist.bench.service", json.dumps(cfg)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out["ray"].append(bench_ray_train(
                    spec, os.path.join(work, f"store-ray-{rep}"),
                    os.path.join(work, "runs", f"ray-{rep}"), redis_url if rep == 0 else None,
                    hooks=StepTurns(turns, "ray", "local")))
            finally:
                stdout, stderr = local.communicate(timeout=1800)
                os.close(first)
            out["local"].append(_last_json(stdout, stderr, local.returncode))
    finally:
        ray.shutdown()
    return out


def _last_json(stdout: str, stderr: str, returncode: int | None) -> dict[str, Any]:
    import json

    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"subprocess exited {returncode}: {tail[:300]}"}


def _in_subprocess(config: dict[str, Any], timeout: float = 1800) -> dict[str, Any]:
    """:func:`bench_train_pairs` (``config["mode"] == "pairs"``) in a fresh Python process
    with its own local Ray, started and stopped there: the benchmark process never holds a
    Ray connection."""
    import json
    import subprocess

    cmd = [sys.executable, "-m", "fcn_dist.bench.service", json.dumps(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return _last_json(proc.stdout, proc.stderr, proc.returncode)


def _drop_prefix(queue: Any, prefix: str | None) -> int:
    if not prefix:
        return 0
    keys = list(queue.redis.scan_iter(match=prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        queue.redis.delete(*keys[i:i + 500])
    with contextlib.suppress(Exception):
        queue.close()
    return len(keys)


def bench_ingest(data_dir: str, size: int, batch: int, epochs: int = 2) -> dict[str, Any]:
    """Ray Data ingest (``fcn_dist.data.load``: decode + paired train transforms) images/s."""
    import ray

    from fcn_dist.data import load

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)
    ds = load(data_dir, "train", mode="train", crop_size=(size, size), seed=0)
    out: dict[str, Any] = {"epochs": []}
    for _ in range(epochs):
        t0 = time.perf_counter()
        first = None
        n = 0
        for b in ds.iter_torch_batches(batch_size=batch,
                                       dtypes={"image": torch.float32, "label": torch.int64}):
            if first is None:
                first = time.perf_counter() - t0
            n += int(b["image"].shape[0])
        total = time.perf_counter() - t0
        out["epochs"].append({"images": n, "seconds": total, "first_batch_seconds": first,
                              "images_per_second": n / total if total else 0.0})
    last = out["epochs"][-1]
    out["images_per_second"] = max(e["images_per_second"] for e in out["epochs"])
    out["images_per_second_after_first_batch"] = (
        (last["images"] - batch) / (last["seconds"] - last["first_batch_seconds"])
        if last["seconds"] > last["first_batch_seconds"] and last["images"] > batch else None)
    return out


def bench_queue(redis_url: str, jobs: int = 500) -> dict[str, Any]:
    """Submit latency (p50/p95) and jobs/s, claim latency, through Redis; keys removed after."""
    from fcn_dist.queue import JobQueue
    from fcn_dist.spec import JobSpec

    prefix = f"fcnbench:{uuid.uuid4().hex[:12]}:"
    q = JobQueue(redis_url, prefix=prefix)
    try:
        q.ping()
        specs = [JobSpec(name=f"bench{i}", seed=i) for i in range(jobs)]
        lat = []
        t_all = time.perf_counter()
        for s in specs:
            t0 = time.perf_counter()
            q.submit(s)
            lat.append(time.perf_counter() - t0)
        total = time.perf_counter() - t_all
        claim = []
        for _ in range(min(jobs, 200)):
            t0 = time.perf_counter()
            q.claim("bench-worker", lease_seconds=60)
            claim.append(time.perf_counter() - t0)
        return {"jobs": jobs, "submit_ms_p50": 1e3 * percentile(lat, 50),
                "submit_ms_p95": 1e3 * percentile(lat, 95), "jobs_per_second": jobs / total,
                "claim_ms_p50": 1e3 * percentile(claim, 50),
                "claim_ms_p95": 1e3 * percentile(claim, 95), "prefix": prefix}
    finally:
        _drop_prefix(q, prefix)


def _bench_store_module() -> Any:
    """``benchmarks/bench_store.py`` (the store benchmark's library code), or None."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_store.py"
    if not path.exists():
        return None
    bdir = str(path.parent)
    if bdir not in sys.path:  # so its worker processes can import it by name
        sys.path.insert(0, bdir)
    spec = importlib.util.spec_from_file_location("bench_store", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_store"] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def bench_store(runs: int = 10_000, epochs: int = 10, latency_rows: int = 500,
                procs: int | None = None) -> dict[str, Any]:
    """Parquet store: append latency per epoch row; ``compare`` over ``runs`` x ``epochs`` rows.

    Reuses ``benchmarks/bench_store.py`` (writers and timers) and the CLI's code path
    (``fcn_dist.store.report.compare`` + ``format_compare``), uncompacted and compacted.
    """
    from concurrent.futures import ProcessPoolExecutor

    from fcn_dist.store import ResultsStore
    from fcn_dist.report import compare, format_compare

    bs = _bench_store_module()
    if bs is None:
        return {"skipped": "benchmarks/bench_store.py not found (run from a source checkout)"}
    root = tempfile.mkdtemp(prefix="fcn-bench-store-")
    try:
        lat = sorted(bs._append_latency(os.path.join(root, "latency"), latency_rows))
        out: dict[str, Any] = {"append_ms_p50": 1e3 * statistics.median(lat),
                               "append_ms_p95": 1e3 * percentile(lat, 95),
                               "append_rows": latency_rows}
        procs = procs or os.cpu_count() or 2
        t0 = time.perf_counter()
        step = max(1, runs // (procs * 8))
        chunks = [(root, lo, min(runs, lo + step), epochs) for lo in range(0, runs, step)]
        with ProcessPoolExecutor(procs) as ex:
            list(ex.map(bs._write_runs, chunks))
        out["write_seconds"] = time.perf_counter() - t0
        out["runs"], out["epoch_rows"] = runs, runs * epochs

        def measure(label: str) -> None:
            fresh = lambda: ResultsStore(root)  # noqa: E731
            out[f"compare_seconds_{label}"] = bs._time(lambda: compare(fresh()))
            out[f"compare_table_seconds_{label}"] = bs._time(
                lambda: format_compare(compare(fresh()), "table"))

        measure("uncompacted")
        store = ResultsStore(root, auto_compact=False)
        store.compact("runs")
        store.compact("epochs")
        measure("compacted")
        out["compare_rows"] = len(compare(ResultsStore(root)))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _part(name: str, fn: Callable[[], dict[str, Any]], say: Callable[[str], None]
          ) -> dict[str, Any]:
    say(f"{name} ...")
    t0 = time.perf_counter()
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - one failing part must not hide the others
        res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    res["bench_seconds"] = time.perf_counter() - t0
    return res


def run_service_bench(
    *,
    model: str = "fcn8s_resnet18",
    size: int = 128,
    batch: int = 8,
    steps: int = 8,
    count: int = 160,
    epochs: int = 2,
    repeats: int = 1,
    settle_seconds: float = 20.0,
    redis_url: str | None = "redis://127.0.0.1:6379/0",
    queue_jobs: int = 500,
    store_runs: int = 10_000,
    store_epochs: int = 10,
    parts: tuple[str, ...] = ("train", "ingest", "queue", "store"),
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the chosen ``parts``; returns a JSON-able dict keyed by part plus derived ratios."""
    say = log or (lambda s: None)
    res: dict[str, Any] = {"machine": machine_info("cpu"), "model": model, "size": size,
                           "batch": batch, "steps_per_epoch": steps,
                           "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    work = tempfile.mkdtemp(prefix="fcn-bench-service-")
    os.environ["FCN_DATA"] = work  # the benchmark's data root (specs stay inside FCN_DATA)
    try:
        data_dir = None
        if "train" in parts or "ingest" in parts:
            say("preparing synthetic data ...")
            # enough train images (80 % of them) for `steps` full batches
            count = max(count, math.ceil(steps * batch / 0.8) + 2)
            data_dir = prepare_data(os.path.join(work, "data"), count, size)
        if "train" in parts:
            spec = _spec(model, size, batch, steps, data_dir, epochs=epochs)
            from fcn_dist.train.trainer import resolve_resources
            _, per_worker = resolve_resources(spec, {"CPU": float(os.cpu_count() or 1)})
            runs = _part(f"{repeats} pair(s): the loop outside Ray (Ray Train local mode) and in "
                         "a 1-worker Ray Train job, taking turns step by step", lambda: _in_subprocess({
                             "mode": "pairs", "spec": spec.to_json(), "work": work,
                             "repeats": repeats, "redis_url": redis_url,
                             "settle_seconds": settle_seconds}), say)
            if "error" in runs:
                res["train"] = {"error": runs["error"]}
                runs = {"local": [], "ray": []}
            else:
                res["train"] = {"local": runs["local"], "ray": runs["ray"],
                                "ray_worker_cpus": per_worker, "repeats": repeats}

            def best(mode: str, key: str, fn=min) -> Any:
                vals = [r[key] for r in runs[mode] if r.get(key)]
                return fn(vals) if vals else None

            # the least disturbed run of each (shortest steady step) on a shared machine, and
            # the median over the alternated pairs (the figure quoted as the overhead)
            loc, ray_s = best("local", "step_seconds"), best("ray", "step_seconds")
            t = res["train"]
            t["local_step_seconds"], t["ray_step_seconds"] = loc, ray_s
            # images/s from the step time: the runs took turns, so per-epoch rates count waits
            t["local_images_per_second"] = spec.batch_size / loc if loc else None
            t["ray_images_per_second"] = spec.batch_size / ray_s if ray_s else None
            if loc and ray_s:
                res["ray_train_overhead_best_vs_best"] = ray_s / loc - 1
            ratios = [r["step_seconds"] / l_["step_seconds"] - 1
                      for l_, r in zip(runs["local"], runs["ray"])
                      if r.get("step_seconds") and l_.get("step_seconds")]
            res["ray_train_overhead_per_pair"] = ratios
            if ratios:
                res["ray_train_overhead"] = statistics.median(ratios)
            res["claim_to_first_step_seconds"] = best("ray", "claim_to_first_step_seconds")
            for k in ("ray_start_seconds", "ray_idle_cpu_fraction"):
                res[k] = runs.get(k)
        if "ingest" in parts:
            res["ingest"] = _part("ray data ingest", lambda: bench_ingest(data_dir, size, batch),
                                  say)
            # the fastest consumer measured (Ray Train worker or the plain loop)
            t = res.get("train", {})
            consumed = max(t.get("local_images_per_second") or 0.0,
                           t.get("ray_images_per_second") or 0.0) or None
            if consumed and res["ingest"].get("images_per_second"):
                res["ingest_over_training"] = res["ingest"]["images_per_second"] / consumed
        if "queue" in parts:
            res["queue"] = _part("redis queue", lambda: bench_queue(redis_url, queue_jobs), say)
        if "store" in parts:
            res["store"] = _part("parquet store", lambda: bench_store(store_runs, store_epochs),
                                 say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
    res["machine"]["load_average_end"] = machine_info("cpu").get("load_average")
    return res


def _g(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)  # type: ignore[assignment]
    return d


def format_service_table(res: dict[str, Any]) -> str:
    """Plain-text summary of :func:`run_service_bench`."""
    def f(v: Any, spec: str = ".2f", unit: str = "") -> str:
        return "-" if v is None else (format(v, spec) + unit if isinstance(v, (int, float))
                                      else str(v))

    m = res["machine"]
    lines = [f"service benchmark: {res['model']} {res['size']}x{res['size']} batch {res['batch']}"
             f"  ({m['cpu']}, {m['cores']} cores; load {m.get('load_average')} -> "
             f"{m.get('load_average_end')})"]
    for part in ("train", "ingest", "queue", "store"):
        if part in res and isinstance(res[part], dict):
            err = res[part].get("error") or _g(res[part], "ray", "error")
            if err:
                lines.append(f"  {part}: error: {err}")
    if "train" in res:
        t = res["train"]
        pairs = ", ".join(format(x, "+.1%") for x in res.get("ray_train_overhead_per_pair") or [])
        lines += [
            f"  training step (median, data fetch included): outside Ray (local mode) "
            f"{f(_g(t, 'local_step_seconds'), '.4f', ' s')}, Ray Train 1 worker "
            f"{f(_g(t, 'ray_step_seconds'), '.4f', ' s')} (batch / step: "
            f"{f(_g(t, 'local_images_per_second'))} / {f(_g(t, 'ray_images_per_second'))} images/s)",
            f"  Ray Train overhead: {f(res.get('ray_train_overhead'), '+.1%')} of step time "
            f"(median of {t.get('repeats')} alternated pair(s): {pairs or '-'}; best vs best "
            f"{f(res.get('ray_train_overhead_best_vs_best'), '+.1%')})",
            f"  claim -> first training step: {f(res.get('claim_to_first_step_seconds'), '.1f', ' s')}"
            f" (Ray already up, as under fcn-worker; starting a local Ray took "
            f"{f(res.get('ray_start_seconds'), '.1f', ' s')}; machine busy while Ray idles: "
            f"{f(res.get('ray_idle_cpu_fraction'), '.1%')})",
        ]
    if "ingest" in res:
        lines.append(f"  Ray Data ingest: {f(_g(res, 'ingest', 'images_per_second'))} images/s "
                     f"({f(res.get('ingest_over_training'), '.1f', 'x')} what training consumes)")
    if "queue" in res:
        q = res["queue"]
        lines.append(f"  queue: submit p50 {f(q.get('submit_ms_p50'))} ms, p95 "
                     f"{f(q.get('submit_ms_p95'))} ms, {f(q.get('jobs_per_second'), '.0f')} jobs/s; "
                     f"claim p50 {f(q.get('claim_ms_p50'))} ms")
    if "store" in res:
        s = res["store"]
        if "skipped" in s:
            lines.append(f"  store: skipped ({s['skipped']})")
        else:
            lines.append(
                f"  store: append p50 {f(s.get('append_ms_p50'))} ms/row (p95 "
                f"{f(s.get('append_ms_p95'))}); compare over {f(s.get('epoch_rows'), 'd')} epoch "
                f"rows / {f(s.get('runs'), 'd')} runs: {f(s.get('compare_seconds_uncompacted'), '.2f')} s "
                f"uncompacted, {f(s.get('compare_seconds_compacted'), '.2f')} s compacted")
    return "\n".join(lines)


if __name__ == "__main__":  # the Ray Train part, run by _in_subprocess
    import json

    from fcn_dist.spec import JobSpec

    _cfg = json.loads(sys.argv[1])
    _spec_ = JobSpec.from_json(_cfg["spec"])
    if _cfg.get("mode") == "pairs":
        _out = bench_train_pairs(_spec_, _cfg["work"], _cfg["repeats"], _cfg.get("redis_url"),
                                 _cfg["settle_seconds"])
    else:  # "local": one side of a pair, started by bench_train_pairs
        from fcn_dist.bench.turns import StepTurns

        _out = bench_local_loop(_spec_, _cfg["store_root"], _cfg["run_dir"],
                                hooks=StepTurns(_cfg["turns"], "local", "ray"))
    print(json.dumps(_out, default=str), flush=True)

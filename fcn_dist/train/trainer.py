"""One training job on Ray Train: ``run(spec) -> result summary``.

``run`` builds a ``TorchTrainer`` around :func:`fcn_dist.train.loop.train_loop_per_worker`:

- ``ScalingConfig``: ``spec.num_workers`` workers; GPUs when ``use_gpu`` is ``true``, or
  ``auto`` and the Ray cluster has them; ``cpus_per_worker`` null (the default) means: on GPU
  runs ``min(8, cluster CPUs / (2 * workers))``, on CPU runs half the cluster's CPUs shared by
  the workers (at least 0.25 each) — the other half stays free for the Ray Data read/transform
  tasks that feed them. A CPU-only trainer that takes every CPU starves Ray Data and hangs.
- ``RunConfig(name=<run dir name>, storage_path=<its parent>)``: Ray Train V2 (the default in
  Ray 2.60) restores a run from that pair, so re-running a run dir resumes from its latest
  checkpoint; ``CheckpointConfig(num_to_keep=spec.checkpoints_to_keep, score = val mIoU)``
  keeps the best checkpoints, and Ray Train V2 never deletes the latest one, so best and latest
  are both on disk; ``FailureConfig(max_failures)`` restarts failed workers from the latest.
- ``should_stop`` is polled by a driver thread; when it turns True a ``STOP`` file appears in
  the run dir, rank 0 sees it within one step, every rank stops at the same step, a checkpoint
  that resumes at that step is saved and :class:`Interrupted` is raised here.
- After training, the best checkpoint is scored on the test split (the val split when there is
  none: the run row then says ``eval_is_selection``, and every report labels the score
  "val (used for selection)") by the same :func:`~fcn_dist.train.evaluate.evaluate` as every
  epoch's validation, at the labels' original size, in a Ray task (GPU when training used
  GPUs), and the run row goes to the results store. Epoch rows are written by rank 0 during
  training.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from fcn_dist import fs as fsio
from fcn_dist.data import median_frequency_weights, read_manifest, verify
from fcn_dist.errors import FcnError, Interrupted, SpecError, TrainingError
from fcn_dist.fs import Location, Uri, masked
from fcn_dist.spec import JobSpec
from fcn_dist.train.evaluate import evaluate_checkpoint
from fcn_dist.train.hooks import LoopHooks
from fcn_dist.train.loop import SCORE_ATTRIBUTE, STOP_FILE, LoopConfig, train_loop_per_worker
from fcn_dist.train.progress import PROGRESS_FILE, read_progress

__all__ = ["Interrupted", "NonFiniteLossError", "resolve_resources", "run", "run_loop_locally"]

log = logging.getLogger(__name__)


class NonFiniteLossError(TrainingError):
    """The training loss became NaN/inf; the message names the epoch and step. Deterministic
    for a given spec and checkpoint, so retrying the same job is pointless."""

    retryable = False  # the queue worker fails the job at once instead of retrying it


def verbose() -> bool:
    """Whether Ray's own output reaches this process's terminal (``FCN_VERBOSE=1``; the CLIs'
    ``--verbose`` / ``--log-level debug`` set it). Off, it still goes to Ray's log files
    (``/tmp/ray/session_latest/logs``) and the dashboard."""
    return os.environ.get("FCN_VERBOSE", "0") not in ("", "0")


def quiet_ray() -> None:
    """Ray's driver-side chatter off unless :func:`verbose`: Ray Data's progress bars and
    execution-plan lines, Ray's log messages below ERROR and its deprecation warnings."""
    if verbose():
        return
    import warnings

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"ray(\..*)?")
    warnings.filterwarnings("ignore", message=".*ExecutionOptions.exclude_resources.*")


def _init_ray_keeping_signal_handlers(ray_address: str | None) -> None:
    """``ray.init`` that leaves the caller's SIGTERM/SIGINT handlers in place, and forwards
    the Ray workers' output to this process only when :func:`verbose`.

    ``ray.init`` installs its own SIGTERM handler (``sys.exit``), which would cut
    ``trainer.fit()`` with a ``SystemExit`` instead of letting the queue worker stop the run
    through ``should_stop`` (stop checkpoint, clean release). Handlers can only be set from the
    main thread; elsewhere nothing is restored (and ``ray.init`` installs none either).
    """
    import signal

    import ray

    main = threading.current_thread() is threading.main_thread()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    quiet_ray()
    # every process of the job (the Train controller, Ray Data tasks, workers) finds the object
    # store this process uses: its endpoint/region/profile settings, never credentials
    env = {k: os.environ[k] for k in fsio.FORWARDED_ENV if os.environ.get(k)}
    ray.init(address=ray_address or os.environ.get("RAY_ADDRESS") or None, configure_logging=False,
             log_to_driver=verbose(), runtime_env={"env_vars": env} if env else None)
    for sig, handler in saved.items():
        if callable(handler) or handler in (signal.SIG_IGN, signal.SIG_DFL):
            signal.signal(sig, handler)


# --------------------------------------------------------------------------- resources
def resolve_resources(spec: JobSpec, cluster: dict[str, float]) -> tuple[bool, dict[str, float]]:
    """``(use_gpu, resources_per_worker)`` for ``spec`` on a cluster with ``cluster`` resources."""
    gpus = float(cluster.get("GPU", 0.0))
    cpus = float(cluster.get("CPU", 1.0))
    n = spec.num_workers
    if spec.use_gpu == "true":
        if gpus <= 0:
            raise SpecError("use_gpu: true, but the Ray cluster has no GPU")
        use_gpu = True
    elif spec.use_gpu == "false":
        use_gpu = False
    else:
        use_gpu = gpus >= n * spec.gpus_per_worker
    if spec.cpus_per_worker is not None:
        cpw = float(spec.cpus_per_worker)
    elif use_gpu:
        cpw = max(1.0, min(8.0, math.floor(cpus / (2 * n))))
    else:
        cpw = max(0.25, math.floor(4 * cpus / (2 * n)) / 4)  # multiple of 0.25
    if n * cpw > cpus + 1e-9:
        raise SpecError(f"num_workers x cpus_per_worker = {n} x {cpw} CPUs, but the Ray cluster has "
                        f"{cpus:g}; lower them (fractional CPUs such as 0.5 are fine)")
    res = {"CPU": cpw}
    if use_gpu:
        res["GPU"] = float(spec.gpus_per_worker)
        if n * spec.gpus_per_worker > gpus + 1e-9:
            raise SpecError(f"num_workers x gpus_per_worker = {n} x {spec.gpus_per_worker} GPUs, "
                            f"but the Ray cluster has {gpus:g}")
    return use_gpu, res


# --------------------------------------------------------------------------- the run
def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def default_run_dir(spec: JobSpec, job_id: str | None) -> Location:
    """``<runs>/<job_id>-<variant>`` for queue jobs (stable: a retried job resumes), else
    ``<runs>/<name>-<variant>-<UTC time>`` (a fresh run each time)."""
    from fcn_dist import config

    if job_id:
        name = f"{job_id}-{spec.variant}"
    else:
        name = f"{spec.name}-{spec.variant}-{_now().strftime('%Y%m%dT%H%M%S%f')}"
    return config.runs_path() / name


def _failure_message(err: BaseException) -> tuple[type[FcnError], str]:
    """The user-facing error class and message hidden inside a Ray TrainingFailedError."""
    seen: list[BaseException] = []
    stack: list[BaseException] = [err]
    failures = getattr(err, "worker_failures", None) or {}
    stack.extend(failures.values())
    ctrl = getattr(err, "controller_failure", None)
    if ctrl is not None:
        stack.append(ctrl)
    while stack:
        e = stack.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        if isinstance(e, FcnError):
            return type(e), str(e)
        # Ray Train V2 wraps user exceptions (UserExceptionWithTraceback._base_exc); Ray core
        # task errors carry theirs in .cause
        for nxt in (getattr(e, "_base_exc", None), getattr(e, "cause", None), e.__cause__,
                    e.__context__):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    first = next(iter(failures.values()), err)
    msg = str(first).strip().splitlines()
    text = next((line for line in reversed(msg) if line.strip()), type(first).__name__)
    return TrainingError, f"training failed: {text[:500]}"


@dataclass
class RunInputs:
    """What :func:`run` checked before starting anything (see :func:`check_inputs`)."""

    data_dir: Location  # a local Path or a fcn_dist.fs.Uri
    manifest: Any  # fcn_dist.data.Manifest
    val_split: str  # validated every epoch; chooses the best checkpoint
    eval_split: str  # the best checkpoint's final score (the val split when there is no test)
    eval_size: tuple[int, int] | None  # network input at validation and the final score; None = native
    run_path: Location
    init_from: str | None

    @property
    def eval_is_selection(self) -> bool:
        """The final score is taken on the split that chose the checkpoint (not held out)."""
        return self.eval_split == self.val_split

    @property
    def run_id(self) -> str:
        return self.run_path.name


def check_inputs(spec: JobSpec, *, run_dir: str | os.PathLike | None, init_from: str | os.PathLike | None,
                 job_id: str | None) -> RunInputs:
    """The data (manifest, splits, shard sizes and hashes), the run dir and ``init_from``;
    each problem is a :class:`SpecError`/``DataError`` naming the field or file."""
    data_dir = spec.data_dir()
    manifest = read_manifest(data_dir)
    if "train" not in manifest.splits:
        raise SpecError(f"data: {masked(data_dir)} has no train split (splits: {', '.join(manifest.splits)})")
    val_split, eval_split = spec.eval_splits(manifest.splits, where=masked(data_dir))
    for split in sorted({"train", val_split, eval_split}):
        # size, row count and sha256 of every shard: a corrupt shard fails here with a DataError
        # naming it, before Ray starts (a worker-side failure would be retried max_failures times)
        verify(manifest, split, sha256=spec.verify_data)

    run_path = fsio.location(run_dir) if run_dir else default_run_dir(spec, job_id)
    init_from = init_from or spec.init_from
    if init_from:
        ip = fsio.location(init_from)  # a local directory or a URI (s3://.../epoch_0012)
        if not fsio.is_file(ip / "model.pt") and not (ip.name.endswith(".pt") and fsio.is_file(ip)):
            raise SpecError(f"init_from: {masked(init_from)} is not a checkpoint directory (no model.pt)")
        init_from = str(ip)
    eval_size = spec.eval_input_size(shared_image_size(manifest, {val_split, eval_split}))
    return RunInputs(data_dir=data_dir, manifest=manifest, val_split=val_split,
                     eval_split=eval_split, eval_size=eval_size, run_path=run_path,
                     init_from=init_from)


def shared_image_size(manifest: Any, splits: set[str]) -> tuple[int, int] | None:
    """``(h, w)`` when every image of ``splits`` has that one size, else None (read from the
    shards' ``height``/``width`` columns only)."""
    from fcn_dist.data.shards import parquet_file  # local or object storage

    sizes: set[tuple[int, int]] = set()
    for split in sorted(splits):
        for path in manifest.shard_paths(split):
            t = parquet_file(path).read(columns=["height", "width"])
            sizes |= set(zip(t.column("height").to_pylist(), t.column("width").to_pylist()))
            if len(sizes) > 1:
                return None
    return next(iter(sizes)) if sizes else None


def choose_data_loader(spec: JobSpec, use_gpu: bool) -> str:
    """``spec.data_loader``, with ``auto`` decided: Ray Data streaming where GPUs train and the
    CPUs are free to decode and augment for them; on CPU workers the shards are read on the
    trainer's own threads (Ray Data's tasks would take the cores the training step runs on and
    restart their pipeline every epoch; README, Performance); and always when bitwise
    repeatability is asked for."""
    if spec.data_loader != "auto":
        return spec.data_loader
    return "torch" if spec.deterministic or not use_gpu else "ray"


def loop_config(spec: JobSpec, inp: RunInputs, *, job_id: str | None, use_gpu: bool,
                resources: dict[str, float], hooks: LoopHooks | None = None) -> LoopConfig:
    """The workers' :class:`~fcn_dist.train.loop.LoopConfig` (creates the run dir;
    median-frequency class weights are computed once and kept there)."""
    manifest, run_path = inp.manifest, inp.run_path
    world = spec.num_workers
    n_train = manifest.splits["train"]
    per_rank = n_train // world
    if per_rank < 1:
        raise SpecError(f"num_workers: {world} workers but the train split has {n_train} images")
    steps = math.ceil(per_rank / spec.batch_size)
    if spec.steps_per_epoch is not None:
        steps = min(steps, spec.steps_per_epoch)
    data_loader = choose_data_loader(spec, use_gpu)

    fsio.makedirs(run_path)
    class_weights = None
    if spec.class_weights == "median_frequency":
        cw_file = run_path / "class_weights.json"
        if fsio.is_file(cw_file):
            class_weights = json.loads(fsio.read_text(cw_file))
        else:
            class_weights = median_frequency_weights(inp.data_dir)
            fsio.write_text(cw_file, json.dumps(class_weights))
    return LoopConfig(
        spec=spec, run_id=inp.run_id, job_id=job_id, run_dir=str(run_path),
        data_dir=str(inp.data_dir), store_dir=str(spec.store_dir()), dataset=inp.data_dir.name,
        num_classes=manifest.num_classes, classes=list(manifest.classes),
        palette=manifest.palette, ignore_index=manifest.ignore_index, val_split=inp.val_split,
        eval_size=list(inp.eval_size) if inp.eval_size else None,
        steps_per_epoch=steps, data_loader=data_loader, init_from=inp.init_from,
        class_weights=class_weights,
        # validation decoding processes: only where the worker has CPUs to spare (GPU runs)
        loader_workers=min(4, max(0, int(resources["CPU"]) - 1)) if use_gpu else 0,
        hooks=hooks or LoopHooks())


def run_loop_locally(spec: JobSpec, *, run_dir: str | os.PathLike,
                     hooks: LoopHooks | None = None) -> dict[str, Any]:
    """The training loop in Ray Train's local mode (``ScalingConfig(num_workers=0)``): the
    same :func:`~fcn_dist.train.loop.train_loop_per_worker`, run as a plain function in this
    process, with no Ray cluster, actors or Ray Data. For benchmarks (the Ray Train overhead
    is :func:`run`'s step time over this one's) and debugging: epoch rows go to the store,
    but no checkpoint is kept and no final score is taken. Returns the loop's summary."""
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fcn_dist.perf import physical_cores

    inp = check_inputs(spec, run_dir=run_dir, init_from=None, job_id=None)
    use_gpu = spec.use_gpu == "true" or (spec.use_gpu == "auto" and torch.cuda.is_available())
    cfg = loop_config(spec, inp, job_id=None, use_gpu=use_gpu,
                      resources={"CPU": float(physical_cores())}, hooks=hooks)
    cfg.data_loader = "torch"  # local mode has no Ray Data
    trainer = TorchTrainer(train_loop_per_worker, train_loop_config=cfg.to_dict(),
                           scaling_config=ScalingConfig(num_workers=0),
                           run_config=RunConfig(name=inp.run_id,
                                                storage_path=str(inp.run_path.parent)))
    threads = torch.get_num_threads()  # the loop sets this process's threads; put them back
    try:
        return trainer.fit().return_value or {}
    finally:
        torch.set_num_threads(threads)


def run(spec: JobSpec, *, job_id: str | None = None, run_dir: str | os.PathLike | None = None,
        init_from: str | os.PathLike | None = None, should_stop: Callable[[], bool] | None = None,
        ray_address: str | None = None, hooks: LoopHooks | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run one training job on Ray Train; return the JSON-able result summary.

    ``run_dir`` holding checkpoints resumes from the latest. ``init_from`` (or ``spec.init_from``)
    is the previous stage's checkpoint (staged 32s -> 16s -> 8s). ``should_stop()`` turning True
    saves a checkpoint and raises :class:`Interrupted`. A non-finite loss raises
    :class:`~fcn_dist.errors.TrainingError` naming epoch and step. ``ray_address``: an existing
    cluster (else ``RAY_ADDRESS``, else a local Ray started here). ``hooks``: a
    :class:`~fcn_dist.train.hooks.LoopHooks` the workers call (benchmarks, fault tests).
    ``on_progress(state)`` is called in a driver thread with each new progress state of the run
    (:mod:`fcn_dist.train.progress`: the step now and then, each epoch's metrics).
    """
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fcn_dist.store import ResultsStore

    started = _now()
    inp = check_inputs(spec, run_dir=run_dir, init_from=init_from, job_id=job_id)
    data_dir, manifest, run_path, run_id = inp.data_dir, inp.manifest, inp.run_path, inp.run_id
    store_dir = spec.store_dir()
    store = ResultsStore(store_dir)
    done = _existing_run(store, run_id)
    if done is not None:  # finished before (e.g. the driver died after writing): do not redo
        log.info("run %s already finished; returning its stored result", run_id)
        return done

    quiet_ray()  # before any Dataset is made: each keeps the DataContext of its creation
    if not ray.is_initialized():
        _init_ray_keeping_signal_handlers(ray_address)
    use_gpu, resources = resolve_resources(spec, ray.cluster_resources())
    world = spec.num_workers
    cfg = loop_config(spec, inp, job_id=job_id, use_gpu=use_gpu, resources=resources, hooks=hooks)
    stop_file = run_path / STOP_FILE
    fsio.delete(stop_file)
    datasets = None
    if cfg.data_loader == "ray":
        from fcn_dist.data import load

        datasets = {"train": load(data_dir, "train", mode="train", crop_size=spec.crop_size,
                                  seed=spec.seed, batch_size=max(4, spec.batch_size),
                                  scale_range=spec.scale_range)}
    env = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"} if spec.deterministic else {}
    # Ray starts worker processes at niceness 15, below its own daemons (raylet, GCS,
    # dashboard, log monitor) and everything else on the node: any burst there takes a core
    # from a training thread while the other threads wait for it at the next OpenMP barrier.
    # Training is the job's main work, so it runs at normal priority, as Ray's Job API runs a
    # job's driver (FCN_WORKER_NICENESS overrides, e.g. 10 on a shared workstation).
    env["RAY_worker_niceness"] = os.environ.get("FCN_WORKER_NICENESS", "0")
    # the roots, and where to find the object store (endpoint, region, profile; never
    # credentials: each host has its own, see fcn_dist.fs.FORWARDED_ENV)
    for var in ("FCN_STORE", "FCN_DATA", "FCN_RUNS", *fsio.FORWARDED_ENV):
        if os.environ.get(var):
            env[var] = os.environ[var]
    storage_fs, storage_path = fsio.resolve(run_path.parent)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=cfg.to_dict(),
        scaling_config=ScalingConfig(num_workers=world, use_gpu=use_gpu,
                                     resources_per_worker=resources),
        run_config=RunConfig(
            name=run_id,
            # on object storage the workers upload their checkpoints straight to the bucket
            # and a worker on any host restores from there
            storage_path=storage_path,
            storage_filesystem=storage_fs if isinstance(run_path, Uri) else None,
            checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoints_to_keep,
                                               checkpoint_score_attribute=SCORE_ATTRIBUTE,
                                               checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=spec.max_failures),
            worker_runtime_env={"env_vars": env} if env else None,
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]) if datasets else None,
    )

    fsio.delete(run_path / PROGRESS_FILE)  # a resumed run's state comes anew
    watcher = _RunWatcher(should_stop, stop_file, run_path, on_progress)
    t0 = time.perf_counter()
    try:
        try:
            result = trainer.fit()
        except Exception as e:  # noqa: BLE001 - Ray wraps worker errors; surface the real one
            if isinstance(e, FcnError):
                raise
            cls, msg = _failure_message(e)
            raise cls(f"run {run_id}: {msg}") from None
    finally:
        watcher.stop()
        fsio.delete(stop_file)
    wall = time.perf_counter() - t0

    rv = result.return_value or {}
    status = rv.get("status")
    if status == "failed":
        raise NonFiniteLossError(f"run {run_id}: {rv.get('error')}")
    if status == "stopped":
        raise Interrupted(f"run {run_id} stopped at epoch {rv.get('epoch')}; its checkpoint is in "
                          f"{masked(run_path)} and running it again resumes there")
    if status != "completed":
        raise TrainingError(f"run {run_id}: training ended without a result ({rv!r})")

    best_path, best_metrics = _best_checkpoint(result, run_path)
    if best_path is None:
        raise TrainingError(f"run {run_id}: no checkpoint was saved")
    task = ray.remote(evaluate_checkpoint).options(
        num_cpus=min(resources["CPU"], 1.0) if not use_gpu else resources["CPU"],
        num_gpus=1 if use_gpu else 0,
        runtime_env={"env_vars": env} if env else None,
    )
    ev = ray.get(task.remote(best_path, str(data_dir), inp.eval_split,
                             batch_size=spec.eval_batch_size or spec.batch_size, amp=spec.amp))
    finished = _now()
    row = {
        "run_id": run_id, "job_id": job_id, "variant": spec.variant, "backbone": spec.backbone,
        "dataset": data_dir.name, "name": spec.name, "status": "succeeded",
        "miou": ev["miou"], "pixel_accuracy": ev["pixel_accuracy"],
        "mean_accuracy": ev["mean_accuracy"], "fwiou": ev["fwiou"],
        "eval_split": inp.eval_split, "eval_is_selection": inp.eval_is_selection,
        "eval_size": ev["eval_size"], "per_class_iou": ev["per_class_iou"],
        "class_names": list(manifest.classes),
        "confusion_matrix": ev["confusion_matrix"], "num_classes": manifest.num_classes,
        "params": ev["params"], "gflops_per_image": ev["gflops_per_image"],
        "epochs": int(rv.get("epoch", spec.epochs)), "best_epoch": int(best_metrics.get("epoch", 0)),
        "best_val_miou": float(best_metrics.get(SCORE_ATTRIBUTE, math.nan)),
        "train_seconds": float(rv.get("train_seconds", wall)),
        "images_per_second": float(rv.get("images_per_second", 0.0)),
        "world_size": world, "device": rv.get("device", "cuda" if use_gpu else "cpu"),
        # stored without any credentials a URI may carry (a staged child resolves them with
        # its host's own)
        "best_checkpoint": fsio.public(best_path), "run_dir": fsio.public(run_path),
        "spec": spec.to_json(),
        "started_at": started, "finished_at": finished,
    }
    store.write_run(row)
    return _summary_from_row(row, step_seconds=rv.get("step_seconds"),
                             data_seconds=rv.get("data_seconds"))


def _checkpoint_location(path: str, run_path: Location) -> str:
    """A checkpoint's path as Ray reports it, as a location: on object storage Ray gives the
    path inside its filesystem (``bucket/prefix/run/checkpoint``), made a URI again here."""
    if not isinstance(run_path, Uri):
        return path
    _, base = fsio.resolve(run_path)
    rel = path[len(base):].lstrip("/") if path.startswith(base) else path.rsplit("/", 1)[-1]
    return str(run_path / rel)


def _best_checkpoint(result, run_path: Location) -> tuple[str | None, dict[str, Any]]:
    """Path (or URI) and metrics of the best complete-epoch checkpoint Ray kept (by val mIoU)."""
    best: tuple[str | None, dict[str, Any]] = (None, {})
    best_score = -math.inf
    for ckpt, metrics in result.best_checkpoints or []:
        if metrics.get("partial"):
            continue
        score = float(metrics.get(SCORE_ATTRIBUTE, -math.inf))
        if score > best_score or (score == best_score and metrics.get("epoch", 0) > best[1].get("epoch", 0)):
            best, best_score = (ckpt.path, dict(metrics)), score
    if best[0] is None and result.checkpoint is not None:
        best = (result.checkpoint.path, dict(result.metrics or {}))
    if best[0] is not None:
        best = (_checkpoint_location(best[0], run_path), best[1])
    return best


def _summary_from_row(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The result summary of a run row; ``scored_on`` labels its final score's split."""
    from fcn_dist.store import scored_on

    keys = ("run_id", "job_id", "variant", "backbone", "dataset", "status", "miou", "pixel_accuracy",
            "mean_accuracy", "fwiou", "eval_split", "eval_is_selection", "eval_size",
            "best_checkpoint", "run_dir", "train_seconds", "best_epoch", "best_val_miou",
            "images_per_second", "epochs", "params", "gflops_per_image")
    out = {k: row.get(k) for k in keys}
    out["scored_on"] = scored_on(row.get("eval_split"), row.get("eval_is_selection"))
    pci = row.get("per_class_iou")
    out["per_class_iou"] = json.loads(pci) if isinstance(pci, str) else pci
    out.update(extra)
    from fcn_dist.train.metrics import nan_to_none

    return nan_to_none(out)


def _existing_run(store, run_id: str) -> dict[str, Any] | None:
    """The summary of an already written, succeeded run row for ``run_id``, if any."""
    try:
        t = store.runs(filters={"run_id": run_id})
    except Exception:  # noqa: BLE001 - an empty/new store
        return None
    rows = [r for r in t.to_pylist() if r.get("status") == "succeeded"]
    return _summary_from_row(rows[-1]) if rows else None


class _RunWatcher:
    """A driver thread: polls ``should_stop()`` (when True, drops the STOP file the workers
    watch) and the run's progress file (each new state goes to ``on_progress``)."""

    def __init__(self, should_stop: Callable[[], bool] | None, stop_file: Location, run_dir: Location,
                 on_progress: Callable[[dict[str, Any]], None] | None, interval: float = 0.5):
        self._should_stop, self._file, self._interval = should_stop, stop_file, interval
        self._run_dir, self._on_progress = run_dir, on_progress
        self._seen: Any = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="fcn-run-watcher", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        stop_sent = False
        while not self._done.wait(self._interval):
            try:
                if not stop_sent and self._should_stop is not None and self._should_stop():
                    fsio.write_text(self._file, "stop requested\n")
                    stop_sent = True
            except Exception:  # noqa: BLE001 - a broken callback must not kill the run
                log.exception("should_stop() raised; ignoring")
            self._progress()

    def _progress(self) -> None:
        if self._on_progress is None:
            return
        state = read_progress(self._run_dir)
        if state is None or state == self._seen:
            return
        self._seen = state
        try:
            self._on_progress(state)
        except Exception:  # noqa: BLE001 - showing progress must not kill the run
            log.exception("on_progress() raised; ignoring")

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=5)
        self._progress()  # the last epoch's line

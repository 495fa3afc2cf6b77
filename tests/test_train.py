"""Training on a real local Ray (Train V2 + Data): smoke run, DDP metrics, resume, failures.

Everything is tiny (synthetic 64x64 shapes, resnet18, a few steps): the box has 2 cores
shared with other suites. No Ray mocks: each test runs ``fcn_dist.train.run``.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from fcn_dist.errors import TrainingError
from fcn_dist.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "jobs" / "smoke.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """40 synthetic 64x64 images: 32 train, 4 val, 4 test."""
    from fcn_dist.data import prepare

    out = tmp_path_factory.mktemp("data") / "synthetic"
    prepare("synthetic", out, count=40, size=(64, 64), seed=0)
    return out


@pytest.fixture
def store_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("FCN_STORE", str(root))
    return root


def _spec(data: Path, *overrides: str):
    return load_spec(SMOKE, [f"data={data}", "epochs=2", *overrides])


def _in01(v) -> bool:
    return v is not None and 0.0 <= v <= 1.0


@pytest.mark.ray
def test_two_worker_run_writes_store_rows_and_ddp_metrics_match_single_process(
        ray_session, synthetic, store_root, tmp_path):
    from fcn_dist.data.transforms import Preprocessing
    from fcn_dist.store import ResultsStore
    from fcn_dist.perf import prepare_for_training, training_settings
    from fcn_dist.train import evaluate, load_checkpoint, run
    from fcn_dist.train.evaluate import scoring_dataset

    spec = _spec(synthetic)  # smoke.yaml: 2 workers, Ray Data input, amp auto
    assert spec.num_workers == 2
    run_dir = tmp_path / "runs" / "smoke-8s"
    res = run(spec, job_id="j1", run_dir=run_dir)
    assert res["status"] == "succeeded" and res["run_id"] == "smoke-8s" and res["job_id"] == "j1"

    store = ResultsStore(store_root)
    epochs = sorted(store.epochs().to_pylist(), key=lambda r: r["epoch"])
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert r["run_id"] == "smoke-8s" and r["world_size"] == 2 and r["device"] == "cpu"
        for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "train_miou"):
            assert _in01(r[k]), (k, r[k])
        assert math.isfinite(r["train_loss"]) and r["images_per_second"] > 0
        assert 0 < r["step_seconds"] < r["epoch_seconds"]
    runs = store.runs().to_pylist()
    assert len(runs) == 1
    row = runs[0]
    assert row["status"] == "succeeded" and row["num_classes"] == 3
    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert _in01(row[k]), (k, row[k])
        assert res[k] == pytest.approx(row[k])
    assert sum(map(sum, row["confusion_matrix"])) == 4 * 64 * 64  # test split, original size
    assert row["eval_split"] == "test" and row["eval_is_selection"] is False
    assert res["scored_on"] == "test" and row["eval_size"] == "native"  # smoke: eval_size native
    assert row["params"] > 1e6 and row["gflops_per_image"] > 0
    assert Path(row["best_checkpoint"]).is_dir()

    # the latest checkpoint is always kept (best + latest); weights_only loading only
    latest = run_dir / "epoch_0002"
    model, meta = load_checkpoint(latest)
    assert meta["epoch"] == 2 and meta["classes"] == ["background", "shape", "border"]
    assert meta["ignore_index"] == 255 and meta["eval_size"] is None  # native
    torch.load(latest / "train_state.pt", weights_only=True)

    # DDP-synchronised validation (2 ranks, torchmetrics sync) == one process, same checkpoint
    settings = training_settings("cpu", spec.amp)  # the loop's precision policy and layout
    prepare_for_training(model, settings)
    val = scoring_dataset(synthetic, "val", Preprocessing.from_dict(meta))
    single = evaluate(model, val, num_classes=3, ignore_index=255, batch_size=1,
                      amp_dtype=settings.amp_dtype)
    last = epochs[-1]
    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou"):
        assert last[k] == pytest.approx(single[k], abs=1e-9), k
    assert last["val_loss"] == pytest.approx(single["loss"], rel=1e-4)


# deterministic CPU settings: seeded data order and augmentation (torch loader), fp32
DETERMINISTIC = ("epochs=3", "deterministic=true", "amp=off", "steps_per_epoch=3", "batch_size=4")


@pytest.fixture(scope="module")
def reference(ray_session, synthetic, tmp_path_factory):
    """An uninterrupted deterministic 2-worker run: (result, run_dir, epoch rows by epoch)."""
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    base = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FCN_STORE", str(base / "store"))
        res = run(_spec(synthetic, *DETERMINISTIC), run_dir=base / "full")
        rows = {r["epoch"]: r for r in ResultsStore(base / "store").epochs().to_pylist()}
    return res, base / "full", rows


def _assert_same_as_reference(reference, res, run_dir, rows):
    from fcn_dist.checkpoint import load_state_dict

    ref, ref_dir, ref_rows = reference
    for k in ("miou", "pixel_accuracy", "mean_accuracy", "fwiou", "best_val_miou", "best_epoch"):
        assert res[k] == ref[k], k
    a = load_state_dict(ref_dir / "epoch_0003")
    b = load_state_dict(run_dir / "epoch_0003")
    assert all(torch.equal(a[k], b[k]) for k in a)  # bitwise the same weights
    assert sorted(rows) == [1, 2, 3]
    for e in (1, 2, 3):
        assert rows[e]["miou"] == ref_rows[e]["miou"]
        assert rows[e]["train_loss"] == ref_rows[e]["train_loss"]


@pytest.mark.slow  # ~50 s; test_killed_worker_process_is_restarted_and_ends_like_uninterrupted
@pytest.mark.ray   # proves the same resume in the default suite
def test_interrupted_run_resumes_to_the_same_result(reference, synthetic, store_root, tmp_path):
    """Stopped during epoch 2 (should_stop), restarted on its run dir: bitwise the same weights
    and the same metrics as the uninterrupted reference run."""
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import Interrupted, run

    spec = _spec(synthetic, *DETERMINISTIC)
    store = ResultsStore(store_root)

    def after_first_epoch() -> bool:  # stop once epoch 1 of this run is on record
        return store.epochs(filters={"run_id": "cut"}).num_rows >= 1

    with pytest.raises(Interrupted, match="stopped at epoch"):
        run(spec, run_dir=tmp_path / "cut", should_stop=after_first_epoch)
    assert store.runs(filters={"run_id": "cut"}).num_rows == 0
    resumed = run(spec, run_dir=tmp_path / "cut")
    rows = {r["epoch"]: r for r in store.epochs(filters={"run_id": "cut"}).to_pylist()}
    _assert_same_as_reference(reference, resumed, tmp_path / "cut", rows)
    assert store.runs(filters={"run_id": "cut"}).num_rows == 1


@pytest.mark.ray
@pytest.mark.fault
def test_killed_worker_process_is_restarted_and_ends_like_uninterrupted(
        reference, synthetic, store_root, tmp_path):
    """Issue 10.1: SIGKILL a Ray Train worker mid-run; FailureConfig restarts the worker group
    from the latest checkpoint and the final metrics equal the uninterrupted run's."""
    import os
    import signal
    import threading
    import time

    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    spec = _spec(synthetic, *DETERMINISTIC, "max_failures=2")
    run_dir = tmp_path / "killed"
    store = ResultsStore(store_root)
    out: dict = {}

    def target():
        try:
            out["result"] = run(spec, run_dir=run_dir)
        except BaseException as e:  # noqa: BLE001 - reported below
            out["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    deadline = time.monotonic() + 240
    while store.epochs(filters={"run_id": "killed"}).num_rows < 1:
        assert th.is_alive() and time.monotonic() < deadline, out
        time.sleep(0.1)
    pid_file = run_dir / ".worker-1.pid"
    victim = int(pid_file.read_text())
    os.kill(victim, signal.SIGKILL)  # rank 1 dies mid-training (during epoch 2)
    th.join(timeout=300)
    assert not th.is_alive() and "error" not in out, out.get("error")
    assert int(pid_file.read_text()) != victim  # a new worker group was started
    rows: dict = {}
    for r in store.epochs(filters={"run_id": "killed"}).to_pylist():
        rows[r["epoch"]] = r  # an epoch redone after the restart may appear twice: same values
    _assert_same_as_reference(reference, out["result"], run_dir, rows)


@pytest.mark.fault
def test_corrupt_shard_fails_at_once_naming_the_shard(synthetic, store_root, tmp_path):
    """Issue 10.6: a shard whose bytes changed (same size) fails before training, named."""
    import shutil

    from fcn_dist.errors import DataError
    from fcn_dist.train import run

    data = tmp_path / "data"
    shutil.copytree(synthetic, data)
    shard = sorted(data.glob("train-*.parquet"))[0]
    raw = bytearray(shard.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 64] = bytes(64)  # same size, different bytes
    shard.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=shard.name):
        run(_spec(data), run_dir=tmp_path / "run")


@pytest.mark.ray
def test_non_finite_loss_stops_with_training_error(ray_session, synthetic, store_root, tmp_path):
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run

    # plain SGD at lr 9.9 with momentum 0.99 and no clipping diverges within a few steps
    spec = _spec(synthetic, "num_workers=1", "optimizer=sgd", "lr=9.9", "momentum=0.99",
                 "grad_clip=null", "amp=off", "deterministic=true", "max_failures=2")
    with pytest.raises(TrainingError, match=r"non-finite training loss at epoch 1, step \d+"):
        run(spec, run_dir=tmp_path / "nan")
    assert ResultsStore(store_root).runs().num_rows == 0


@pytest.mark.slow  # ~50 s: learning quality, run with -m slow (README, Tests)
@pytest.mark.ray
def test_fcn8s_learns_synthetic_shapes(ray_session, tmp_path_factory, store_root, tmp_path):
    """FCN-8s (resnet18, random init) on synthetic 96x96 shapes: val mIoU >= 0.90 in 10 epochs.

    About 50 s on 2 idle CPU cores (2.7 s per epoch, 128 training images, ~49 images/s)."""
    from fcn_dist.data import prepare
    from fcn_dist.train import run

    data = tmp_path_factory.mktemp("learn") / "shapes96"
    prepare("synthetic", data, count=160, size=(96, 96), seed=0)
    spec = load_spec(SMOKE, [f"data={data}", "crop_size=96", "eval_size=96", "num_workers=1",
                             "epochs=10", "batch_size=8", "lr=0.003", "deterministic=true"])
    res = run(spec, run_dir=tmp_path / "learn")
    assert res["best_val_miou"] >= 0.90, res
    assert res["miou"] >= 0.85, res  # test split, original resolution


@pytest.mark.ray
def test_loop_outside_ray_is_the_same_loop(ray_session, synthetic, tmp_path, monkeypatch):
    """The Ray Train overhead benchmark compares ``run`` (1 Ray Train worker) with
    ``run_loop_locally`` (Ray Train's local mode, no Ray): it must be the same computation, so
    a deterministic spec gives bitwise the same epoch rows either way."""
    from fcn_dist.store import ResultsStore
    from fcn_dist.train import run
    from fcn_dist.train.trainer import run_loop_locally

    spec = _spec(synthetic, "num_workers=1", "epochs=2", "deterministic=true", "amp=off",
                 "steps_per_epoch=3", "batch_size=4")
    rows = {}
    for mode in ("ray", "local"):
        monkeypatch.setenv("FCN_STORE", str(tmp_path / mode / "store"))
        if mode == "ray":
            run(spec, run_dir=tmp_path / mode / "run")
        else:
            threads = torch.get_num_threads()
            summary = run_loop_locally(spec, run_dir=tmp_path / mode / "run")
            assert torch.get_num_threads() == threads  # the caller's setting is restored
            assert summary["status"] == "completed" and summary["step_seconds"] > 0
        rows[mode] = sorted(ResultsStore(tmp_path / mode / "store").epochs().to_pylist(),
                            key=lambda r: r["epoch"])
    assert [r["epoch"] for r in rows["local"]] == [1, 2]
    for a, b in zip(rows["ray"], rows["local"]):
        for k in ("train_loss", "val_loss", "miou", "pixel_accuracy", "train_miou", "lr"):
            assert a[k] == b[k], (a["epoch"], k)
        assert b["step_seconds"] > 0 and b["world_size"] == 1


@pytest.mark.ray
def test_staged_init_from_previous_stage_checkpoint(ray_session, synthetic, store_root, tmp_path):
    """init_from: an FCN-16s starts from an FCN-32s checkpoint via models.stage_init."""
    from fcn_dist.models import create_model
    from fcn_dist.train import read_meta, run
    from fcn_dist.checkpoint import load_state_dict, save_checkpoint

    torch.manual_seed(1)
    prev = create_model("fcn32s_resnet18", 3).state_dict()
    ckpt = save_checkpoint(tmp_path / "fcn32s" / "epoch_0001", prev,
                           {"model_name": "fcn32s_resnet18", "num_classes": 3, "eval_size": [64, 64]})
    spec = _spec(synthetic, "variant=16s", "num_workers=1", "epochs=1", "steps_per_epoch=1",
                 "lr=1e-12", "deterministic=true", "amp=off")
    res = run(spec, run_dir=tmp_path / "fcn16s", init_from=str(ckpt))
    after = load_state_dict(res["best_checkpoint"])
    assert read_meta(res["best_checkpoint"])["model_name"] == "fcn16s_resnet18"
    for k, v in prev.items():  # one step at lr 1e-12: still the 32s weights (BN stats move)
        if v.is_floating_point() and "running_" not in k:
            torch.testing.assert_close(after[k], v, rtol=0, atol=1e-6)
    assert float(after["head.score_s16.weight"].abs().max()) < 1e-6  # the new score layer: zero


# --------------------------------------------------------------------------- no Ray needed
def test_resources_default_to_fractional_cpus_and_detect_gpus():
    from fcn_dist.errors import SpecError
    from fcn_dist.spec import JobSpec
    from fcn_dist.train import resolve_resources

    spec = JobSpec(backbone="resnet18", num_workers=2)
    assert resolve_resources(spec, {"CPU": 4}) == (False, {"CPU": 1.0})
    assert resolve_resources(spec, {"CPU": 2}) == (False, {"CPU": 0.5})  # half left to Ray Data
    assert resolve_resources(spec, {"CPU": 32, "GPU": 2}) == (True, {"CPU": 8.0, "GPU": 1.0})
    assert resolve_resources(spec.replace(use_gpu="false"), {"CPU": 8, "GPU": 2})[0] is False
    with pytest.raises(SpecError, match="no GPU"):
        resolve_resources(spec.replace(use_gpu="true"), {"CPU": 8})
    with pytest.raises(SpecError, match="cpus_per_worker|CPUs"):
        resolve_resources(spec.replace(cpus_per_worker=2.0), {"CPU": 2})


def _lrs(spec, steps_per_epoch: int, n: int, resume_at: int | None = None) -> list[float]:
    """The LR factor before each of ``n`` optimizer steps; with ``resume_at`` the schedule is
    rebuilt from a state_dict there, as a resumed run does."""
    from fcn_dist.train.step import build_scheduler

    def fresh():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=1.0)
        return opt, build_scheduler(opt, spec, steps_per_epoch)

    opt, sched = fresh()
    out = []
    for i in range(n):
        if i == resume_at:
            saved = (opt.state_dict(), sched.state_dict())
            opt, sched = fresh()
            opt.load_state_dict(saved[0])
            sched.load_state_dict(saved[1])
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])
    return out


def test_lr_schedules_with_warmup_resume_exactly():
    from fcn_dist.spec import JobSpec

    cos = _lrs(JobSpec(epochs=11, warmup_epochs=1, schedule="cosine"), 10, 110)
    assert cos[0] == pytest.approx(1 / 11) and cos[9] == pytest.approx(1 / 11 + 9 / 10 * 10 / 11)
    assert cos[10] == pytest.approx(1.0) and cos[60] == pytest.approx(0.5) and cos[110] == pytest.approx(0.0, abs=1e-12)
    poly = _lrs(JobSpec(epochs=10, schedule="poly"), 10, 100)
    assert poly[0] == 1.0 and poly[50] == pytest.approx(0.5 ** 0.9) and poly[100] == 0.0
    assert set(_lrs(JobSpec(epochs=1, schedule="constant"), 10, 10)) == {1.0}
    spec = JobSpec(epochs=11, warmup_epochs=1, schedule="cosine")
    assert _lrs(spec, 10, 110, resume_at=5) == cos  # bitwise, across the warm-up milestone too
    assert _lrs(spec, 10, 110, resume_at=37) == cos


def test_fcn_train_reports_a_bad_spec_in_one_line(tmp_path):
    from click.testing import CliRunner

    from fcn_dist.cli.train import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nepochs: 0\nbackbone: resnet18\n")
    r = CliRunner().invoke(main, ["--spec", str(bad)])
    assert r.exit_code == 2 and r.output.startswith("error:") and "epochs" in r.output


def test_worker_errors_surface_as_the_users_error():
    """A DataError raised inside a Ray Train worker reaches the caller as that DataError."""
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    from fcn_dist.errors import DataError
    from fcn_dist.train.trainer import _failure_message

    err = WorkerGroupError("worker group failed", {
        1: UserExceptionWithTraceback(DataError("shard /d/train-00000.parquet: bad"), "Traceback ...")})
    assert _failure_message(err) == (DataError, "shard /d/train-00000.parquet: bad")
    cls, msg = _failure_message(WorkerGroupError("failed", {0: RuntimeError("CUDA out of memory")}))
    assert cls is TrainingError and "CUDA out of memory" in msg


# --------------------------------------------------------------------------- DDP loss normaliser
def _tiny_step_state(wrap=lambda m: m):
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.step import make_step_state

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1)
    spec = JobSpec.from_dict({"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0,
                              "grad_clip": None, "amp": "off", "lr": 0.1, "epochs": 1})
    return make_step_state(model, spec, device=torch.device("cpu"), steps_per_epoch=1,
                           ignore_index=255, wrap=wrap)


def _ignore_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two ranks' batches: rank 0's labels 10 % ignore, rank 1's 70 %."""
    g = torch.Generator().manual_seed(3)
    out = []
    for ratio in (0.1, 0.7):
        x = torch.randn(2, 3, 8, 8, generator=g)
        y = torch.randint(0, 4, (2, 8, 8), generator=g)
        y[torch.rand(2, 8, 8, generator=g) < ratio] = 255
        out.append((x, y))
    return out


def _ddp_step_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    from torch.nn.parallel import DistributedDataParallel

    from fcn_dist.train.step import train_step

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        st = _tiny_step_state(wrap=DistributedDataParallel)
        x, y = _ignore_batches()[rank]
        out = train_step(st, x, y)
        torch.save({"grads": {n: p.grad.clone() for n, p in st.bare.named_parameters()},
                    "loss": float(out.loss_sum / out.norm)}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_step_normalises_by_the_global_valid_pixel_count(tmp_path):
    """2 gloo ranks whose crops hold different shares of ignore pixels: the averaged DDP
    gradients equal one process stepping on both batches at once (per-pixel mean over all)."""
    import socket

    import torch.multiprocessing as tmp

    from fcn_dist.train.step import train_step

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp.spawn(_ddp_step_rank, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    st = _tiny_step_state()
    (x0, y0), (x1, y1) = _ignore_batches()
    single = train_step(st, torch.cat([x0, x1]), torch.cat([y0, y1]))
    want = {n: p.grad for n, p in st.bare.named_parameters()}
    for r in ranks:
        assert r["loss"] == pytest.approx(float(single.loss_sum / single.norm), rel=1e-6)
        for n, g in want.items():
            torch.testing.assert_close(r["grads"][n], g, rtol=1e-5, atol=1e-7)


def test_val_loss_uses_the_class_weights_as_the_train_loss_does(synthetic):
    """Issue 17.7: validate() reports the class-weighted mean cross-entropy, computed by hand."""
    import torch.nn.functional as F

    from fcn_dist.data import ShardDataset
    from fcn_dist.data.transforms import Preprocessing
    from fcn_dist.models import create_model
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.loop import LoopConfig, RankState, validate
    from fcn_dist.train.step import make_step_state

    weights = [0.5, 2.0, 4.0]
    spec = JobSpec(backbone="resnet18", amp="off", crop_size=[64, 64], batch_size=4)
    torch.manual_seed(0)
    model = create_model("fcn8s_resnet18", 3)
    for p in model.head.parameters():
        torch.nn.init.normal_(p, 0.0, 0.05)
    st = make_step_state(model, spec, device=torch.device("cpu"), steps_per_epoch=1,
                         ignore_index=255, class_weights=weights)
    pre = Preprocessing((64, 64))
    val = ShardDataset(synthetic, "val", transform=pre.transform())
    cfg = LoopConfig(spec=spec, run_id="r", run_dir="/tmp", data_dir=str(synthetic), dataset="s",
                     num_classes=3, classes=["a", "b", "c"], ignore_index=255, val_split="val",
                     steps_per_epoch=1, data_loader="torch", class_weights=weights)
    state = RankState(cfg=cfg, rank=0, world=1, device=torch.device("cpu"), step=st,
                      preprocessing=pre, val_ds=val)
    got = validate(state)["loss"]
    model.eval()
    num = den = 0.0
    w = torch.tensor(weights)
    with torch.no_grad():
        for i in range(len(val)):
            x, y = val[i]
            logits = model(x[None]).float()
            num += float(F.cross_entropy(logits, y[None], weight=w, ignore_index=255, reduction="sum"))
            valid = y != 255
            den += float(w[y[valid]].sum())
    assert got == pytest.approx(num / den, rel=1e-5)
    plain = float(F.cross_entropy(model(torch.stack([val[i][0] for i in range(len(val))])).float(),
                                  torch.stack([val[i][1] for i in range(len(val))]), ignore_index=255))
    assert got != pytest.approx(plain, rel=1e-3)  # the unweighted mean would differ


def test_an_empty_val_split_is_refused_before_ray_starts(tmp_path, monkeypatch):
    from data_fixtures import make_folder
    from fcn_dist.data.sources import prepare
    from fcn_dist.errors import SpecError
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.trainer import check_inputs

    make_folder(tmp_path / "src", n=3)
    s = prepare("folder", tmp_path / "few", root=tmp_path / "src", val_fraction=0.05)
    assert s["splits"]["val"] == 0
    spec = JobSpec(name="few", data=str(tmp_path / "few"), epochs=1)
    with pytest.raises(SpecError, match=r"val_split: split 'val' of .*few is empty"):
        check_inputs(spec, run_dir=tmp_path / "run", init_from=None, job_id=None)


def test_auto_data_loader_reads_on_the_trainer_for_cpu_workers_and_ray_data_for_gpus():
    from fcn_dist.spec import JobSpec
    from fcn_dist.train.trainer import choose_data_loader

    spec = JobSpec(backbone="resnet18")
    assert spec.data_loader == "auto"
    assert choose_data_loader(spec, use_gpu=False) == "torch"
    assert choose_data_loader(spec, use_gpu=True) == "ray"
    assert choose_data_loader(spec.replace(deterministic=True), use_gpu=True) == "torch"
    for explicit in ("ray", "torch"):
        assert choose_data_loader(spec.replace(data_loader=explicit), use_gpu=False) == explicit

"""Self-describing checkpoints: a directory anyone can load without the training code's state.

Layout of one checkpoint directory (what each epoch's ``ray.train.report`` persists)::

    model.pt        the model's state dict (CPU tensors)          torch.load(weights_only=True)
    meta.json       model name, num_classes, classes, palette, ignore_index, mean/std,
                    eval_size, upsample, skip_scale, epoch, metrics, spec (JSON)
    train_state.pt  optimizer, scheduler, grad scaler, epoch, step, RNG states, counters
                                                                  torch.load(weights_only=True)

Nothing here is pickled code: both ``.pt`` files hold only tensors and plain containers, so
they load with ``weights_only=True`` (numpy RNG state is stored as a tensor for that reason).
The readers take a local directory or a URI (``s3://bucket/runs/<run>/epoch_0012``, see
:mod:`fcn_dist.fs`); a remote file is read into memory and loaded the same way.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcn_dist import fs as fsio
from fcn_dist.errors import TrainingError
from fcn_dist.fs import Uri, masked

MODEL_FILE = "model.pt"
META_FILE = "meta.json"
STATE_FILE = "train_state.pt"
META_FORMAT = "fcn_dist.checkpoint"
META_VERSION = 1


# --------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy and torch (CPU and CUDA) as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    py = state["python"]
    # weights_only load turns the inner tuple into a list; random.setstate wants tuples
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    seed = int(seed) % (2**32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- write / read
def save_checkpoint(path: str | Path, model_state: dict[str, torch.Tensor], meta: dict[str, Any],
                    train_state: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint directory (``model.pt``, ``meta.json`` and optionally ``train_state.pt``)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in model_state.items()}, p / MODEL_FILE)
    if train_state is not None:
        torch.save(train_state, p / STATE_FILE)
    full = {"format": META_FORMAT, "format_version": META_VERSION, **meta}
    (p / META_FILE).write_text(json.dumps(_json_safe(full), indent=1, sort_keys=True))
    return p


def _torch_load(f: Path | Uri, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of a local file or of an object's bytes."""
    source = f if isinstance(f, Path) else io.BytesIO(fsio.read_bytes(f))
    return torch.load(source, map_location=map_location, weights_only=True)


def read_meta(path: str | Path | Uri) -> dict[str, Any]:
    """``meta.json`` of a checkpoint directory; :class:`TrainingError` if it is not one."""
    p = fsio.location(path)
    mp = p / META_FILE
    if not fsio.is_file(mp):
        raise TrainingError(f"{masked(p)}: not a checkpoint directory (no {META_FILE})")
    try:
        meta = json.loads(fsio.read_text(mp))
    except ValueError as e:
        raise TrainingError(f"{masked(mp)}: unreadable ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise TrainingError(f"{masked(mp)}: not an fcn_dist checkpoint")
    return meta


def load_state_dict(path: str | Path | Uri, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint directory (or a ``model.pt`` file), loaded safely."""
    p = fsio.location(path)
    f = p / MODEL_FILE if fsio.is_dir(p) else p
    if not fsio.is_file(f):
        raise TrainingError(f"{masked(p)}: no {MODEL_FILE}")
    try:
        return _torch_load(f, map_location)
    except fsio.StorageError:
        raise
    except Exception as e:  # noqa: BLE001 - anything unreadable is a bad checkpoint
        raise TrainingError(f"{masked(f)}: cannot load model weights safely ({type(e).__name__}: {e})") from None


def load_train_state(path: str | Path | Uri, map_location: Any = "cpu") -> dict[str, Any] | None:
    """``train_state.pt`` of a checkpoint directory, or None if it has none."""
    f = fsio.location(path) / STATE_FILE
    if not fsio.is_file(f):
        return None
    try:
        return _torch_load(f, map_location)
    except fsio.StorageError:
        raise
    except Exception as e:  # noqa: BLE001
        raise TrainingError(f"{masked(f)}: cannot load training state safely ({type(e).__name__}: {e})") from None


def build_model(meta: dict[str, Any]) -> torch.nn.Module:
    """An untrained model with the architecture described by ``meta`` (no weights downloaded)."""
    from fcn_dist.models import create_model

    return create_model(
        meta["model_name"],
        int(meta["num_classes"]),
        backbone_weights=None,
        upsample=meta.get("upsample", "learned"),
        skip_scale=bool(meta.get("skip_scale", False)),
    )


def load_checkpoint(path: str | Path | Uri, map_location: Any = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint directory with its weights; returns ``(model, meta)``.

    The model is in eval mode. Only ``weights_only=True`` loading is used.
    """
    meta = read_meta(path)
    model = build_model(meta)
    state = load_state_dict(path, map_location=map_location)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise TrainingError(f"{masked(path)}: weights do not fit {meta['model_name']}: "
                            f"{str(e).splitlines()[0]}") from None
    model.eval()
    return model, meta


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> python, tuples -> lists (strict JSON)."""
    import math

    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

"""Job specs: one training job = one FCN variant on one prepared dataset.

A spec is written in YAML (``jobs/*.yaml``), validated here field by field, and travels through
Redis as JSON (never pickle). Every validation error names the field and, when known, the file.

Paths in a spec are confined: ``data`` resolves under the prepared-data root (``FCN_DATA``),
``store`` under the results root (``FCN_STORE``); ``init_from`` and a local ``backbone_weights``
file are read-only inputs and must exist. ``name`` may only hold ``[A-Za-z0-9_.-]`` so it can
never smuggle a path or a shell word into anything built from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from fcn_dist.errors import SpecError
from fcn_dist.fs import Location, Uri, is_uri, masked

# The vocabulary every layer shares (one place each): FCN variants in stage order, upsampling
# modes, and the backbone names the model registry builds (fcn_dist.models checks that its
# builders are exactly these).
VARIANTS: tuple[str, ...] = ("32s", "16s", "8s")
PREVIOUS_VARIANT: dict[str, str] = {"16s": "32s", "8s": "16s"}  # staged 32s -> 16s -> 8s
UPSAMPLE_MODES: tuple[str, ...] = ("learned", "fixed", "interp")
BACKBONES: tuple[str, ...] = ("vgg16", "vgg19", "resnet18", "resnet34", "resnet50", "resnet101",
                              "mobilenet_v3_small", "mobilenet_v3_large")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("poly", "cosine", "constant")
AMP_MODES = ("auto", "off", "bf16", "fp16")
CLASS_WEIGHTS = ("none", "median_frequency")
DATA_LOADERS = ("auto", "ray", "torch")
MAX_SPEC_BYTES = 64 * 1024
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # used with fullmatch: no trailing newline


@dataclass
class JobSpec:
    """A validated training job. Field docs are the user documentation of ``jobs/*.yaml``."""

    name: str = "job"  # run name; [A-Za-z0-9_.-], at most 64 characters
    data: str = "synthetic"  # prepared dataset dir; relative paths resolve under FCN_DATA
    variant: str = "8s"  # 32s | 16s | 8s
    backbone: str = "vgg16"  # any backbone of fcn_dist.models.list_backbones()
    backbone_weights: str | None = None  # null (random) | imagenet | path to a state dict
    upsample: str = "learned"  # learned | fixed (bilinear transposed convs) | interp
    skip_scale: bool = False  # scale pool4 by 0.01 and pool3 by 1e-4 (at-once training)
    init_from: str | None = None  # checkpoint of the previous stage (staged 32s->16s->8s)
    epochs: int = 10
    batch_size: int = 8  # per worker
    crop_size: list[int] = field(default_factory=lambda: [256, 256])  # [height, width]
    eval_size: list[int] | str | None = None  # what the network sees at validation and the final
    #   score: [h, w] (images resized; logits upsampled to each label's original size), native
    #   (each whole image at its own size), null = native when the val/test images share one
    #   size, else crop_size. Scores are always taken at the labels' original size.
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])  # train random scale
    #   [min, max] (1.0 = the image just covers the crop); [1, 1] disables scaling
    lr: float = 1e-3
    optimizer: str = "adamw"  # adamw | sgd (momentum, as in the paper)
    momentum: float = 0.9
    weight_decay: float = 1e-4  # never applied to biases and norm parameters
    schedule: str = "cosine"  # poly | cosine | constant
    warmup_epochs: float = 0.0
    grad_clip: float | None = 1.0  # max global grad norm; null disables
    class_weights: str = "none"  # none | median_frequency
    amp: str = "auto"  # auto | off | bf16 | fp16
    num_workers: int = 1  # Ray Train workers (DDP ranks)
    use_gpu: str = "auto"  # auto | true | false
    cpus_per_worker: float | None = None  # null = auto: CPU runs share half the cluster's CPUs
    #   between the workers (fractional, e.g. 0.5; the rest feeds Ray Data), GPU runs take
    #   min(8, CPUs / (2 x workers)); see fcn_dist.train.trainer.resolve_resources
    gpus_per_worker: float = 1.0  # used only when GPUs are used
    seed: int = 0
    deterministic: bool = False  # deterministic kernels (bitwise-repeatable CPU runs)
    max_failures: int = 2  # Ray Train worker-failure restarts (FailureConfig)
    steps_per_epoch: int | None = None  # cap train steps per epoch (smoke tests); null = all
    eval_batch_size: int | None = None  # null = batch_size
    store: str | None = None  # results store; null = FCN_STORE; relative paths under it
    checkpoints_to_keep: int = 1  # best checkpoints kept by val mIoU; the latest is always kept too
    data_loader: str = "auto"  # ray (Ray Data streaming split) | torch (seeded, bitwise-repeatable
    #   order read from the shards) | auto (torch when deterministic, else ray)
    val_split: str | None = None  # split validated every epoch; null = "val"
    test_split: str | None = None  # split the best checkpoint is scored on; null = "test" if any, else val
    verify_data: bool = True  # sha256-check the shards before training (a corrupt one fails at once)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, raw: Any, *, source: str = "spec") -> "JobSpec":
        """Validate ``raw`` (parsed YAML/JSON) into a spec; errors name ``source`` and the field."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise SpecError(f"{source}: a job spec must be a mapping of fields, got {type(raw).__name__}")
        bad_keys = [k for k in raw if not isinstance(k, str)]
        if bad_keys:
            raise SpecError(f"{source}: field names must be strings, got {bad_keys[0]!r}")
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(raw) - set(known))
        if unknown:
            raise SpecError(
                f"{source}: unknown field(s) {', '.join(map(str, unknown))}; "
                f"known fields: {', '.join(known)}"
            )
        spec = cls()
        for key, value in raw.items():
            setattr(spec, key, _coerce(key, value, known[key], source))
        spec.validate(source=source)
        stored = len(spec.to_json())  # ASCII: non-ASCII text is stored as \\u escapes
        if stored > MAX_SPEC_BYTES:
            raise SpecError(f"{source}: spec is {stored} bytes as stored JSON (non-ASCII characters "
                            f"take 6-12 bytes each), more than {MAX_SPEC_BYTES}")
        return spec

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: Iterable[str] = ()) -> "JobSpec":
        """Load a YAML spec file, apply ``key=value`` overrides, validate."""
        p = Path(path)
        if not p.is_file():
            raise SpecError(f"{p}: spec file not found")
        if p.stat().st_size > MAX_SPEC_BYTES:
            raise SpecError(f"{p}: spec file is larger than {MAX_SPEC_BYTES} bytes")
        try:
            raw = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise SpecError(f"{p}: not valid YAML: {str(e).splitlines()[0]}") from None
        raw = dict(raw or {}) if isinstance(raw, dict) or raw is None else raw
        if isinstance(raw, dict):
            raw.update(parse_overrides(overrides, source=str(p)))
        return cls.from_dict(raw, source=str(p))

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "json spec") -> "JobSpec":
        """Parse a spec stored as JSON (the form kept in Redis)."""
        if len(text.encode() if isinstance(text, str) else text) > MAX_SPEC_BYTES:
            raise SpecError(f"{source}: spec is larger than {MAX_SPEC_BYTES} bytes")
        try:
            raw = json.loads(text)
        except (ValueError, TypeError) as e:
            raise SpecError(f"{source}: not valid JSON: {e}") from None
        return cls.from_dict(raw, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys), the form stored in Redis and in the results store."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def replace(self, **changes: Any) -> "JobSpec":
        """A validated copy with ``changes`` applied."""
        return JobSpec.from_dict({**self.to_dict(), **changes}, source=f"spec {self.name}")

    # ------------------------------------------------------------------ derived
    @property
    def model_name(self) -> str:
        """Registry name of the model, e.g. ``fcn8s_vgg16``."""
        return f"fcn{self.variant}_{self.backbone}"

    def eval_splits(self, splits: dict[str, int], where: str = "data") -> tuple[str, str]:
        """``(val split, test split)`` of a dataset with ``splits`` (name -> rows): ``val_split``
        (default ``val``), ``test_split`` (default ``test`` if there is one, else the val split).
        A missing or EMPTY one is a SpecError naming it (an empty split scores NaN)."""
        val = self.val_split or "val"
        test = self.test_split or ("test" if "test" in splits else val)
        have = ", ".join(splits) or "none"
        for fld, split in (("val_split", val), ("test_split", test)):
            if split not in splits:
                raise SpecError(f"{fld}: {where} has no {split!r} split (splits: {have})")
            if int(splits[split]) < 1:
                raise SpecError(f"{fld}: split {split!r} of {where} is empty (0 rows); "
                                "prepare it with images or choose another split")
        return val, test

    def eval_input_size(self, shared_size: tuple[int, int] | None) -> tuple[int, int] | None:
        """The network's input size at validation and the final score, None = native:
        ``eval_size`` when set, else native when the val/test images share one size
        (``shared_size``), else ``crop_size``."""
        if self.eval_size == "native":
            return None
        if self.eval_size is not None:
            return size2(self.eval_size)
        return None if shared_size is not None else size2(self.crop_size)

    def data_dir(self, root: str | Path | None = None) -> "Location":
        """The prepared dataset directory: ``data`` under the prepared-data root (FCN_DATA, a
        path or a URI); an absolute path or a URI must lie inside it."""
        from fcn_dist import config

        return confined("data", self.data, config.data_path(root), "FCN_DATA")

    def store_dir(self, root: str | Path | None = None) -> "Location":
        """The results store root for this job (confined under FCN_STORE)."""
        from fcn_dist import config

        base = config.store_path(root)
        if self.store is None:
            return base
        return confined("store", self.store, base, "FCN_STORE", resolve_links=True)

    # ------------------------------------------------------------------ validation
    def validate(self, *, source: str = "spec") -> None:
        """Check every field's range and choices; raise :class:`SpecError` naming the field."""

        def bad(fld: str, msg: str) -> SpecError:
            return SpecError(f"{source}: field '{fld}': {msg}")

        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise bad("name", f"{self.name!r} must match [A-Za-z0-9_.-]{{1,64}}")
        _choice("variant", self.variant, VARIANTS, bad)
        _choice("optimizer", self.optimizer, OPTIMIZERS, bad)
        _choice("schedule", self.schedule, SCHEDULES, bad)
        _choice("amp", self.amp, AMP_MODES, bad)
        _choice("upsample", self.upsample, UPSAMPLE_MODES, bad)
        _choice("class_weights", self.class_weights, CLASS_WEIGHTS, bad)
        _choice("use_gpu", self.use_gpu, ("auto", "true", "false"), bad)
        _choice("data_loader", self.data_loader, DATA_LOADERS, bad)
        for fld in ("val_split", "test_split"):
            v = getattr(self, fld)
            if v is not None and not (isinstance(v, str) and _NAME_RE.fullmatch(v)):
                raise bad(fld, f"{v!r} must match [A-Za-z0-9_.-]{{1,64}}")
        if self.backbone not in BACKBONES:
            raise bad("backbone", f"unknown backbone {self.backbone!r}; choose from {', '.join(BACKBONES)}")
        if not self.data or "\x00" in self.data:
            raise bad("data", "must be a non-empty path")
        if not is_uri(self.data) and os.path.normpath(self.data).split(os.sep)[0] == "..":
            # absolute paths and URIs: see data_dir
            raise bad("data", f"{self.data!r} leaves the prepared-data root (FCN_DATA)")
        for fld, lo in (("epochs", 1), ("batch_size", 1), ("num_workers", 1), ("max_failures", 0),
                        ("checkpoints_to_keep", 1)):
            v = getattr(self, fld)
            if v < lo:
                raise bad(fld, f"must be >= {lo}, got {v}")
        if self.epochs > 100000 or self.batch_size > 4096 or self.num_workers > 4096:
            raise bad("epochs/batch_size/num_workers", "value is unreasonably large")
        for fld in ("steps_per_epoch", "eval_batch_size"):
            v = getattr(self, fld)
            if v is not None and v < 1:
                raise bad(fld, f"must be >= 1 or null, got {v}")
        if not (0 < self.lr < 10):
            raise bad("lr", f"must be in (0, 10), got {self.lr}")
        if not (0 <= self.momentum < 1):
            raise bad("momentum", f"must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise bad("weight_decay", "must be >= 0")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs + 1e-9 and self.warmup_epochs > 0:
            raise bad("warmup_epochs", f"must be in [0, epochs), got {self.warmup_epochs}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise bad("grad_clip", "must be > 0 or null")
        if (self.cpus_per_worker is not None and self.cpus_per_worker <= 0) or self.gpus_per_worker <= 0:
            raise bad("cpus_per_worker/gpus_per_worker", "must be > 0")
        sr = self.scale_range
        if len(sr) != 2 or not (0.05 <= sr[0] <= sr[1] <= 20):
            raise bad("scale_range", f"must be [min, max] with 0.05 <= min <= max <= 20, got {self.scale_range}")
        for fld in ("crop_size", "eval_size"):
            v = getattr(self, fld)
            if fld == "eval_size" and (v is None or v == "native"):
                continue
            if not isinstance(v, list) or len(v) != 2 or any(x < 16 or x > 8192 for x in v):
                raise bad(fld, f"must be [height, width] with 16 <= each <= 8192, got {v}")
        if self.backbone_weights not in (None, "imagenet"):
            if not Path(self.backbone_weights).expanduser().is_file():
                raise bad("backbone_weights", f"file {self.backbone_weights!r} not found "
                          "(use null, 'imagenet' or a path to a state dict)")
        if self.store is not None:
            try:
                self.store_dir()
            except SpecError as e:
                raise bad("store", str(e)) from None


def variant_order(variant: str) -> int:
    """Position of ``variant`` in stage order (32s, 16s, 8s); unknown ones sort last."""
    return VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)


def size2(size: int | Iterable[int]) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair; ValueError for anything else."""
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    vals = [int(v) for v in size]
    if len(vals) != 2 or min(vals) < 1:
        raise ValueError(f"size must be (height, width) of positive integers, got {list(size)}")
    return (vals[0], vals[1])


def _choice(fld: str, value: Any, choices: Iterable[str], bad) -> None:
    if value not in choices:
        raise bad(fld, f"{value!r} is not one of {', '.join(choices)}")


def _coerce(key: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    """Coerce a YAML/JSON/--set value to the field's type, or raise naming the field."""
    t = str(f.type)

    def bad(msg: str) -> SpecError:
        return SpecError(f"{source}: field '{key}': {msg}")

    if value is None:
        if "None" in t:
            return None
        raise bad("must not be null")
    if t.startswith("list[float]"):
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value
        ):
            raise bad(f"must be a list of numbers [min, max], got {value!r}")
        return [float(x) for x in value]
    if t.startswith("list[int]"):
        if key == "eval_size" and value == "native":
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, int) and not isinstance(x, bool) for x in value
        ):
            also = " or native" if key == "eval_size" else ""
            raise bad(f"must be an integer or a list [height, width]{also}, got {value!r}")
        return list(value)
    if t.startswith("bool"):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad(f"must be true or false, got {value!r}")
    if t.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise bad(f"must be an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise bad(f"must be an integer, got {value!r}") from None
    if t.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad(f"must be a number, got {value!r}")
        try:
            v = float(value)
        except ValueError:
            raise bad(f"must be a number, got {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise bad("must be finite")
        return v
    if t.startswith("str"):
        if key == "use_gpu" and isinstance(value, bool):
            return "true" if value else "false"
        if key == "amp" and isinstance(value, bool):  # YAML 1.1 reads `amp: off` as false
            return "auto" if value else "off"
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "variant":
            value = f"{value}s" if not str(value).endswith("s") else str(value)
        if not isinstance(value, str):
            raise bad(f"must be a string, got {value!r}")
        if len(value) > 4096:
            raise bad("string is too long")
        return value
    return value


def confined(fld: str, value: str | Path | Uri, root: Location, env: str, *,
             resolve_links: bool = False) -> Location:
    """``value`` resolved under ``root``; a path that leaves it (``..``, absolute elsewhere) is a
    SpecError naming the field. Normalised lexically, not through symlinks (unless
    ``resolve_links``): a link the operator placed inside the root (e.g. to a dataset on
    another disk) is theirs to make. With a URI root (``s3://bucket/prefix``) ``value`` is a
    relative key or a URI with the root's scheme, bucket and options at or below its prefix;
    a URI under a local root, or a local path under a URI root, is outside."""
    if isinstance(root, Uri) or is_uri(value):
        p: Location | None = None
        if isinstance(root, Uri):
            if is_uri(value):
                p = Uri(str(value))
            elif not Path(str(value)).is_absolute() and not str(value).startswith("~"):
                p = root / str(value)
        if p is None or not isinstance(root, Uri) or not p.is_relative_to(root):
            raise SpecError(f"{fld}: {masked(value)!r} is outside {masked(root)} (the {env} root); "
                            f"give a path inside it or set {env}")
        return p
    root = Path(os.path.normpath(root))
    p = Path(os.path.normpath(root / Path(value).expanduser()))
    if resolve_links:
        root, p = root.resolve(), p.resolve()
    if p != root and root not in p.parents:
        raise SpecError(f"{fld}: {str(value)!r} is outside {root} (the {env} root); give a path "
                        f"inside it or set {env}")
    return p


def parse_overrides(items: Iterable[str], *, source: str = "--set") -> dict[str, Any]:
    """Parse ``key=value`` strings (values as YAML scalars/lists) into a dict."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SpecError(f"{source}: override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        k = k.strip()
        try:
            out[k] = yaml.safe_load(v) if v.strip() else None
        except yaml.YAMLError:
            out[k] = v
    return out


def load_spec(path: str | Path, overrides: Iterable[str] = (), variant: str | None = None,
              backbone: str | None = None) -> JobSpec:
    """Load a spec file with overrides, optionally forcing the variant and backbone."""
    extra = list(overrides)
    if variant is not None:
        extra.append(f"variant={variant}")
    if backbone is not None:
        extra.append(f"backbone={backbone}")
    return JobSpec.from_yaml(path, extra)

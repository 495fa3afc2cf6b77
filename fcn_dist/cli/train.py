"""fcn-train: run one training job directly on Ray Train, without the queue.

    fcn-train --spec jobs/smoke.yaml [--variant 8s] [--backbone resnet18] [--set epochs=2 ...]
              [--run-dir DIR] [--init-from CKPT] [--ray-address ADDR] [--json]

Ctrl-C (or SIGTERM) stops the run cleanly: a checkpoint is saved and ``--run-dir`` with the
printed directory resumes it.
"""

from __future__ import annotations

import json
import signal
import sys
import threading

import click

from fcn_dist.cli.support import Command, setup_output


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--spec", "spec_path", required=True, metavar="FILE", help="Job spec (YAML).")
@click.option("--variant", default=None, metavar="32s|16s|8s", help="Override the spec's variant.")
@click.option("--backbone", default=None, metavar="NAME", help="Override the spec's backbone.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a spec field (repeatable), e.g. --set epochs=2.")
@click.option("--run-dir", default=None, metavar="DIR",
              help="Run directory; one that holds checkpoints is resumed (default: a new one under $FCN_RUNS).")
@click.option("--init-from", default=None, metavar="CKPT",
              help="Previous stage's checkpoint directory (staged 32s -> 16s -> 8s).")
@click.option("--ray-address", default=None, metavar="ADDR", help="Ray cluster (default $RAY_ADDRESS or a local Ray).")
@click.option("--json", "as_json", is_flag=True, help="Print the result summary as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="Also show Ray's output.")
def main(spec_path: str, variant: str | None, backbone: str | None, overrides: tuple[str, ...],
         run_dir: str | None, init_from: str | None, ray_address: str | None, as_json: bool,
         verbose: bool) -> None:
    """Train one FCN variant on Ray Train and print its final score (and the split it is on)."""
    from fcn_dist.spec import load_spec
    from fcn_dist.train import Interrupted, run
    from fcn_dist.train.progress import Console

    setup_output("INFO", verbose)

    spec = load_spec(spec_path, overrides, variant=variant, backbone=backbone)
    stop = threading.Event()

    def on_signal(signum, _frame):  # first signal: stop cleanly; second: default behaviour
        click.echo(f"{signal.Signals(signum).name}: stopping after the current step "
                   "(checkpoint saved; signal again to abort)", err=True)
        stop.set()
        signal.signal(signum, signal.SIG_DFL)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    try:
        console = Console(stream=sys.stderr if as_json else sys.stdout)
        click.echo(f"training {spec.name} {spec.variant} ({spec.backbone}) on {spec.data}, "
                   f"{spec.epochs} epochs", err=as_json)
        try:
            result = run(spec, run_dir=run_dir, init_from=init_from, should_stop=stop.is_set,
                         ray_address=ray_address, on_progress=console)
        finally:
            console.close()
    except Interrupted as e:
        click.echo(f"interrupted: {e}", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
        return
    click.echo(format_result(result))


def format_result(r: dict) -> str:
    """Human-readable result summary."""
    from fcn_dist.store import scored_on

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"

    split = r.get("scored_on") or scored_on(r.get("eval_split"), r.get("eval_is_selection"))
    lines = [
        f"run {r['run_id']} ({r['variant']}, {r['backbone']}, {r['dataset']}): {r['status']}",
        f"  {split}: mIoU {f(r['miou'])}  pixel acc {f(r['pixel_accuracy'])}  "
        f"mean acc {f(r['mean_accuracy'])}  fwIoU {f(r['fwiou'])}"
        + (f"  (eval size {r['eval_size']})" if r.get("eval_size") else ""),
        f"  best epoch {r.get('best_epoch')} (val mIoU {f(r.get('best_val_miou'))}), "
        f"train {r['train_seconds']:.1f} s, {r.get('images_per_second') or 0:.1f} images/s",
        f"  best checkpoint: {r['best_checkpoint']}",
    ]
    pci = r.get("per_class_iou") or {}
    if pci:
        lines.append("  per-class IoU: " + ", ".join(f"{k} {f(v)}" for k, v in pci.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()

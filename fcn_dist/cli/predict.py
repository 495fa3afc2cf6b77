"""fcn-predict: segment images with a trained checkpoint.

    fcn-predict CKPT INPUTS... --out DIR [--overlay] [--device cpu|cuda]

INPUTS are image files, folders (their images) or glob patterns. For each image, ``DIR`` gets
``<stem>.png``: a palette PNG label map (pixel value = class index, coloured with the dataset's
palette) at the image's original size; with ``--overlay`` also ``<stem>_overlay.png``.
"""

from __future__ import annotations

import click

from fcn_dist.cli.support import Command


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", metavar="CKPT")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUTS...")
@click.option("--out", "out_dir", required=True, metavar="DIR", help="Folder for the label maps.")
@click.option("--overlay", is_flag=True, help="Also write the image with the labels blended over it.")
@click.option("--precision", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto",
              show_default=True, help="Inference precision: auto = bf16 where native, off = float32.")
@click.option("--device", default=None, metavar="DEV", help="torch device (default: cuda if available, else cpu).")
def main(checkpoint: str, inputs: tuple[str, ...], out_dir: str, overlay: bool, precision: str,
         device: str | None) -> None:
    """Write a palette PNG label map per input image, at the image's original size."""
    from fcn_dist.predict import predict_files

    written = predict_files(checkpoint, inputs, out_dir, overlay=overlay, device=device,
                            precision=precision)
    click.echo(f"wrote {len(written)} label map(s) to {out_dir}")


if __name__ == "__main__":
    main()

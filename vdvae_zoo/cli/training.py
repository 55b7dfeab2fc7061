"""The finetune command, its options generated from TrainOptions."""

from __future__ import annotations

import dataclasses
import json
import sys

import click

from ..train import TrainOptions, finetune
from .base import main, user_errors


# ------------------------------------------------------------------------------------------------ finetune
def _train_options(fn):
    """The finetune command's options, one per TrainOptions field (their one statement: names, defaults, help)."""
    for f in reversed(dataclasses.fields(TrainOptions)):
        meta, name = f.metadata, "--" + f.name.replace("_", "-")
        kind, required = meta.get("type"), bool(meta.get("required"))
        if isinstance(f.default, bool):
            fn = click.option(name, f.name, is_flag=True, default=f.default, help=meta["help"])(fn)
            continue
        if "choices" in meta:
            type_ = click.Choice(meta["choices"])
        elif kind in ("existing", "path"):
            type_ = click.Path(exists=kind == "existing")
        elif "min" in meta or "max" in meta:
            range_type = click.IntRange if kind is int else click.FloatRange
            type_ = range_type(min=meta.get("min"), max=meta.get("max"))
        else:
            type_ = kind
        fn = click.option(name, f.name, type=type_, required=required, default=f.default,
                          show_default=f.default is not None, help=meta["help"])(fn)
    return fn


@main.command("finetune")
@_train_options
@user_errors
def finetune_command(**options):
    """Fine-tune a released model, or train from scratch, on a folder of images.

    Example: vdvae-zoo finetune --model ffhq256 --data faces/ --out runs/faces --steps 20000

    Multi-GPU: torchrun --nproc_per_node 8 -m vdvae_zoo finetune --model ffhq256 --data faces/ --out runs/faces
    """
    summary = finetune(**options)
    click.echo(json.dumps(summary))
    if summary.get("stopped_by_signal"):
        sys.exit(130)

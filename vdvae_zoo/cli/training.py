"""The finetune command, its options generated from TrainOptions."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import click

from ..training.options import TrainOptions
from ..training.run_folder import RunFolderInUse
from ..training.trainer import TrainingDiverged, TrainingStalled, finetune
from .base import main, stop_interrupted, user_errors
from .params import FLOAT32_MAX, Count, Readable, Real, RealOrAuto


# ------------------------------------------------------------------------------------------------ finetune
def _train_options(fn):
    """The finetune command's options, one per TrainOptions field (their one statement: names, defaults, help)."""
    for f in reversed(dataclasses.fields(TrainOptions)):
        meta, name = f.metadata, "--" + f.name.replace("_", "-")
        kind, required = meta.get("type"), bool(meta.get("required"))
        if isinstance(f.default, bool):
            fn = click.option(name, f.name, is_flag=True, default=f.default, help=meta["help"])(fn)
            continue
        if meta.get("multiple"):
            fn = click.option(
                name, f.name, type=click.Choice(meta["choices"]), multiple=True, default=f.default, help=meta["help"]
            )(fn)
            continue
        if "choices" in meta:
            type_ = click.Choice(meta["choices"])
        elif kind == "threshold":
            type_ = RealOrAuto(meta.get("min"), meta.get("max", FLOAT32_MAX))
        elif kind in ("existing", "path"):
            type_ = Readable(dir_okay=True) if kind == "existing" else click.Path()
        elif kind is int:
            type_ = Count(meta.get("min", 0), meta.get("max", 2**31 - 1))
        elif kind is float:
            type_ = Real(meta.get("min"), meta.get("max", FLOAT32_MAX), high_open=meta.get("max_open", False))
        else:
            type_ = kind
        fn = click.option(
            name,
            f.name,
            type=type_,
            required=required,
            default=f.default,
            show_default=f.default is not None,
            help=meta["help"],
        )(fn)
    return fn


@main.command("finetune")
@_train_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON (on standard output).")
@user_errors
def finetune_command(as_json, **options):
    """Fine-tune a released model, or train from scratch, on a folder of images.

    MODEL (--model) is a released name (vdvae-zoo list), a folder with config.json + model.safetensors, a
    .safetensors or original .th file, or a Hub id owner/name.

    Example: vdvae-zoo finetune --model ffhq256 --data faces/ --out runs/faces --steps 20000

    Multi-GPU: torchrun --nproc_per_node 8 -m vdvae_zoo finetune --model ffhq256 --data faces/ --out runs/faces
    """
    try:
        summary = finetune(**options)
    except (TrainingStalled, TrainingDiverged, RunFolderInUse, PermissionError) as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM, after the trainer saved (or at once, on a second signal)
        stop_interrupted(f"the last checkpoint in {options['out']} is kept")
    if int(os.environ.get("RANK", "0")) != 0:
        return  # one process speaks
    if as_json:
        click.echo(json.dumps(summary))
    out = options["out"]
    if summary.get("stopped_by_signal"):
        click.echo(
            f"stopped by signal {summary['stopped_by_signal']} at step {summary['step']}; the checkpoint is "
            "saved: run the same command with --resume to continue",
            err=True,
        )
        sys.exit(128 + summary["stopped_by_signal"])
    if not as_json and "final_val_bpd" in summary:
        val = summary.get("final_val_bpd")
        click.echo(
            f"done: {summary['step']} steps ({summary['updates']} updates applied, {summary['skipped']} "
            f"skipped); validation bpd {'n/a' if val is None else f'{val:.4f}'}"
        )
        click.echo(f'the EMA weights are in {out}/model: vdvae_zoo.load("{out}") or vdvae-zoo sample {out}')

"""The eval command: the paper's test-set numbers from the standard data files."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..datasets import SPLITS
from ..evaluate import evaluate
from ..files import atomic_write, refuse_existing
from ..scoring import refuse_existing_state
from .base import MODEL_HELP, batch_size_option, load_model, main, model_options, overwrite_option, resume_hint, user_errors


@main.command("eval", epilog=MODEL_HELP)
@click.argument("model_name", metavar="MODEL")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="cifar-10-batches-py/ or -bin/, imagenet{32,64}-valid.npy (or its folder), valid_32x32/, "
                   "ffhq-256.npy, an FFHQ-1024 folder of PNGs, or any folder / .npy of images (docs/evaluate.md).")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True,
              help="Where the data defines one: the authors' split (docs/evaluate.md).")
@click.option("--limit", default=None, type=click.IntRange(min=1), help="A random subset of this many images (--seed).")
@click.option("--samples", default=1, show_default=True, type=click.IntRange(min=1),
              help="Posterior draws per image; K > 1 adds the importance-weighted bound (tighter than the paper's).")
@click.option("--seed", default=0, show_default=True, help="Seed of the posterior draws and of --limit's subset.")
@batch_size_option
@click.option("--chunk", default=256, show_default=True, type=click.IntRange(min=1),
              help="Images per saved chunk (the unit of --resume and of sharing among processes).")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--resume", is_flag=True, help="Continue an interrupted evaluation from its state file.")
@overwrite_option
@model_options
@user_errors
def eval_command(model_name, data, split, limit, samples, seed, batch_size, chunk, output, resume, overwrite, config,
                 device, dtype, manifest):
    """Bits per dim of a data set's test split, next to the paper's number.

    Progress is kept in OUTPUT.state.jsonl (vdvae-zoo-eval.state.jsonl without -o): after Ctrl-C, the same
    command with --resume continues.

    Example: vdvae-zoo eval cifar10 --data cifar-10-batches-py/ -o cifar10-test.json

    Several processes: torchrun --nproc_per_node 8 -m vdvae_zoo eval cifar10 --data cifar-10-batches-py/
    """
    if output:
        refuse_existing(output, overwrite)
    state = Path(f"{output or 'vdvae-zoo-eval'}.state.jsonl")
    refuse_existing_state(state, resume, overwrite)
    model = load_model(model_name, config, device, manifest, dtype)
    try:
        report = evaluate(model, data, split=split, limit=limit, samples=samples, seed=seed, batch_size=batch_size,
                          chunk=chunk, state=state, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted: the finished chunks are kept in {state}; continue with:\n  {resume_hint()}",
                   err=True)
        sys.exit(130)
    if report is None:  # not rank 0
        return
    for line in report.lines():
        click.echo(line)
    if output:
        atomic_write(output, report.to_json(), overwrite=True)
        click.echo(f"wrote {output}")
